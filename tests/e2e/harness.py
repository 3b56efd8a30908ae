"""Transition only: the e2e support code used to live here and now has one home per piece. New code
imports from those modules; this file re-exports every name it used to define, so tests written
against `from harness import ...` keep working until they are moved over (then delete this file).

  processes.py        REPO, binaries, free ports, Proc, wait_until, http_status, avoid_minute_boundary
  tokens.py           the dev signing key, mint_token, admin_token, unsigned and wrong-key tokens
  tollgate_config.py  Team, to_toml (the one TOML writer), render_tollgate_config
  envoy_config.py     render_envoy_config (envoy/*.yaml with a stack's ports)
  e2e_stack.py        Stack: fake LLM + tollgate + Envoy, and the clients and probes used on it
  admin.py            AdminApi, run_admin_cli, micros
  wire.py             metric_total, sse_events, stream_errors
"""

from admin import AdminApi, micros, run_admin_cli
from envoy_config import (
    ENVOY_ADMIN_PORT,
    ENVOY_LISTENER_PORT,
    TOLLGATE_GRPC_PORT,
    UPSTREAM_PORT,
    render_envoy_config,
)
from processes import (
    FAKE_LLM,
    REPO,
    VENV_BIN,
    Proc,
    avoid_minute_boundary,
    envoy_binary,
    free_port,
    http_status,
    port_open,
    tollgate_binary,
    tollgate_cli_env,
    wait_until,
)
from e2e_stack import Stack
from tokens import (
    ADMIN_SCOPE,
    DEV_KEYS,
    INVOKE_SCOPE,
    ISSUER,
    JWKS_FILE,
    KID,
    PRIVATE_KEY,
    admin_token,
    mint_token,
    other_private_key,
    unsigned_token,
)
from tollgate_config import Team, render_tollgate_config, to_toml
from wire import metric_total, sse_events, stream_errors

__all__ = [name for name in dir() if not name.startswith("_")]
