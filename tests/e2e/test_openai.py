"""OpenAI Chat Completions and Responses through Envoy + tollgate, with the official SDK and raw
httpx: responses reach the client intact, carry the rate-limit headers, and the team is debited
the provider's actual usage (cached tokens are part of prompt/input tokens: counted once)."""

from __future__ import annotations

import json

import openai
import pytest

from processes import avoid_minute_boundary

from tollgate_config import Team

from wire import sse_events, stream_errors

TEXT = "Hello from the fake LLM upstream! This is a canned answer."
MSG = [{"role": "user", "content": "Say hello"}]
DAILY = 100_000
RPM = 1000

TEAMS = [
    Team("oa-chat-json", rpm=RPM, daily_tokens=DAILY),
    Team("oa-chat-sse", rpm=RPM, daily_tokens=DAILY),
    Team("oa-chat-sse-inject", rpm=RPM, daily_tokens=DAILY),
    Team("oa-chat-sse-raw", rpm=RPM, daily_tokens=DAILY),
    Team("oa-resp-json", rpm=RPM, daily_tokens=DAILY),
    Team("oa-resp-sse", rpm=RPM, daily_tokens=DAILY),
    Team("oa-resp-sse-raw", rpm=RPM, daily_tokens=DAILY),
    Team("oa-cut", rpm=RPM, daily_tokens=DAILY),
    Team("oa-upstream-err", rpm=RPM, daily_tokens=DAILY),
    Team("oa-headers", rpm=7, daily_tokens=5000),
    Team("oa-stream-timing", rpm=RPM, daily_tokens=DAILY),
]


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("openai", TEAMS)


def _ratelimit_headers(h, rpm: int, daily: int):
    assert h.get("x-ratelimit-limit") == str(rpm), dict(h)
    remaining = int(h["x-ratelimit-remaining"])
    assert 0 <= remaining < rpm
    assert int(h["x-ratelimit-reset"]) >= 0
    assert h.get("x-ratelimit-limit-tokens") == str(daily), dict(h)
    assert 0 <= int(h["x-ratelimit-remaining-tokens"]) <= daily


def test_rate_limit_headers_on_allowed_requests(stack, marker):
    tok = stack.token("oa-headers")
    avoid_minute_boundary(10)
    seen = []
    for _ in range(3):
        r = stack.chat(tok, marker=marker, usage="prompt=0,completion=0")
        assert r.status_code == 200, r.text
        _ratelimit_headers(r.headers, 7, 5000)
        seen.append(int(r.headers["x-ratelimit-remaining"]))
    # A fresh team within one minute: the remaining RPM counts down one by one.
    assert seen[0] - seen[2] == 2, seen
    assert seen[0] == 6, f"first request of a fresh rpm=7 team should leave 6, got {seen}"


def test_chat_json_sdk(stack, marker):
    client = stack.openai(stack.token("oa-chat-json"), marker)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG, extra_headers={"x-fake-usage": "prompt=10,cached=5,completion=20"}
    )
    _ratelimit_headers(raw.headers, RPM, DAILY)
    r = raw.parse()
    assert r.choices[0].message.content == TEXT
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (15, 20)
    [up] = stack.upstream_requests(marker)
    assert up["path"] == "/v1/chat/completions"
    assert up["body"]["model"] == "gpt-4o-mini" and up["body"]["messages"] == MSG
    # 15 prompt (5 of them cached, counted once) + 20 completion
    stack.wait_remaining_tokens("oa-chat-json", DAILY - 35)


def test_chat_stream_sdk_with_include_usage(stack, marker):
    client = stack.openai(stack.token("oa-chat-sse"), marker)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-usage": "prompt=12,completion=30"},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 42
    [up] = stack.upstream_requests(marker)
    assert up["body"]["stream_options"] == {"include_usage": True}
    stack.wait_remaining_tokens("oa-chat-sse", DAILY - 42)


def test_chat_stream_sdk_without_include_usage_gets_it_injected(stack, marker):
    client = stack.openai(stack.token("oa-chat-sse-inject"), marker)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True, extra_headers={"x-fake-usage": "prompt=8,completion=17"}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    [up] = stack.upstream_requests(marker)
    assert up["body"].get("stream_options", {}).get("include_usage") is True, up["body"]
    # The rest of the request is unchanged.
    assert up["body"]["messages"] == MSG and up["body"]["stream"] is True and up["body"]["model"] == "gpt-4o-mini"
    # The upstream then sends the usage chunk and the client sees it.
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 25
    stack.wait_remaining_tokens("oa-chat-sse-inject", DAILY - 25)


def test_chat_stream_raw_sse(stack, marker):
    body = {"model": "gpt-4o-mini", "messages": MSG, "stream": True}
    with stack._http.stream(
        "POST",
        stack.base_url + "/v1/chat/completions",
        json=body,
        headers={
            "authorization": f"Bearer {stack.token('oa-chat-sse-raw')}",
            "x-test-id": marker,
            "x-fake-usage": "prompt=5,completion=6",
        },
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        _ratelimit_headers(r.headers, RPM, DAILY)
        pieces = [p for p in r.iter_bytes() if p]
        raw = b"".join(pieces).decode()
    assert len(pieces) > 1, "SSE events should be streamed, not buffered into one body"
    events = sse_events(raw)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == TEXT
    assert chunks[-1]["usage"]["total_tokens"] == 11
    stack.wait_remaining_tokens("oa-chat-sse-raw", DAILY - 11)


def test_responses_json_sdk(stack, marker):
    client = stack.openai(stack.token("oa-resp-json"), marker)
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Say hello", extra_headers={"x-fake-usage": "prompt=20,cached=10,completion=9"}
    )
    _ratelimit_headers(raw.headers, RPM, DAILY)
    r = raw.parse()
    assert r.output_text == TEXT
    assert r.usage.input_tokens == 30 and r.usage.output_tokens == 9
    [up] = stack.upstream_requests(marker)
    assert up["path"] == "/v1/responses" and up["body"]["input"] == "Say hello"
    stack.wait_remaining_tokens("oa-resp-json", DAILY - 39)


def test_responses_stream_sdk(stack, marker):
    client = stack.openai(stack.token("oa-resp-sse"), marker)
    with client.responses.stream(
        model="gpt-4o-mini", input="Say hello", extra_headers={"x-fake-usage": "prompt=21,cached=4,completion=13"}
    ) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == TEXT
    assert final.output_text == TEXT and final.usage.total_tokens == 38
    stack.wait_remaining_tokens("oa-resp-sse", DAILY - 38)


def test_responses_stream_raw_events_intact(stack, marker):
    r = stack.post(
        "/v1/responses",
        token=stack.token("oa-resp-sse-raw"),
        json_body={"model": "gpt-4o-mini", "input": "Say hello", "stream": True},
        marker=marker,
        usage="prompt=3,completion=4",
    )
    assert r.status_code == 200
    _ratelimit_headers(r.headers, RPM, DAILY)
    events = sse_events(r.text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    payloads = [json.loads(d) for _, d in events]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert all(p["type"] == k for p, k in zip(payloads, kinds))
    assert payloads[-1]["response"]["usage"]["total_tokens"] == 7
    stack.wait_remaining_tokens("oa-resp-sse-raw", DAILY - 7)


def test_chat_stream_cut_short_is_still_charged(stack, marker):
    client = stack.openai(stack.token("oa-cut"), marker)
    got = []
    with pytest.raises(stream_errors()):
        for c in client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,
            stream=True,
            extra_headers={"x-fake-cut-after": "4", "x-fake-usage": "prompt=500,completion=500"},
        ):
            got.append(c)
    assert 1 <= len(got) <= 4
    assert all(c.usage is None for c in got)
    # The usage never arrived: tollgate charges an estimate (> 0), not the 1000 it never saw.
    left = stack.wait_remaining_tokens("oa-cut", lambda v: v < DAILY, timeout=8)
    assert DAILY - left > 0


def test_upstream_error_passes_through(stack, marker):
    client = stack.openai(stack.token("oa-upstream-err"), marker)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, extra_headers={"x-fake-status": "500"})
    assert "fake upstream error" in str(e.value)
    # tollgate is still healthy for the team afterwards.
    ok = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert ok.choices[0].message.content == TEXT


def test_stream_is_not_buffered(stack, marker):
    """Events reach the client while the upstream is still generating (tollgate must not hold the
    response until the end to find the usage)."""
    import time

    text = " ".join(f"word{i}" for i in range(150))  # ~150 events, ~5 ms apart upstream
    t0 = time.monotonic()
    first = None
    with stack._http.stream(
        "POST",
        stack.base_url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MSG, "stream": True},
        headers={"authorization": f"Bearer {stack.token('oa-stream-timing')}", "x-test-id": marker, "x-fake-text": text},
    ) as r:
        assert r.status_code == 200
        body = b""
        for piece in r.iter_bytes():
            if first is None and b"word0" in body + piece:
                first = time.monotonic() - t0
            body += piece
    total = time.monotonic() - t0
    assert first is not None, body[:300]
    assert total - first > 0.4, f"first content after {first:.2f}s, stream ended at {total:.2f}s: buffered?"
