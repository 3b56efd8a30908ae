"""The two ways Envoy attaches tollgate, through real Envoy.

Fast attachment (envoy/local-fast.yaml): a request with a body reaches tollgate as ONE synchronous
message (the body, with path and headers as attributes), and nothing on the response waits for
tollgate: Envoy's json_to_metadata and sse_to_metadata filters read the provider's usage out of the
response and Envoy's gRPC access log reports it to tollgate when the request ends. These tests
count Envoy's own ext_proc message counters and tollgate's access-log entries, and show every
guarantee of the four-phase attachment still holds: usage charged from JSON and SSE (OpenAI and
Anthropic), a stream cut short and a call whose client left charged, failed calls not charged,
refusals before the upstream, rate-limit headers on the response, requests without a body still
admitted.

Four-phase attachment (envoy/local.yaml, the one for content guardrails): one filter holds every
phase, so answer guardrails still see answers; tollgate refuses guardrailed requests on the fast
attachment.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import httpx
import pytest

from harness import Team, avoid_minute_boundary, stream_errors

DAILY = 100_000
TEAMS = [
    Team("fp-count", rpm=1000, daily_tokens=DAILY),
    Team("fp-json", rpm=1000, daily_tokens=DAILY),
    Team("fp-sse", rpm=1000, daily_tokens=DAILY),
    Team("fp-anthropic", rpm=1000, daily_tokens=DAILY),
    Team("fp-cut", rpm=1000, daily_tokens=DAILY),
    Team("fp-left", rpm=1000, daily_tokens=DAILY),
    Team("fp-failed", rpm=1000, daily_tokens=DAILY),
    Team("fp-slow", rpm=1000, daily_tokens=DAILY),
    Team("fp-refused", rpm=1, daily_tokens=DAILY),
    Team("fp-headers", rpm=9, daily_tokens=5000),
    Team("fp-nobody", rpm=1000, daily_tokens=DAILY),
    Team("fp-restart", rpm=1000, daily_tokens=DAILY),
]
ENVOY_DIR = Path(__file__).resolve().parents[2] / "envoy"


@pytest.fixture(scope="module")
def fast(stack_factory):
    return stack_factory("fast", TEAMS, envoy_config="local-fast.yaml")


def envoy_stat(stack, pattern: str) -> int:
    """The sum of Envoy's admin /stats counters matching `pattern`."""
    text = httpx.get(f"{stack.admin_url}/stats", params={"filter": pattern}).text
    values = [int(v) for v in re.findall(r":\s*(\d+)\s*$", text, re.M)]
    assert values, f"no {pattern} in Envoy stats: {text!r}"
    return sum(values)


def envoy_counter(stack, filter_prefix: str, name: str) -> int:
    """An ext_proc counter of one filter (its `stat_prefix`)."""
    return envoy_stat(stack, f"ext_proc\\.{filter_prefix}\\.{name}$")


def upstream_requests_started(stack) -> int:
    """Requests Envoy started towards the upstream, even ones it reset before a body went out."""
    return envoy_stat(stack, r"^cluster\.llm_upstream\.upstream_rq_total$")


def entries(stack, outcome: str) -> float:
    return stack.metric("tollgate_access_log_entries_total", outcome=outcome)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_fast_path_sends_one_synchronous_message_per_request(fast, marker, stream):
    sent = envoy_counter(fast, "admission", "stream_msgs_sent")
    charged = entries(fast, "charged")
    n = 5
    for _ in range(n):
        r = fast.chat(fast.token("fp-count"), stream=stream, marker=marker, usage="prompt=1,completion=1")
        assert r.status_code == 200, r.text
    # One message each, to the only filter that talks to tollgate: nothing on the response.
    assert envoy_counter(fast, "admission", "stream_msgs_sent") - sent == n
    assert "ext_proc.observer" not in httpx.get(f"{fast.admin_url}/stats").text
    # Each response reached tollgate as an access-log entry with the provider's usage in it.
    deadline = time.monotonic() + 10
    while entries(fast, "charged") - charged < n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert entries(fast, "charged") - charged == n


def test_fast_path_charges_json_usage(fast, marker):
    left = fast.remaining_tokens("fp-json")
    r = fast.chat(fast.token("fp-json"), marker=marker, usage="prompt=120,completion=80,cached=30")
    assert r.status_code == 200, r.text
    fast.wait_remaining_tokens("fp-json", left - 230, timeout=8)


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


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_fast_path_charges_anthropic_usage(fast, marker, stream):
    """Anthropic streams report input and cache tokens in message_start and output in
    message_delta: Envoy keeps both, tollgate adds them up (100 tokens in all)."""
    left = fast.remaining_tokens("fp-anthropic")
    client = fast.anthropic(fast.token("fp-anthropic"), marker)
    usage = {"x-fake-usage": "prompt=10,completion=20,cached=30,cache_write=40"}
    if stream:
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}], extra_headers=usage) as s:
            assert "".join(s.text_stream)
    else:
        client.messages.create(model="claude-haiku-4-5", max_tokens=64,
                               messages=[{"role": "user", "content": "hi"}], extra_headers=usage)
    fast.wait_remaining_tokens("fp-anthropic", left - 100, timeout=15)


def test_fast_path_charges_a_slow_stream_exactly(fast, marker):
    """Long pauses (before the first byte, between events) change nothing: the access-log entry
    comes when the request is over."""
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
    estimated = entries(fast, "estimated")
    client = fast.openai(fast.token("fp-cut"), marker)
    with pytest.raises(stream_errors()):
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=400,
            extra_headers={"x-fake-cut-after": "3", "x-fake-usage": "prompt=500,completion=500"},
        ):
            pass
    # The usage never arrived: an estimate (> 0, at most the prompt and the max_tokens asked
    # for) is charged from the access-log entry, not after the 5 s grace for a missing entry.
    cut = time.monotonic()
    now = fast.wait_remaining_tokens("fp-cut", lambda v: v < left, timeout=20)
    assert 0 < left - now <= 401
    assert time.monotonic() - cut < 4, "charged only when the grace for a missing entry ran out"
    assert entries(fast, "estimated") > estimated


def test_fast_path_charges_the_prompt_of_a_client_that_left(fast, marker):
    """The client gave up before the provider answered: the provider still bills the prompt."""
    left = fast.remaining_tokens("fp-left")
    r = None
    with pytest.raises(httpx.TimeoutException):
        r = httpx.post(f"{fast.base_url}/v1/chat/completions", timeout=0.5,
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 400}]},
                       headers={"authorization": f"Bearer {fast.token('fp-left')}", "x-test-id": marker,
                                "x-fake-delay-ms": "3000", "x-fake-usage": "prompt=900,completion=900"})
    assert r is None
    now = fast.wait_remaining_tokens("fp-left", lambda v: v < left, timeout=15)
    # About 100 tokens of prompt (400 characters), not the 1800 the provider would have reported.
    assert 90 <= left - now <= 130, left - now


def test_fast_path_does_not_charge_a_failed_call(fast, marker):
    left = fast.remaining_tokens("fp-failed")
    r = fast.chat(fast.token("fp-failed"), marker=marker, headers={"x-fake-status": "500"},
                  usage="prompt=400,completion=400")
    assert r.status_code == 500, r.text
    # Envoy logs in order: once the call after it is charged (10 tokens), the failed call's entry
    # was handled, and it charged nothing.
    assert fast.chat(fast.token("fp-failed"), marker=marker, usage="prompt=5,completion=5").status_code == 200
    fast.wait_remaining_tokens("fp-failed", left - 10, timeout=10)
    time.sleep(0.3)
    assert fast.remaining_tokens("fp-failed") == left - 10


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


def test_fast_path_charges_exactly_after_tollgate_restarts(stack_factory, marker):
    """Envoy's access-log stream to tollgate breaks when tollgate restarts; Envoy opens a new one
    and the next responses are charged from it, exactly (not the prompt a missing entry gets)."""
    s = stack_factory("fast-restart", [Team("fp-restart", rpm=1000, daily_tokens=DAILY)],
                      envoy_config="local-fast.yaml")
    assert s.chat(s.token("fp-restart"), marker=marker, usage="prompt=1,completion=1").status_code == 200
    s.wait_remaining_tokens("fp-restart", DAILY - 2, timeout=10)
    s.tollgate.stop()
    s.start_tollgate()
    left = s.remaining_tokens("fp-restart")
    for _ in range(3):
        r = s.chat(s.token("fp-restart"), marker=marker, usage="prompt=40,completion=60")
        assert r.status_code == 200, r.text
    # Within the 5 s after which a request without an entry is charged its prompt (3 tokens here):
    # only the entries' usage adds up to 300.
    s.wait_remaining_tokens("fp-restart", left - 300, timeout=4)
    assert s.metric("tollgate_extproc_handoffs_unclaimed_total") == 0


def test_fast_config_extracts_every_usage_field_tollgate_reads():
    """envoy/local-fast.yaml must copy every usage path that llm/usage.rs reads (its
    REPORTED_JSON_NUMBERS and REPORTED_EVENT_OBJECTS) into tollgate.usage, under the path itself."""
    source = (Path(__file__).resolve().parents[2] / "src" / "llm" / "usage.rs").read_text()
    wanted = []
    for name in ("REPORTED_JSON_NUMBERS", "REPORTED_EVENT_OBJECTS"):
        body = re.search(rf"pub const {name}: &\[&str\] = &\[(.*?)\];", source, re.S).group(1)
        wanted += re.findall(r'"([^"]+)"', body)
    assert len(wanted) >= 11, wanted
    config = (ENVOY_DIR / "local-fast.yaml").read_text()
    for path in wanted:
        selectors = ", ".join(f"{{ key: {k} }}" for k in path.split("."))
        assert f"selectors: [{selectors}]" in config, f"no rule extracts {path}"
        assert f"metadata_namespace: tollgate.usage, key: {path}" in config, f"{path} not under its path"


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
    """Answers never pass through tollgate on the fast attachment: an enforcing guardrail could not
    hold them, so the request is refused with how to fix it, not let through unchecked."""
    s = stack_factory("fast-enforce", GUARD_TEAMS, envoy_config="local-fast.yaml",
                      guardrail={"mode": "enforce", "local": copy.deepcopy(LOCAL)})
    r = s.chat(s.token("gp-answer"), marker=marker)
    assert r.status_code == 503, r.text
    assert "guarded attachment" in r.text and "envoy/local.yaml" in r.text
    assert s.upstream_requests(marker) == []


def test_fast_path_observes_prompts_and_counts_answers_it_cannot_assess(fast, marker):
    """Observe mode (the default) still assesses the prompt at admission; the answers it cannot
    see are counted, so an operator can tell."""
    unassessed = fast.metric("tollgate_guardrail_answers_unassessed_total")
    r = fast.chat(fast.token("fp-json"), marker=marker, usage="prompt=1,completion=1",
                  messages=[{"role": "user", "content": f"my ssn is {SSN}"}])
    assert r.status_code == 200, r.text
    assert fast.metric("tollgate_guardrail_answers_unassessed_total") == unassessed + 1
