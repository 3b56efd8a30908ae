"""The fake upstream itself, hit directly (no Envoy, no tollgate): the official SDKs must parse what
it sends, and its test controls must behave as documented. Needs no tollgate binary."""

from __future__ import annotations

import socket
import sys
import time

import anthropic
import httpx
import openai
import pytest

from processes import FAKE_LLM, Proc, free_port, http_status, wait_until

from wire import sse_events

TEXT = "Hello from the fake LLM upstream! This is a canned answer."


@pytest.fixture(scope="module")
def fake(e2e_root):
    port = free_port()
    p = Proc("fake_llm-direct", [sys.executable, FAKE_LLM, "--port", port], e2e_root / "fake-direct").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(f"{url}/_fake/health") == 200, 10, what="fake_llm", proc=p)
        yield url
    finally:
        p.stop()


@pytest.fixture
def oa(fake):
    return openai.OpenAI(base_url=f"{fake}/v1", api_key="sk-test", max_retries=0, timeout=10)


@pytest.fixture
def an(fake):
    return anthropic.Anthropic(base_url=fake, api_key="sk-ant-test", max_retries=0, timeout=10)


MSG = [{"role": "user", "content": "hi"}]


def test_chat_json_usage_counts_cached_in_prompt(oa):
    r = oa.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, extra_headers={"x-fake-usage": "prompt=3,cached=2,completion=5"}
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == TEXT
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 5, 10)
    assert r.usage.prompt_tokens_details.cached_tokens == 2


def test_chat_stream_usage_only_with_include_usage(oa, fake):
    chunks = list(oa.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)

    chunks = list(
        oa.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 30
    assert all(c.usage is None for c in chunks[:-1])

    raw = httpx.post(
        f"{fake}/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True}, timeout=10
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers.get("transfer-encoding") == "chunked"
    assert sse_events(raw.text)[-1] == (None, "[DONE]")


def test_chat_stream_events_arrive_as_separate_chunks(fake):
    with httpx.stream(
        "POST", f"{fake}/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True}, timeout=10
    ) as r:
        pieces = [p for p in r.iter_raw() if p]
    assert len(pieces) >= 5, pieces


def test_responses_json_and_stream(oa):
    r = oa.responses.create(model="gpt-4o-mini", input="hi", extra_headers={"x-fake-usage": "prompt=7,cached=3"})
    assert r.object == "response" and r.output_text == TEXT
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (10, 20, 30)
    assert r.usage.input_tokens_details.cached_tokens == 3

    events = list(oa.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert events[-1].response.usage.total_tokens == 30

    with oa.responses.stream(model="gpt-4o-mini", input="hi") as s:
        for _ in s:
            pass
        final = s.get_final_response()
    assert final.output_text == TEXT and final.usage.total_tokens == 30


def test_anthropic_json_and_stream(an):
    h = {"x-fake-usage": "prompt=10,completion=20,cached=30,cache_write=40"}
    m = an.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSG, extra_headers=h)
    assert m.content[0].text == TEXT
    u = m.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (10, 20, 30, 40)

    with an.messages.stream(model="claude-haiku-4-5", max_tokens=10, messages=MSG, extra_headers=h) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == TEXT
    u = final.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (10, 20, 30, 40)


def test_anthropic_stream_event_sequence(fake):
    r = httpx.post(
        f"{fake}/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": MSG, "stream": True},
        headers={"x-fake-usage": "prompt=4,completion=9"},
        timeout=10,
    )
    kinds = [e for e, _ in sse_events(r.text)]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    import json

    data = dict((e, json.loads(d)) for e, d in sse_events(r.text))
    assert data["message_start"]["message"]["usage"]["input_tokens"] == 4
    assert data["message_start"]["message"]["usage"]["output_tokens"] == 1
    assert data["message_delta"]["usage"] == {"output_tokens": 9}


def test_error_status_in_api_shape(oa, an):
    with pytest.raises(openai.InternalServerError) as e:
        oa.chat.completions.create(model="m", messages=MSG, extra_headers={"x-fake-status": "500"})
    assert e.value.body["type"] == "server_error"
    with pytest.raises(anthropic.InternalServerError) as e2:
        an.messages.create(model="m", max_tokens=1, messages=MSG, extra_headers={"x-fake-status": "500"})
    assert e2.value.body["type"] == "error" and e2.value.body["error"]["type"] == "api_error"


def test_cut_after_drops_the_connection(oa, fake):
    got = []
    with pytest.raises(openai.APIConnectionError):
        for c in oa.chat.completions.create(
            model="m", messages=MSG, stream=True, stream_options={"include_usage": True},
            extra_headers={"x-fake-cut-after": "3"},
        ):
            got.append(c)
    assert len(got) == 3
    assert all(c.usage is None for c in got)


def test_delay(fake):
    t0 = time.monotonic()
    httpx.post(f"{fake}/v1/chat/completions", json={"model": "m", "messages": MSG}, headers={"x-fake-delay-ms": "300"})
    assert time.monotonic() - t0 >= 0.3


def test_introspection_and_models(oa, fake):
    httpx.delete(f"{fake}/_fake/requests")
    assert oa.models.list().data
    oa.chat.completions.create(model="gpt-4o", messages=MSG, extra_headers={"X-Test-Id": "abc"})
    httpx.post(f"{fake}/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    reqs = httpx.get(f"{fake}/_fake/requests").json()
    assert [r["path"] for r in reqs] == ["/v1/models", "/v1/chat/completions", "/v1/messages"]
    assert reqs[1]["headers"]["x-test-id"] == "abc"
    assert reqs[1]["headers"]["authorization"] == "Bearer sk-test"
    assert reqs[1]["body"]["model"] == "gpt-4o"
    assert reqs[2]["body"] == "{not json"
    httpx.delete(f"{fake}/_fake/requests")
    assert httpx.get(f"{fake}/_fake/requests").json() == []


def test_keep_alive_and_chunked_request_body(fake):
    port = int(fake.rsplit(":", 1)[1])
    body = b'{"model":"m","messages":[]}'
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        req = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        s.sendall(req + req)  # two requests on one connection
        data = b""
        deadline = time.time() + 5
        while data.count(b"HTTP/1.1 200") < 2 and time.time() < deadline:
            data += s.recv(65536)
    assert data.count(b"HTTP/1.1 200") == 2


def test_other_openai_endpoints_parse_with_the_sdk(oa, an):
    usage = {"x-fake-usage": "prompt=7,completion=9"}
    c = oa.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", extra_headers=usage)
    assert c.choices[0].text == TEXT and (c.usage.prompt_tokens, c.usage.completion_tokens) == (7, 9)
    chunks = list(oa.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", stream=True,
                                        stream_options={"include_usage": True}, extra_headers=usage))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == TEXT
    assert chunks[-1].usage.completion_tokens == 9 and chunks[-1].choices == []
    e = oa.embeddings.create(model="text-embedding-3-small", input=["a", "b"], extra_headers=usage)
    assert len(e.data) == 2 and (e.usage.prompt_tokens, e.usage.total_tokens) == (7, 7)
    dalle = oa.images.generate(model="dall-e-3", prompt="a cat", n=1)
    assert dalle.data[0].url and dalle.data[0].revised_prompt == "a cat" and dalle.usage is None
    two = oa.images.generate(model="dall-e-2", prompt="a cat", n=2, extra_headers={"x-fake-images": "1"})
    assert len(two.data) == 1, "x-fake-images overrides n"
    gpt = oa.images.generate(model="gpt-image-1", prompt="a cat", quality="low", extra_headers=usage)
    assert gpt.data[0].b64_json and (gpt.usage.input_tokens, gpt.usage.output_tokens) == (7, 9)
    speech = oa.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    assert speech.content.startswith(b"ID3")
    assert an.messages.count_tokens(model="claude-haiku-4-5", messages=MSG, extra_headers=usage).input_tokens == 7
    assert oa.models.retrieve("gpt-4o").id == "gpt-4o"
