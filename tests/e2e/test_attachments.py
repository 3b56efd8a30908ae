"""The two ways Envoy attaches tollgate, through real Envoy.

Fast attachment (envoy/local-fast.yaml, opt-in): a request with a body reaches tollgate as ONE
synchronous message (the body, with path and headers as attributes); the response goes to a
second, observability-mode filter that Envoy never waits for. These tests count Envoy's own
ext_proc message counters and show every guarantee of the four-phase attachment still holds:
usage charged from JSON, from SSE and from a stream cut short, refusals before the upstream,
rate-limit headers on the response, requests without a body still admitted.

Four-phase attachment (envoy/local.yaml, the default): one filter holds every phase, so enforce-mode
answer guardrails still withhold answers; tollgate refuses enforce mode on the fast attachment.
"""

from __future__ import annotations

import copy
import re
import time

import httpx
import pytest

from harness import Team, avoid_minute_boundary, stream_errors

DAILY = 100_000
TEAMS = [
    Team("fp-count", rpm=1000, daily_tokens=DAILY),
    Team("fp-json", rpm=1000, daily_tokens=DAILY),
    Team("fp-sse", rpm=1000, daily_tokens=DAILY),
    Team("fp-cut", rpm=1000, daily_tokens=DAILY),
    Team("fp-slow", rpm=1000, daily_tokens=DAILY),
    Team("fp-refused", rpm=1, daily_tokens=DAILY),
    Team("fp-headers", rpm=9, daily_tokens=5000),
    Team("fp-nobody", rpm=1000, daily_tokens=DAILY),
]


@pytest.fixture(scope="module")
def fast(stack_factory):
    return stack_factory("fast", TEAMS, envoy_config="local-fast.yaml")


def envoy_counter(stack, filter_prefix: str, name: str) -> int:
    """An ext_proc counter of one filter (its `stat_prefix`), from Envoy's admin /stats."""
    text = httpx.get(f"{stack.admin_url}/stats", params={"filter": f"ext_proc\\.{filter_prefix}\\.{name}$"}).text
    values = [int(v) for v in re.findall(r":\s*(\d+)\s*$", text, re.M)]
    assert values, f"no ext_proc.{filter_prefix}.{name} in Envoy stats: {text!r}"
    return sum(values)


def upstream_requests_started(stack) -> int:
    """Requests Envoy started towards the upstream, even ones it reset before a body went out."""
    text = httpx.get(f"{stack.admin_url}/stats", params={"filter": r"^cluster\.llm_upstream\.upstream_rq_total$"}).text
    return int(re.search(r":\s*(\d+)", text).group(1))


def sent(stack) -> dict[str, int]:
    return {f: envoy_counter(stack, f, "stream_msgs_sent") for f in ("admission", "observer")}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_fast_path_sends_one_synchronous_message_per_request(fast, marker, stream):
    before = sent(fast)
    n = 5
    for _ in range(n):
        r = fast.chat(fast.token("fp-count"), stream=stream, marker=marker, usage="prompt=1,completion=1")
        assert r.status_code == 200, r.text
    after = sent(fast)
    # One message each to the filter Envoy waits for; the response went to the observer.
    assert after["admission"] - before["admission"] == n, (before, after)
    assert after["observer"] - before["observer"] >= 2 * n, (before, after)
    assert envoy_counter(fast, "admission", "streams_started") >= n


def test_fast_path_charges_json_usage(fast, marker):
    left = fast.remaining_tokens("fp-json")
    r = fast.chat(fast.token("fp-json"), marker=marker, usage="prompt=120,completion=80")
    assert r.status_code == 200, r.text
    fast.wait_remaining_tokens("fp-json", left - 200, timeout=8)


def test_fast_path_charges_sse_usage(fast, marker):
    left = fast.remaining_tokens("fp-sse")
    client = fast.openai(fast.token("fp-sse"), marker)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-fake-usage": "prompt=300,completion=50"},
    ))
    assert chunks
    # include_usage was injected into the body on the fast route too.
    assert fast.upstream_requests(marker)[-1]["body"]["stream_options"] == {"include_usage": True}
    fast.wait_remaining_tokens("fp-sse", left - 350, timeout=15)


def test_fast_path_charges_a_slow_stream_exactly(fast, marker):
    """The observer outlives long pauses (before the first byte, between events), each longer
    than the grace it gives a response cut short: the admission stream lasts as long as the
    HTTP request, so only the request's end starts that grace."""
    left = fast.remaining_tokens("fp-slow")
    client = fast.openai(fast.token("fp-slow"), marker)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-fake-usage": "prompt=70,completion=30", "x-fake-delay-ms": "700",
                       "x-fake-event-pause-ms": "400"},
    ))
    assert chunks
    fast.wait_remaining_tokens("fp-slow", left - 100, timeout=15)


def test_fast_path_charges_a_stream_cut_short(fast, marker):
    left = fast.remaining_tokens("fp-cut")
    client = fast.openai(fast.token("fp-cut"), marker)
    with pytest.raises(stream_errors()):
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers={"x-fake-cut-after": "3", "x-fake-usage": "prompt=500,completion=500"},
        ):
            pass
    # The usage never arrived: an estimate (> 0) is charged when the request is over, not when
    # Envoy resets the observer stream (deferred_close_timeout, 5 s later).
    cut = time.monotonic()
    now = fast.wait_remaining_tokens("fp-cut", lambda v: v < left, timeout=20)
    assert 0 < left - now < 1000
    assert time.monotonic() - cut < 4, "charged only when Envoy reset the observer stream"


def test_fast_path_refusals_never_reach_the_upstream(fast, marker):
    avoid_minute_boundary(10)
    tok = fast.token("fp-refused")
    assert fast.chat(tok, marker=marker).status_code == 200
    started = upstream_requests_started(fast)
    over = fast.chat(tok, marker=marker)
    assert over.status_code == 429, over.text
    assert fast.chat(None, marker=marker).status_code == 401
    assert fast.chat("not-a-token", marker=marker).status_code == 401
    bad = fast.post("/v1/chat/completions", token=tok, content=b"{not json", marker=marker)
    assert bad.status_code in (400, 429), bad.text
    assert len(fast.upstream_requests(marker)) == 1
    # Not even their headers: Envoy never opened an upstream request for them.
    assert upstream_requests_started(fast) == started


def test_fast_path_rate_limit_headers_come_from_admission(fast, marker):
    avoid_minute_boundary(10)
    seen = []
    for _ in range(2):
        r = fast.chat(fast.token("fp-headers"), marker=marker, usage="prompt=0,completion=0")
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit"] == "9"
        assert r.headers["x-ratelimit-limit-tokens"] == "5000"
        assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 5000
        seen.append(int(r.headers["x-ratelimit-remaining"]))
    assert seen == [8, 7], seen
    # The upstream's own x-ratelimit-* (if any) never shows through twice.
    assert len(r.headers.get_list("x-ratelimit-limit")) == 1


def test_requests_without_a_body_are_still_admitted(fast, marker):
    """No content-length: the default route sends the headers to tollgate (the fast route only
    takes requests that announce a body)."""
    r = httpx.get(f"{fast.base_url}/v1/models", headers={"x-test-id": marker})
    assert r.status_code == 401, r.text
    r = httpx.get(f"{fast.base_url}/v1/models",
                  headers={"x-test-id": marker, "authorization": f"Bearer {fast.token('fp-nobody')}"})
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit"] == "1000"
    empty = fast.post("/v1/chat/completions", token=fast.token("fp-nobody"), content=b"", marker=marker)
    assert empty.status_code == 400, empty.text
    assert [q["path"] for q in fast.upstream_requests(marker)] == ["/v1/models"]


# --------------------------------------------------------------------------- four-phase attachment

SSN = "123-45-6789"
LOCAL = {"pii": [{"type": "US_SOCIAL_SECURITY_NUMBER", "action": "BLOCK"}]}
GUARD_TEAMS = [Team("gp-answer", rpm=1000, daily_tokens=DAILY)]


def test_guarded_path_still_blocks_answers(stack_factory, marker):
    s = stack_factory("guarded", GUARD_TEAMS, envoy_config="local.yaml",
                      guardrail={"mode": "enforce", "local": copy.deepcopy(LOCAL)})
    r = s.chat(s.token("gp-answer"), marker=marker, headers={"x-fake-text": f"your ssn is {SSN}"})
    assert r.status_code == 200, r.text
    assert SSN not in r.text
    assert r.headers.get("x-tollgate-guardrail") == "blocked"
    assert len(s.upstream_requests(marker)) == 1


def test_fast_path_refuses_enforce_mode(stack_factory, marker):
    s = stack_factory("fast-enforce", GUARD_TEAMS, envoy_config="local-fast.yaml",
                      guardrail={"mode": "enforce", "local": copy.deepcopy(LOCAL)})
    r = s.chat(s.token("gp-answer"), marker=marker)
    assert r.status_code == 503, r.text
    assert "guarded attachment" in r.text
    assert s.upstream_requests(marker) == []
