"""Identity through Envoy + tollgate (tollgate verifies the bearer token itself): bad tokens get
401, tokens without the invoke scope or without a team get 403, and none of them reaches the
upstream; the team comes from the `custom:team` claim when present, else from the client id."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import jwt
import openai
import pytest

from checks import ANTHROPIC, OPENAI, check_not_rate_limited_error
from tokens import ADMIN_SCOPE, INVOKE_SCOPE, JWKS_FILE, mint_token, other_private_key, unsigned_token
from tollgate_config import Team

MSG = [{"role": "user", "content": "Say hello"}]

TEAMS = [
    Team("auth-a", rpm=11, daily_tokens=1_000_000),
    Team("claimteam", rpm=7, daily_tokens=1_000_000),
]


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("auth", TEAMS)


def _tampered() -> str:
    """A validly signed token whose payload was edited afterwards."""
    head, payload, sig = mint_token("auth-a-agent").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["client_id"] = "claimteam-agent"
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{payload}.{sig}"


# name -> Authorization header value (None: no header)
BAD_TOKENS = {
    "missing": lambda: None,
    "garbage": lambda: "Bearer not-a-jwt",
    "bearer-without-token": lambda: "Bearer",
    "basic-auth": lambda: "Basic dXNlcjpwYXNz",
    "expired": lambda: "Bearer " + mint_token("auth-a-agent", expires_in=-3600),
    "wrong-key": lambda: "Bearer " + mint_token("auth-a-agent", key=other_private_key()),
    "unknown-kid": lambda: "Bearer " + mint_token("auth-a-agent", kid="not-in-jwks"),
    "wrong-issuer": lambda: "Bearer " + mint_token("auth-a-agent", issuer="https://evil.example/pool"),
    "alg-none": lambda: "Bearer " + unsigned_token("auth-a-agent"),
    "tampered": lambda: "Bearer " + _tampered(),
    # Validly signed, but its claims refuse it: not yet valid, no issuer although one is
    # configured, no expiry at all.
    "not-yet-valid": lambda: "Bearer " + mint_token("auth-a-agent", extra={"nbf": int(time.time()) + 600}),
    "no-issuer": lambda: "Bearer " + mint_token("auth-a-agent", drop=["iss"]),
    "no-expiry": lambda: "Bearer " + mint_token("auth-a-agent", drop=["exp"]),
}

# What the 401 says, in words, for the claim refusals (tollgate's wording, OpenAI and Anthropic alike).
CLAIM_REASONS = {
    "expired": r"token expired at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \((60|61) minutes ago\)",
    "not-yet-valid": r"token not valid before \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in (9|10) minutes\)",
    "no-issuer": r"token has no iss claim; expected https://tollgate\.local/dev",
    "wrong-issuer": r"token was issued by https://evil\.example/pool, expected https://tollgate\.local/dev",
    "no-expiry": r"token has no exp claim; tollgate accepts only tokens that expire",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_bad_token_is_401_and_never_reaches_upstream(stack, marker, kind, path):
    auth = BAD_TOKENS[kind]()
    headers = {"authorization": auth} if auth is not None else {}
    body = (
        {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": MSG}
        if path == "/v1/messages"
        else {"model": "gpt-4o-mini", "messages": MSG}
    )
    r = stack.post(path, token=None, json_body=body, headers=headers, marker=marker)
    check_not_rate_limited_error(r, 401, ANTHROPIC if path == "/v1/messages" else OPENAI)
    assert stack.upstream_requests(marker) == []
    if kind in CLAIM_REASONS:
        reason = r.json()["reason"]
        assert re.fullmatch(CLAIM_REASONS[kind], reason), reason


FORBIDDEN = {
    "admin-scope-only": lambda: mint_token("auth-a-agent", scope=ADMIN_SCOPE),
    "no-scope-claim": lambda: mint_token("auth-a-agent", scope=None),
    "scope-prefix-lookalike": lambda: mint_token("auth-a-agent", scope=INVOKE_SCOPE + "-all"),
    "unknown-client": lambda: mint_token("nobody-knows-me"),
    "unknown-team-claim": lambda: mint_token("stranger", team="no-such-team"),
}


@pytest.mark.parametrize("kind", list(FORBIDDEN))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_forbidden_token_is_403_and_never_reaches_upstream(stack, marker, kind, path):
    tok = FORBIDDEN[kind]()
    r = (stack.messages if path == "/v1/messages" else stack.chat)(tok, marker=marker)
    check_not_rate_limited_error(r, 403, ANTHROPIC if path == "/v1/messages" else OPENAI)
    assert stack.upstream_requests(marker) == []


def test_sdks_raise_auth_errors(stack, marker):
    with pytest.raises(openai.AuthenticationError):
        stack.openai(mint_token("auth-a-agent", expires_in=-3600), marker).chat.completions.create(
            model="gpt-4o-mini", messages=MSG
        )
    with pytest.raises(openai.PermissionDeniedError):
        stack.openai(mint_token("nobody-knows-me"), marker).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    with pytest.raises(anthropic.AuthenticationError):
        stack.anthropic(mint_token("auth-a-agent", key=other_private_key()), marker).messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=MSG
        )
    with pytest.raises(anthropic.PermissionDeniedError):
        stack.anthropic(mint_token("auth-a-agent", scope=ADMIN_SCOPE), marker).messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=MSG
        )
    assert stack.upstream_requests(marker) == []


def test_invoke_scope_among_others_is_accepted(stack, marker):
    tok = mint_token("auth-a-agent", scope=f"openid {ADMIN_SCOPE} {INVOKE_SCOPE}")
    r = stack.chat(tok, marker=marker, usage="prompt=0,completion=0")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit"] == "11"


def test_team_from_client_id(stack, marker):
    r = stack.chat(mint_token("auth-a-agent"), marker=marker, usage="prompt=0,completion=0")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit"] == "11"


def test_team_from_custom_team_claim(stack, marker):
    # A client id no team registered, but the token names the team.
    r = stack.chat(mint_token("unregistered-client", team="claimteam"), marker=marker, usage="prompt=0,completion=0")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit"] == "7"
    # The claim wins over the client id's registration.
    r = stack.chat(mint_token("auth-a-agent", team="claimteam"), marker=marker, usage="prompt=0,completion=0")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit"] == "7"
    # Both were charged to claimteam's RPM (7 per minute).
    assert int(r.headers["x-ratelimit-remaining"]) <= 5
    assert len(stack.upstream_requests(marker)) == 2


@pytest.fixture(scope="module")
def trusting_stack(stack_factory):
    """trust_upstream = true: something in front (ALB, jwt_authn) verified the token already."""
    return stack_factory("auth-trust", [Team("trust-a", rpm=5, daily_tokens=1000)], trust_upstream=True)


def test_trust_upstream_decodes_claims_without_verifying(trusting_stack, marker):
    s = trusting_stack
    r = s.chat(mint_token("trust-a-agent", key=other_private_key()), marker=marker, usage="prompt=0,completion=0")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit"] == "5"
    # Still: no token, or one that is not a JWT, is refused; scope and team mapping still apply.
    check_not_rate_limited_error(s.chat(None, marker=marker), 401, OPENAI)
    check_not_rate_limited_error(s.chat("not-a-jwt", marker=marker), 401, OPENAI)
    check_not_rate_limited_error(s.chat(mint_token("trust-a-agent", scope=ADMIN_SCOPE), marker=marker), 403, OPENAI)
    check_not_rate_limited_error(s.chat(mint_token("nobody-knows-me"), marker=marker), 403, OPENAI)
    assert len(s.upstream_requests(marker)) == 1


@pytest.mark.parametrize("kind", ["expired", "not-yet-valid", "no-issuer", "wrong-issuer", "no-expiry"])
def test_trust_upstream_still_holds_tokens_to_their_claims(trusting_stack, marker, kind):
    """The verifier in front (the ALB) checks exp, nbf and iss too; tollgate checks them again,
    since a verifier configured to let them pass would otherwise let them through."""
    r = trusting_stack.post("/v1/chat/completions", token=None, headers={"authorization": BAD_TOKENS[kind]()},
                            json_body={"model": "gpt-4o-mini", "messages": MSG}, marker=marker)
    check_not_rate_limited_error(r, 401, OPENAI)
    assert re.fullmatch(CLAIM_REASONS[kind], r.json()["reason"]), r.json()["reason"]
    assert trusting_stack.upstream_requests(marker) == []


def serve_jwks(documents: dict, port: int = 0) -> ThreadingHTTPServer:
    """A Cognito-style JWKS endpoint on loopback serving `documents["jwks"]` (which a test may
    replace while it runs); the caller shuts it down."""

    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps(documents["jwks"]).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), JwksHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_jwks_url_is_fetched_and_refreshed_when_an_unknown_kid_appears(stack_factory):
    """A Cognito-style JWKS endpoint: keys come from the URL, and a token signed by a key added
    later (a rotation) is accepted once tollgate refetches the set on seeing its unknown kid."""
    from cryptography.hazmat.primitives import serialization

    documents = {"jwks": json.loads(JWKS_FILE.read_text())}
    server = serve_jwks(documents)
    try:
        s = stack_factory(
            "jwksurl",
            [Team("jwks-a", rpm=100)],
            identity={
                "jwks_url": f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json",
                "jwks_min_refresh_seconds": 0,
            },
        )
        assert s.chat(s.token("jwks-a")).status_code == 200

        new_key = serialization.load_pem_private_key(other_private_key(), password=None)
        rotated = mint_token("jwks-a-agent", key=other_private_key(), kid="rotated-2")
        r = s.chat(rotated)
        assert r.status_code == 401, r.text
        assert "rotated-2" in r.json()["reason"]

        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(new_key.public_key(), as_dict=True)
        documents["jwks"] = {"keys": documents["jwks"]["keys"] + [dict(jwk, kid="rotated-2", alg="RS256", use="sig")]}
        r = s.chat(rotated)
        assert r.status_code == 200, r.text
        assert s.chat(s.token("jwks-a")).status_code == 200, "the old key still verifies"
    finally:
        server.shutdown()


def test_an_unreachable_jwks_is_a_retryable_503_not_a_401(stack_factory):
    """With no signing keys at hand (the JWKS URL does not answer and nothing is cached), a good
    token cannot be verified: that is tollgate's outage, not the caller's bad token. A 401 would
    tell clients to fetch a new token and not to retry; a 503 says to retry. Once the JWKS answers,
    the same token passes."""
    from processes import free_port

    port = free_port()
    s = stack_factory(
        "jwksdown",
        [Team("jwks-down", rpm=100)],
        identity={"jwks_url": f"http://127.0.0.1:{port}/.well-known/jwks.json", "jwks_min_refresh_seconds": 0},
    )
    token = s.token("jwks-down")
    r = s.chat(token)
    assert r.status_code == 503, r.text
    assert r.json()["reason"].startswith("tokens cannot be verified right now: JWKS unavailable"), r.text

    server = serve_jwks({"jwks": json.loads(JWKS_FILE.read_text())}, port)
    try:
        assert s.chat(token).status_code == 200
    finally:
        server.shutdown()
