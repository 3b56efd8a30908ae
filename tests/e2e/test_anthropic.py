"""Anthropic Messages through Envoy + tollgate with the official SDK (JSON and SSE) and raw httpx:
the team is debited input + output + cache read + cache write, streams included."""

from __future__ import annotations

import json

import anthropic
import pytest

from processes import avoid_minute_boundary

from tollgate_config import Team

from wire import sse_events, stream_errors

TEXT = "Hello from the fake LLM upstream! This is a canned answer."
MSG = [{"role": "user", "content": "Say hello"}]
MODEL = "claude-haiku-4-5"
DAILY = 100_000
RPM = 1000
CACHE_USAGE = "prompt=10,completion=20,cached=30,cache_write=40"  # 100 tokens in all

TEAMS = [
    Team("an-json", rpm=RPM, daily_tokens=DAILY),
    Team("an-sse", rpm=RPM, daily_tokens=DAILY),
    Team("an-sse-raw", rpm=RPM, daily_tokens=DAILY),
    Team("an-sse-full-delta", rpm=RPM, daily_tokens=DAILY),
    Team("an-cut", rpm=RPM, daily_tokens=DAILY),
    Team("an-rpm", rpm=1, daily_tokens=DAILY),
]


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("anthropic", TEAMS)


def _headers(h):
    assert h.get("x-ratelimit-limit") == str(RPM), dict(h)
    assert int(h["x-ratelimit-remaining"]) < RPM
    assert int(h["x-ratelimit-reset"]) >= 0
    assert h.get("x-ratelimit-limit-tokens") == str(DAILY)
    assert int(h["x-ratelimit-remaining-tokens"]) <= DAILY


def test_messages_json_sdk_with_cache_tokens(stack, marker):
    client = stack.anthropic(stack.token("an-json"), marker)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=MSG, extra_headers={"x-fake-usage": CACHE_USAGE}
    )
    _headers(raw.headers)
    m = raw.parse()
    assert m.content[0].text == TEXT
    assert (m.usage.input_tokens, m.usage.output_tokens) == (10, 20)
    assert (m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens) == (30, 40)
    [up] = stack.upstream_requests(marker)
    assert up["path"] == "/v1/messages" and up["body"]["model"] == MODEL and up["body"]["messages"] == MSG
    stack.wait_remaining_tokens("an-json", DAILY - 100)


def test_messages_stream_sdk_with_cache_tokens(stack, marker):
    client = stack.anthropic(stack.token("an-sse"), marker)
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=MSG, extra_headers={"x-fake-usage": CACHE_USAGE}
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == TEXT
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 20)
    assert (final.usage.cache_read_input_tokens, final.usage.cache_creation_input_tokens) == (30, 40)
    stack.wait_remaining_tokens("an-sse", DAILY - 100)


def test_messages_stream_raw_events_intact(stack, marker):
    with stack._http.stream(
        "POST",
        stack.base_url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 64, "messages": MSG, "stream": True},
        headers={
            "authorization": f"Bearer {stack.token('an-sse-raw')}",
            "anthropic-version": "2023-06-01",
            "x-test-id": marker,
            "x-fake-usage": "prompt=7,completion=11,cached=2,cache_write=3",
        },
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        _headers(r.headers)
        pieces = [p for p in r.iter_bytes() if p]
    assert len(pieces) > 1, "SSE events should be streamed, not buffered into one body"
    events = sse_events(b"".join(pieces).decode())
    kinds = [e for e, _ in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    for kind, data in events:
        assert json.loads(data)["type"] == kind
    stack.wait_remaining_tokens("an-sse-raw", DAILY - 23)


def test_messages_stream_cumulative_delta_usage_not_double_counted(stack, marker):
    """Newer Anthropic API versions repeat the (cumulative) input and cache counts in message_delta.
    They are totals, not increments: the debit is still 100."""
    client = stack.anthropic(stack.token("an-sse-full-delta"), marker)
    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=MSG,
        extra_headers={"x-fake-usage": CACHE_USAGE, "x-fake-anthropic-delta-usage": "full"},
    ) as s:
        assert "".join(s.text_stream) == TEXT
    stack.wait_remaining_tokens("an-sse-full-delta", DAILY - 100)


def test_messages_stream_cut_short_is_charged_for_what_was_sent(stack, marker):
    client = stack.anthropic(stack.token("an-cut"), marker)
    with pytest.raises(stream_errors()):
        with client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=MSG,
            # message_start (input + cache usage), content_block_start, ping, 2 text deltas, then cut
            extra_headers={"x-fake-usage": CACHE_USAGE, "x-fake-cut-after": "5"},
        ) as s:
            for _ in s.text_stream:
                pass
    # message_start reported 10 input + 30 cache read + 40 cache write: at least that is charged.
    left = stack.wait_remaining_tokens("an-cut", lambda v: v <= DAILY - 80, timeout=8)
    assert DAILY - left >= 80


def test_rate_limited_messages_raise_sdk_rate_limit_error(stack, marker):
    client = stack.anthropic(stack.token("an-rpm"), marker)
    avoid_minute_boundary()
    client.messages.create(model=MODEL, max_tokens=8, messages=MSG)
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model=MODEL, max_tokens=8, messages=MSG)
    body = e.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"].startswith("RPM limit exceeded: ")
    assert body["error"]["message"] in str(e.value)
    assert int(e.value.response.headers["retry-after"]) >= 0
    # A streaming request is refused the same way, before any event.
    with pytest.raises(anthropic.RateLimitError):
        with client.messages.stream(model=MODEL, max_tokens=8, messages=MSG) as s:
            for _ in s.text_stream:
                pass
    assert len(stack.upstream_requests(marker)) == 1
