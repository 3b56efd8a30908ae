"""A test stack: dev/fake_llm.py as the LLM upstream, tollgate with a configuration written for the
test, and Envoy running the shipped envoy/*.yaml in front, each a real process on free local ports
with logs in the stack's directory.

Nothing here is mocked: requests go client -> Envoy -> (ext_proc gRPC) tollgate -> Envoy ->
dev/fake_llm.py, exactly as in `dev/run`. `Stack` also carries the clients the tests use on it
(raw HTTP, the official SDKs, the admin API) and the probes that wait for asynchronous effects.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from admin import AdminApi, micros
from envoy_config import render_envoy_config
from processes import FAKE_LLM, REPO, Proc, envoy_binary, free_port, http_status, port_open, tollgate_binary, wait_until
from tokens import admin_token, mint_token
from tollgate_config import Team, render_tollgate_config
from wire import metric_total


class Stack:
    """fake_llm + tollgate + Envoy on fresh ports, with the given teams."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        teams: list[Team],
        *,
        envoy_config: str = "local.yaml",
        store_backend: str = "embedded",
        max_request_body_bytes: int = 16 * 1024 * 1024,
        team_claim: str | None = "custom:team",
        trust_upstream: bool = False,
        identity: dict | None = None,
        store: dict | None = None,
        tollgate_env: dict | None = None,
        tollgate_bin: Path | None = None,
        **sections: dict | None,
    ):
        """`store` replaces `store_backend` with a whole [store] section (see render_tollgate_config);
        a dynamodb store without a `spool_path` gets `<workdir>/spool.redb` (`self.spool_path`).
        `tollgate_env` is added to tollgate's environment (e.g. AWS credentials for DynamoDB Local).
        Every other keyword is a configuration section as a dict (`pricing=`, `budgets=`, `policy=`,
        `guardrail=`, `endpoints=`, ...; see render_tollgate_config)."""
        self.name = name
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.teams = {t.id: t for t in teams}
        self.envoy_config = envoy_config
        self.tollgate_bin = tollgate_bin or tollgate_binary()
        if self.tollgate_bin is None:
            raise RuntimeError("tollgate binary not found (build it, or set TOLLGATE_BIN)")
        self.listener_port = free_port()
        self.admin_port = free_port()
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.upstream_port = free_port()
        self.store_path = self.workdir / "tollgate.redb"
        self.spool_path: Path | None = None
        if store is not None:
            store = {k: (dict(v) if isinstance(v, dict) else v) for k, v in store.items()}
            store_backend = str(store.get("backend", store_backend))
            if store_backend == "dynamodb":
                ddb = store.setdefault("dynamodb", {})
                ddb.setdefault("spool_path", str(self.workdir / "spool.redb"))
                self.spool_path = Path(ddb["spool_path"])
        self.store = store
        self.store_backend = store_backend
        self.config_path = self.workdir / "tollgate.toml"
        self.config_path.write_text(
            render_tollgate_config(
                grpc_port=self.grpc_port,
                http_port=self.http_port,
                teams=teams,
                store_path=self.store_path if store_backend == "embedded" else None,
                store_backend=store_backend,
                max_request_body_bytes=max_request_body_bytes,
                team_claim=team_claim,
                trust_upstream=trust_upstream,
                identity=identity,
                store=store,
                **sections,
            )
        )
        self.envoy_yaml = self.workdir / f"envoy-{envoy_config}"
        self.envoy_yaml.write_text(
            render_envoy_config(
                REPO / "envoy" / envoy_config,
                listener=self.listener_port,
                admin=self.admin_port,
                grpc=self.grpc_port,
                upstream=self.upstream_port,
            )
        )
        logs = self.workdir / "logs"
        self.fake = Proc(f"{name}-fake_llm", [sys.executable, FAKE_LLM, "--port", self.upstream_port], logs)
        self.tollgate = Proc(
            f"{name}-tollgate",
            [self.tollgate_bin, "serve", "--config", self.config_path],
            logs,
            env={"RUST_LOG": os.environ.get("E2E_TOLLGATE_RUST_LOG", "info"), "NO_COLOR": "1", **(tollgate_env or {})},
            # tollgate reads TOLLGATE_* as configuration: pass only what a test sets on purpose.
            scrub_env_prefix="TOLLGATE_",
        )
        self.envoy = Proc(
            f"{name}-envoy",
            [
                envoy_binary(),
                "-c",
                self.envoy_yaml,
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
                "--concurrency",
                "1",
                "--disable-hot-restart",
            ],
            logs,
        )
        self._http = httpx.Client(timeout=15.0)

    # ---- urls
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def tollgate_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def fake_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    # ---- lifecycle
    def start(self) -> "Stack":
        try:
            self.fake.start()
            self.start_tollgate()
            wait_until(
                lambda: http_status(f"{self.fake_url}/_fake/health") == 200, 10, what="fake_llm health", proc=self.fake
            )
            self.envoy.start()
            wait_until(
                lambda: http_status(f"{self.admin_url}/ready") == 200, 30, what="envoy /ready", proc=self.envoy
            )
        except Exception:
            self.stop()
            raise
        return self

    def start_tollgate(self, *, use_env_config: bool = False) -> None:
        if use_env_config:
            self.tollgate.argv = [str(self.tollgate_bin), "serve"]
            self.tollgate.env = dict(self.tollgate.env or {}, TOLLGATE_CONFIG=str(self.config_path))
        else:
            self.tollgate.argv = [str(self.tollgate_bin), "serve", "--config", str(self.config_path)]
            env = dict(self.tollgate.env or {})
            env.pop("TOLLGATE_CONFIG", None)
            self.tollgate.env = env
        self.tollgate.start()
        wait_until(
            lambda: http_status(f"{self.tollgate_url}/readyz") == 200 and port_open(self.grpc_port),
            30,
            what="tollgate /readyz and gRPC port",
            proc=self.tollgate,
        )

    def stop(self) -> None:
        for p in (self.envoy, self.tollgate, self.fake):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                pass
        self._http.close()

    def logs(self, lines: int = 80) -> str:
        return "\n\n".join(p.tail(lines) for p in (self.envoy, self.tollgate, self.fake))

    # ---- identity
    def token(self, team_or_client: str, **kw) -> str:
        """A valid token for a team id (its first client id) or a raw client id."""
        team = self.teams.get(team_or_client)
        client_id = team.client_id if team else team_or_client
        return mint_token(client_id, **kw)

    # ---- requests
    def post(
        self,
        path: str,
        *,
        token: str | None,
        json_body=None,
        content: bytes | str | None = None,
        headers: dict | None = None,
        marker: str | None = None,
        usage: str | None = None,
        timeout: float = 15.0,
    ) -> httpx.Response:
        h = {}
        if token is not None:
            h["authorization"] = f"Bearer {token}"
        if marker:
            h["x-test-id"] = marker
        if usage:
            h["x-fake-usage"] = usage
        h.update(headers or {})
        if content is not None:
            h.setdefault("content-type", "application/json")
            return self._http.post(self.base_url + path, content=content, headers=h, timeout=timeout)
        return self._http.post(self.base_url + path, json=json_body, headers=h, timeout=timeout)

    def request(self, method: str, path: str, *, token: str | None, marker: str | None = None,
                headers: dict | None = None, **kw) -> httpx.Response:
        """Any request through Envoy (`kw`: httpx's `json`, `content`, `files`, `data`...)."""
        h = {}
        if token is not None:
            h["authorization"] = f"Bearer {token}"
        if marker:
            h["x-test-id"] = marker
        h.update(headers or {})
        return self._http.request(method, self.base_url + path, headers=h, timeout=15.0, **kw)

    def chat(self, token: str | None, *, stream: bool = False, marker: str | None = None, usage: str | None = None,
             headers: dict | None = None, **body) -> httpx.Response:
        payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
        if stream:
            payload["stream"] = True
        payload.update(body)
        return self.post("/v1/chat/completions", token=token, json_body=payload, marker=marker, usage=usage,
                         headers=headers)

    def messages(self, token: str | None, *, marker: str | None = None, usage: str | None = None,
                 headers: dict | None = None, **body) -> httpx.Response:
        payload = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello"}]}
        payload.update(body)
        h = {"anthropic-version": "2023-06-01"}
        h.update(headers or {})
        return self.post("/v1/messages", token=token, json_body=payload, marker=marker, usage=usage, headers=h)

    def openai(self, token: str, marker: str | None = None, **kw):
        import openai

        headers = {"x-test-id": marker} if marker else {}
        headers.update(kw.pop("default_headers", {}))
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key=token, max_retries=kw.pop("max_retries", 0),
            default_headers=headers, timeout=kw.pop("timeout", 20.0), **kw,
        )

    def anthropic(self, token: str, marker: str | None = None, **kw):
        import anthropic

        headers = {"x-test-id": marker} if marker else {}
        headers.update(kw.pop("default_headers", {}))
        return anthropic.Anthropic(
            base_url=self.base_url, auth_token=token, api_key=None, max_retries=kw.pop("max_retries", 0),
            default_headers=headers, timeout=kw.pop("timeout", 20.0), **kw,
        )

    # ---- upstream introspection
    def upstream_requests(self, marker: str | None = None) -> list[dict]:
        reqs = self._http.get(f"{self.fake_url}/_fake/requests", timeout=5).json()
        if marker is None:
            return reqs
        return [r for r in reqs if r["headers"].get("x-test-id") == marker]

    # ---- token accounting probes
    def remaining_tokens(self, team: str, marker: str | None = None) -> int:
        """x-ratelimit-remaining-tokens seen on a zero-usage request (it debits nothing itself)."""
        r = self.chat(self.token(team), marker=marker, usage="prompt=0,completion=0")
        assert r.status_code == 200, f"probe request failed: {r.status_code} {r.text}"
        value = r.headers.get("x-ratelimit-remaining-tokens")
        assert value is not None, f"no x-ratelimit-remaining-tokens on an allowed response: {dict(r.headers)}"
        return int(value)

    def wait_remaining_tokens(self, team: str, expected, timeout: float = 5.0, marker: str | None = None) -> int:
        """Poll until the team's remaining daily tokens equal `expected` (int) or satisfy it (callable)."""
        check = expected if callable(expected) else (lambda v: v == expected)
        deadline = time.time() + timeout
        seen = []
        while True:
            try:
                v = self.remaining_tokens(team, marker)
            except (AssertionError, httpx.HTTPError) as e:
                # e.g. just after a tollgate restart; give up only at the deadline
                if time.time() > deadline:
                    raise
                seen.append(f"error: {str(e)[:80]}")
                time.sleep(0.2)
                continue
            seen.append(v)
            if check(v):
                return v
            if time.time() > deadline:
                raise AssertionError(
                    f"team {team}: x-ratelimit-remaining-tokens never matched {expected!r} within {timeout}s; "
                    f"seen {seen[:3]}...{seen[-3:]}"
                )
            time.sleep(0.1)

    # ---- tollgate http
    def tollgate_get(self, path: str) -> httpx.Response:
        return self._http.get(self.tollgate_url + path, timeout=5)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus metric's samples whose labels include all of `labels`."""
        r = self.tollgate_get("/metrics")
        assert r.status_code == 200, r.text
        return metric_total(r.text, name, **labels)

    # ---- admin API (tollgate's HTTP port)
    def admin_api(self, token: str | None | object = ...) -> "AdminApi":
        """A client for tollgate's admin API; by default with a valid admin token, `token=None`
        sends no Authorization header."""
        return AdminApi(self._http, self.tollgate_url, admin_token() if token is ... else token)

    def usage(self, team: str) -> dict:
        """GET /admin/teams/{team}/usage (must be 200)."""
        return self.admin_api().usage(team)

    def wait_usage(self, team: str, predicate, timeout: float = 5.0, what: str = "usage") -> dict:
        """Poll the usage endpoint until predicate(usage) holds; debits land asynchronously."""
        deadline = time.time() + timeout
        last = None
        while True:
            last = self.usage(team)
            if predicate(last):
                return last
            if time.time() > deadline:
                raise AssertionError(f"team {team}: {what} not reached within {timeout}s; last usage: {last}")
            time.sleep(0.1)

    def wait_spend(self, team: str, usd: float, timeout: float = 5.0) -> dict:
        """Poll until the team's spend this month is exactly `usd` (compared in micro-dollars)."""
        want = micros(usd)
        return self.wait_usage(
            team, lambda u: micros(u["spend_this_month"]["usd"]) == want, timeout, what=f"spend ${usd}"
        )
