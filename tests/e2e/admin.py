"""tollgate's admin API and its CLI, as the tests drive them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from processes import tollgate_cli_env
from tollgate_config import Team

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

