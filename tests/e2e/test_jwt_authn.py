"""envoy/local-jwt-authn.yaml: Envoy's jwt_authn verifies the token and hands the claims to
tollgate as metadata. Bad tokens get Envoy's own 401 and never reach the upstream (tollgate only
sees the 401's response headers and must cope); scope, team mapping and limits still apply."""

from __future__ import annotations

import time

import openai
import pytest

from checks import ANTHROPIC, OPENAI, RPM_MAX_RETRY, check_not_rate_limited_error, check_rejection
from processes import avoid_minute_boundary
from tokens import ADMIN_SCOPE, mint_token, other_private_key, unsigned_token
from tollgate_config import Team

MSG = [{"role": "user", "content": "Say hello"}]
TEXT = "Hello from the fake LLM upstream! This is a canned answer."

TEAMS = [
    Team("ja-limited", rpm=2, daily_tokens=1_000_000),
    Team("ja-sdk", rpm=1000, daily_tokens=100_000),
    Team("ja-claim", rpm=9, daily_tokens=1_000_000),
]


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("jwtauthn", TEAMS, envoy_config="local-jwt-authn.yaml")


BAD = {
    "missing": lambda: None,
    "garbage": lambda: "Bearer not-a-jwt",
    "expired": lambda: "Bearer " + mint_token("ja-sdk-agent", expires_in=-3600),
    "wrong-key": lambda: "Bearer " + mint_token("ja-sdk-agent", key=other_private_key()),
    "wrong-issuer": lambda: "Bearer " + mint_token("ja-sdk-agent", issuer="https://evil.example/pool"),
    "alg-none": lambda: "Bearer " + unsigned_token("ja-sdk-agent"),
    # require_expiration: true in envoy/local-jwt-authn.yaml; without it Envoy admits this token.
    "no-expiry": lambda: "Bearer " + mint_token("ja-sdk-agent", drop=["exp"]),
    "not-yet-valid": lambda: "Bearer " + mint_token("ja-sdk-agent", extra={"nbf": int(time.time()) + 600}),
    # A provider with an issuer refuses a token without one ("Jwt issuer is not configured").
    "no-issuer": lambda: "Bearer " + mint_token("ja-sdk-agent", drop=["iss"]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_token_gets_envoys_401(stack, marker, kind):
    auth = BAD[kind]()
    r = stack.chat(None, marker=marker, headers={"authorization": auth} if auth else {})
    assert r.status_code == 401, f"{r.status_code} {r.text}"
    assert "Jwt" in r.text, f"expected Envoy's jwt_authn body, got {r.text!r}"
    assert stack.upstream_requests(marker) == []
    # tollgate saw only the 401's response headers; it keeps serving.
    ok = stack.chat(stack.token("ja-sdk"), marker=marker, usage="prompt=0,completion=0")
    assert ok.status_code == 200, ok.text


def test_valid_token_through_sdk_with_stream_and_debit(stack, marker):
    client = stack.openai(stack.token("ja-sdk"), marker)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True, extra_headers={"x-fake-usage": "prompt=9,completion=21"}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage.total_tokens == 30
    stack.wait_remaining_tokens("ja-sdk", 100_000 - 30)


def test_rpm_limit_applies(stack, marker):
    tok = stack.token("ja-limited")
    avoid_minute_boundary(15)
    for _ in range(2):
        r = stack.chat(tok, marker=marker, usage="prompt=0,completion=0")
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit"] == "2"
    check_rejection(
        stack.chat(tok, marker=marker), flavour=OPENAI, code="rpm_limit_exceeded",
        reason_re=r"RPM limit exceeded: 2 requests in the last 60 s, limit 2", max_retry_after=RPM_MAX_RETRY,
    )
    check_rejection(
        stack.messages(tok, marker=marker), flavour=ANTHROPIC, code="rpm_limit_exceeded",
        reason_re=r"RPM limit exceeded: 2 requests in the last 60 s, limit 2", max_retry_after=RPM_MAX_RETRY,
    )
    with pytest.raises(openai.RateLimitError):
        stack.openai(tok, marker).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert len(stack.upstream_requests(marker)) == 2


def test_valid_signature_without_invoke_scope_is_403(stack, marker):
    r = stack.chat(mint_token("ja-sdk-agent", scope=ADMIN_SCOPE), marker=marker)
    check_not_rate_limited_error(r, 403, OPENAI)
    r = stack.messages(mint_token("nobody-knows-me"), marker=marker)
    check_not_rate_limited_error(r, 403, ANTHROPIC)
    assert stack.upstream_requests(marker) == []


def test_team_claim_from_metadata(stack, marker):
    r = stack.chat(mint_token("unregistered-client", team="ja-claim"), marker=marker, usage="prompt=0,completion=0")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit"] == "9"

