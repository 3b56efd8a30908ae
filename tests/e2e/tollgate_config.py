"""tollgate's TOML configuration for the tests: teams (`Team`, the same fields as the admin API's
team JSON), one TOML writer for every section, and the whole file a stack runs with.

`to_toml` is the only TOML writer in the e2e tests: sections are plain dicts (nested dicts become
sub-tables, lists of dicts arrays of tables), and every rendering is parsed back and compared, so
a test can never run with a configuration other than the one it wrote down.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tokens import ISSUER, JWKS_FILE


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


def _toml_key(k) -> str:
    k = str(k)
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string for our inputs
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot render {v!r} as TOML")


def _is_table_array(v) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def _table(path: str, table: dict, header: str) -> list[str]:
    lines = ["", header]
    later: list[str] = []
    for k, v in table.items():
        if v is None:
            continue
        sub = f"{path}.{_toml_key(k)}"
        if isinstance(v, dict):
            later += _table(sub, v, f"[{sub}]")
        elif _is_table_array(v):
            for item in v:
                later += _table(sub, item, f"[[{sub}]]")
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return lines + later


def to_toml(sections: dict) -> str:
    """A TOML document from `{section: table}`: a dict value becomes `[section]`, a list of dicts
    `[[section]]` entries; inside a table, dicts become sub-tables (`[pricing.models."my-model"]`),
    lists of dicts arrays of tables (`[[guardrail.local.pii]]`), None values are left out. The text
    is checked to parse back to `sections` (tuples read as lists, Paths as strings)."""
    lines: list[str] = []
    for name, value in sections.items():
        if value is None:
            continue
        key = _toml_key(name)
        if _is_table_array(value):
            for item in value:
                lines += _table(key, item, f"[[{key}]]")
        else:
            lines += _table(key, value, f"[{key}]")
    text = "\n".join(lines).lstrip("\n") + "\n"
    try:
        import tomllib
    except ImportError:  # Python < 3.11: no check
        return text
    parsed = tomllib.loads(text)
    expected = json.loads(json.dumps(_without_none(sections), default=str))
    assert parsed == expected, f"rendered as\n{text}\nwhich parses to {parsed!r}"
    return text


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return value


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
    store: dict | None = None,
    **sections: dict | None,
) -> str:
    """The configuration a test stack runs with: listeners on the given ports, the dev JWKS, the
    teams, and an embedded store at `store_path` (or `store_backend` without a path).
    `identity` adds or replaces [identity] keys; a `jwks_url` there replaces the JWKS file.
    `store`, when given, is the whole [store] section instead of `store_backend`/`store_path`:
    `{"backend": "dynamodb", "dynamodb": {"table": "t"}}` renders `[store]` and `[store.dynamodb]`.
    Every other keyword is a section as a dict (see `to_toml`), e.g. `pricing={"unknown_model":
    "default", "default_price": {"input": 10.0, "output": 30.0}, "models": {"my-model": {...}}}` or
    `guardrail={"mode": "enforce", "local": {"pii": [{"type": "EMAIL", "action": "ANONYMIZE"}]}}`.
    tollgate rejects unknown sections and keys, so a misspelt keyword fails the stack's start."""
    identity_table = {"issuer": issuer}
    if not (identity and "jwks_url" in identity):
        identity_table["jwks_file"] = jwks_file
    identity_table.update(identity or {})
    if team_claim:
        identity_table["team_claim"] = team_claim
    identity_table["trust_upstream"] = trust_upstream
    if store is None:
        store = {"backend": store_backend, "path": store_path}
    return to_toml(
        {
            "server": {
                "grpc_listen": f"127.0.0.1:{grpc_port}",
                "http_listen": f"127.0.0.1:{http_port}",
                "max_request_body_bytes": max_request_body_bytes,
            },
            "identity": identity_table,
            "store": store,
            **sections,
            "teams": [t.to_json() for t in teams] or None,
        }
    )
