"""The ECS task's Envoy exactly as terraform/modules/render renders it, with either
`envoy_attachment`, carrying real calls: real Envoy, real tollgate, fake_llm as both providers.
Only what cannot be the same on this machine changes, each rewrite checked to apply: the ports and
the listener's address, the JWKS (the dev keys' file instead of the Cognito pool's remote_jwks, and
their issuer), and the provider clusters (fake_llm over plain HTTP instead of api.openai.com and
api.anthropic.com over TLS). Everything between (jwt_authn, the ext_proc filter and its modes, the
provider routes with their key swap, the fast attachment's usage filters, buffer filter and access
log) is the rendered YAML.

tests/e2e/test_terraform_task.py runs the task's health wiring; tests/terraform checks the
rendering's structure offline."""

from __future__ import annotations

import re
import sys
import uuid

import pytest

from e2e_stack import Stack
from processes import REPO
from tokens import ISSUER
from tollgate_config import Team

sys.path.insert(0, str(REPO / "tests" / "terraform"))
from stack import FAST_OVERRIDES, TERRAFORM, apply_render  # noqa: E402

DAILY = 1_000_000
TEAMS = [Team("tf-calls", rpm=1000, daily_tokens=DAILY), Team("tf-stream", rpm=1000, daily_tokens=DAILY),
         Team("tf-anthropic", rpm=1000, daily_tokens=DAILY), Team("tf-one-rpm", rpm=1, daily_tokens=DAILY)]
PROVIDER_KEYS = {"OPENAI_API_KEY": "sk-test-openai-from-secrets-manager",
                 "ANTHROPIC_API_KEY": "sk-ant-test-from-secrets-manager"}


def on_this_machine(yaml: str, rendered: dict, s: Stack) -> str:
    """The rendered bootstrap with this machine's ports, dev JWKS and fake_llm as the providers."""
    rewrites = [
        (rf"port_value: {rendered['listener_port']} \}}", f"port_value: {s.listener_port} }}", 1),
        (r"port_value: 9901 \}", f"port_value: {s.admin_port} }}", 1),
        (r"port_value: 50051 \}", f"port_value: {s.grpc_port} }}", 1),
        (r"port_value: 9090 \}", f"port_value: {s.http_port} }}", 1),
        (r"address: 0\.0\.0\.0,", "address: 127.0.0.1,", 1),
        (r"issuer: https://cognito-idp\.\S+", f"issuer: {ISSUER}", 1),
        (r"remote_jwks:\n(\s+)http_uri:\n(?:\s+(?:uri|cluster|timeout): \S+\n)+\s+cache_duration: \S+\n",
         f'local_jwks:\\n\\1filename: "{REPO}/dev/keys/jwks.json"\\n', 1),
        (r"address: api\.(openai|anthropic)\.com, port_value: 443", f"address: 127.0.0.1, port_value: {s.upstream_port}", 2),
        (r"    transport_socket:\n      name: envoy\.transport_sockets\.tls\n      typed_config:\n.*\n        sni: api\.\w+\.com\n", "", 2),
    ]
    for pattern, replacement, count in rewrites:
        yaml, n = re.subn(pattern, replacement, yaml)
        assert n == count, f"{pattern!r} matched {n} times in the rendered Envoy config, not {count}"
    return yaml


@pytest.fixture(scope="module", params=["four_phase", "fast"])
def task(request, e2e_root, tollgate_bin):
    rendered = apply_render(TERRAFORM / "modules" / "render",
                            overrides=FAST_OVERRIDES if request.param == "fast" else None)
    s = Stack(f"tf-{request.param}", e2e_root / f"tf-envoy-{request.param}-{uuid.uuid4().hex[:6]}", TEAMS,
              tollgate_bin=tollgate_bin)
    s.envoy_yaml.write_text(on_this_machine(rendered["envoy_yaml"], rendered, s))
    s.envoy.env = dict(s.envoy.env or {}, **PROVIDER_KEYS)  # as the task injects them
    s.attachment = request.param
    s.start()
    yield s
    s.stop()


def test_a_call_is_admitted_sent_with_the_provider_key_and_charged(task, marker):
    token = task.token("tf-calls")
    r = task.chat(token, marker=marker, usage="prompt=7,completion=5")
    assert r.status_code == 200, r.text
    assert r.headers.get("x-ratelimit-limit") == "1000", dict(r.headers)
    [upstream] = task.upstream_requests(marker)
    assert upstream["headers"].get("authorization") == f"Bearer {PROVIDER_KEYS['OPENAI_API_KEY']}", \
        "the caller's Cognito token must be replaced by the provider key"
    assert token not in str(upstream["headers"])
    task.wait_remaining_tokens("tf-calls", DAILY - 12, timeout=10)
    if task.attachment == "fast":
        assert task.metric("tollgate_access_log_entries_total", outcome="charged") >= 1, \
            "the fast attachment charges from Envoy's access log"


def test_a_streamed_call_is_charged(task, marker):
    r = task.chat(task.token("tf-stream"), stream=True, marker=marker, usage="prompt=11,completion=9",
                  stream_options={"include_usage": True})
    assert r.status_code == 200, r.text
    assert "data: [DONE]" in r.text
    task.wait_remaining_tokens("tf-stream", DAILY - 20, timeout=10)


def test_anthropic_calls_take_their_route_and_key(task, marker):
    token = task.token("tf-anthropic")
    r = task.messages(token, marker=marker, usage="prompt=6,completion=4")
    assert r.status_code == 200, r.text
    [upstream] = task.upstream_requests(marker)
    assert upstream["path"] == "/v1/messages"
    assert upstream["headers"].get("x-api-key") == PROVIDER_KEYS["ANTHROPIC_API_KEY"]
    assert "authorization" not in upstream["headers"], "the caller's Cognito token never goes upstream"
    task.wait_remaining_tokens("tf-anthropic", DAILY - 10, timeout=10)


def test_a_refused_call_never_reaches_the_provider(task, marker):
    """On the fast attachment the buffer filter is what holds the headers back until the
    admission decided; without it the refused call would reach the provider anyway."""
    token = task.token("tf-one-rpm")
    assert task.chat(token, marker=marker, usage="prompt=1,completion=1").status_code == 200
    r = task.chat(token, marker=marker)
    assert r.status_code == 429, r.text
    assert len(task.upstream_requests(marker)) == 1


def test_a_token_envoy_cannot_verify_is_refused_by_envoy(task, marker):
    r = task.chat(None, marker=marker, headers={"authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401, r.text
    assert task.upstream_requests(marker) == []
