"""Per-team limits through Envoy + tollgate: RPM holds exactly under concurrency, rejected requests
do not consume quota, the 429 contract (headers, body, API error shape, SDK exceptions) and daily
token exhaustion."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest

from checks import ANTHROPIC, OPENAI, RPM_MAX_RETRY, check_error_body, check_rejection
from processes import avoid_minute_boundary
from tollgate_config import Team

MSG = [{"role": "user", "content": "Say hello"}]
ZERO = "prompt=0,completion=0"

TEAMS = [
    Team("lim-burst", rpm=10, daily_tokens=1_000_000),
    Team("lim-free", rpm=3, daily_tokens=1_000_000),
    Team("lim-429-oa", rpm=2, daily_tokens=1_000_000),
    Team("lim-429-an", rpm=1, daily_tokens=1_000_000),
    Team("lim-daily", rpm=1000, daily_tokens=100),
    Team("lim-shared", client_ids=["shared-1", "shared-2"], rpm=2, daily_tokens=1_000_000),
    Team("lim-ledger", rpm=1000, daily_tokens=1_000_000),
]


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("limits", TEAMS)


def test_rpm_holds_exactly_under_concurrency(stack, marker):
    tok = stack.token("lim-burst")
    n = 25
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait(10)
        return stack.chat(tok, marker=marker, usage=ZERO).status_code

    avoid_minute_boundary()
    with ThreadPoolExecutor(n) as ex:
        statuses = Counter(ex.map(one, range(n)))
    assert statuses == Counter({200: 10, 429: 15}), statuses
    assert len(stack.upstream_requests(marker)) == 10


def test_rejected_requests_do_not_consume_rpm(stack, marker):
    team = "lim-free"  # rpm 3
    tok = stack.token(team)
    avoid_minute_boundary(15)
    for bad in (b"{not json", b"[1, 2", b""):
        r = stack.post("/v1/chat/completions", token=tok, content=bad, marker=marker)
        assert r.status_code == 400, (bad, r.status_code, r.text)
    r = stack.post("/v1/chat/completions", token=tok, json_body={"messages": MSG}, marker=marker)
    assert r.status_code == 400, r.text
    # Refused tokens for the team's own client id do not count either.
    r = stack.chat(stack.token(team, expires_in=-3600), marker=marker)
    assert r.status_code == 401, r.text
    r = stack.chat(stack.token(team, scope="https://gateway.internal/admin"), marker=marker)
    assert r.status_code == 403, r.text

    for i in range(3):
        r = stack.chat(tok, marker=marker, usage=ZERO)
        assert r.status_code == 200, f"request {i + 1}/3 after rejected ones: {r.status_code} {r.text}"
    r = stack.chat(tok, marker=marker, usage=ZERO)
    check_rejection(
        r, flavour=OPENAI, code="rpm_limit_exceeded", reason_re=r"RPM limit exceeded: 3 requests in the last 60 s, limit 3",
        max_retry_after=RPM_MAX_RETRY,
    )
    assert len(stack.upstream_requests(marker)) == 3


def test_rpm_rejection_contract_openai(stack, marker):
    team = "lim-429-oa"  # rpm 2
    tok = stack.token(team)
    avoid_minute_boundary(15)
    for _ in range(2):
        assert stack.chat(tok, marker=marker, usage=ZERO).status_code == 200
    r = stack.chat(tok, marker=marker)
    body, _ = check_rejection(
        r, flavour=OPENAI, code="rpm_limit_exceeded", reason_re=r"RPM limit exceeded: 2 requests in the last 60 s, limit 2",
        max_retry_after=RPM_MAX_RETRY,
    )
    assert r.headers["x-ratelimit-limit"] == "2" and r.headers["x-ratelimit-remaining"] == "0"
    assert int(r.headers["x-ratelimit-reset"]) <= 60
    assert r.headers.get("x-should-retry") != "false", "an RPM rejection is retryable"

    # /v1/responses is OpenAI too; the rejection itself did not count (still 2 in the window).
    r = stack.post("/v1/responses", token=tok, json_body={"model": "gpt-4o-mini", "input": "hi"}, marker=marker)
    check_rejection(
        r, flavour=OPENAI, code="rpm_limit_exceeded", reason_re=r"RPM limit exceeded: 2 requests in the last 60 s, limit 2",
        max_retry_after=RPM_MAX_RETRY,
    )

    client = stack.openai(tok, marker)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert body["reason"] in str(e.value)
    assert e.value.code == "rpm_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True):
            pass
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o-mini", input="hi")
    assert len(stack.upstream_requests(marker)) == 2


def test_rpm_rejection_contract_anthropic(stack, marker):
    tok = stack.token("lim-429-an")  # rpm 1
    avoid_minute_boundary(15)
    assert stack.messages(tok, marker=marker).status_code == 200
    r = stack.messages(tok, marker=marker)
    body, _ = check_rejection(
        r, flavour=ANTHROPIC, code="rpm_limit_exceeded", reason_re=r"RPM limit exceeded: 1 request in the last 60 s, limit 1",
        max_retry_after=RPM_MAX_RETRY,
    )
    assert body["error"] == {"type": "rate_limit_error", "message": body["reason"]}
    client = stack.anthropic(tok, marker)
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)
    assert body["reason"] in str(e.value)
    assert len(stack.upstream_requests(marker)) == 1


def test_client_ids_of_one_team_share_its_quota(stack, marker):
    avoid_minute_boundary(15)
    assert stack.chat(stack.token("shared-1"), marker=marker, usage=ZERO).status_code == 200
    assert stack.chat(stack.token("shared-2"), marker=marker, usage=ZERO).status_code == 200
    r = stack.chat(stack.token("shared-1"), marker=marker, usage=ZERO)
    check_rejection(r, flavour=OPENAI, code="rpm_limit_exceeded", reason_re=r"RPM limit exceeded: 2 requests in the last 60 s, limit 2",
                    max_retry_after=RPM_MAX_RETRY)


def test_daily_token_limit(stack, marker):
    team = "lim-daily"  # 100 tokens a day
    tok = stack.token(team)
    r = stack.chat(tok, marker=marker, usage="prompt=10,completion=50")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-tokens"] == "100"
    stack.wait_remaining_tokens(team, 40, marker=marker)
    # Still under the limit before the request: allowed, and its actual usage overshoots.
    r = stack.chat(tok, marker=marker, usage="prompt=10,completion=50")
    assert r.status_code == 200, r.text

    deadline = time.time() + 8
    while True:
        r = stack.chat(tok, marker=marker, usage=ZERO)
        if r.status_code != 200 or time.time() > deadline:
            break
        time.sleep(0.1)
    body, m = check_rejection(
        r,
        flavour=OPENAI,
        code="daily_token_limit_exceeded",
        reason_re=r"Daily token limit exceeded \((\d+)/100 tokens today\)",
        max_retry_after=86400,
    )
    assert int(m.group(1)) >= 120, body["reason"]
    assert r.headers.get("x-should-retry") == "false", dict(r.headers)
    assert r.headers.get("x-ratelimit-limit-tokens") == "100"
    assert r.headers.get("x-ratelimit-remaining-tokens") == "0"
    # Retry-After points at the next UTC midnight.
    to_midnight = 86400 - int(time.time()) % 86400
    assert abs(int(r.headers["retry-after"]) - to_midnight) <= 5, (r.headers["retry-after"], to_midnight)
    upstream_before = len(stack.upstream_requests(marker))

    # The team limit applies whatever the API.
    r = stack.messages(tok, marker=marker)
    check_rejection(r, flavour=ANTHROPIC, code="daily_token_limit_exceeded",
                    reason_re=r"Daily token limit exceeded \(\d+/100 tokens today\)", max_retry_after=86400)
    assert r.headers.get("x-should-retry") == "false"
    r = stack.post("/v1/responses", token=tok, json_body={"model": "gpt-4o-mini", "input": "hi"}, marker=marker)
    check_error_body(r, 429, OPENAI)

    with pytest.raises(openai.RateLimitError) as e:
        stack.openai(tok, marker).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert "Daily token limit exceeded" in str(e.value)
    assert e.value.code == "daily_token_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as e2:
        stack.anthropic(tok, marker).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)
    assert "Daily token limit exceeded" in str(e2.value)
    assert len(stack.upstream_requests(marker)) == upstream_before


def test_concurrent_debits_are_exact(stack, marker):
    """Many concurrent responses of every API and mode, each with known usage: the team is debited
    exactly their sum."""
    team = "lim-ledger"
    tok = stack.token(team)
    calls = []
    for i in range(24):
        usage = f"prompt={i + 1},completion={2 * i + 1},cached={i % 3},cache_write={i % 2}"
        calls.append((i, usage))

    def expected(i, usage):
        kind = i % 6
        u = dict((k, int(v)) for k, v in (p.split("=") for p in usage.split(",")))
        if kind in (4, 5):  # Anthropic: input + output + cache read + cache write
            return u["prompt"] + u["completion"] + u["cached"] + u["cache_write"]
        return u["prompt"] + u["cached"] + u["completion"]  # OpenAI: cached are inside prompt tokens

    def one(call):
        i, usage = call
        kind = i % 6
        if kind == 0:
            r = stack.chat(tok, marker=marker, usage=usage)
        elif kind == 1:
            r = stack.chat(tok, marker=marker, usage=usage, stream=True)
        elif kind == 2:
            r = stack.chat(tok, marker=marker, usage=usage, stream=True, stream_options={"include_usage": True})
        elif kind == 3:
            r = stack.post("/v1/responses", token=tok, marker=marker, usage=usage,
                           json_body={"model": "gpt-4o-mini", "input": "hi", "stream": i % 12 == 3})
        elif kind == 4:
            r = stack.messages(tok, marker=marker, usage=usage)
        else:
            r = stack.messages(tok, marker=marker, usage=usage, stream=True)
        return r.status_code

    with ThreadPoolExecutor(12) as ex:
        statuses = list(ex.map(one, calls))
    assert statuses == [200] * len(calls)
    total = sum(expected(k, u) for k, u in calls)
    stack.wait_remaining_tokens(team, 1_000_000 - total, timeout=10)
