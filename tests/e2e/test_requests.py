"""Request validation through Envoy + tollgate: malformed or model-less bodies get 400, bodies over
max_request_body_bytes get 413 (JSON, in the API's error shape); none reaches the upstream.
Bodies that pass are forwarded unchanged."""

from __future__ import annotations

import json

import openai
import pytest

from checks import ANTHROPIC, OPENAI, check_not_rate_limited_error
from tollgate_config import Team

MAX_BODY = 65536
MSG = [{"role": "user", "content": "Say hello"}]
PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/messages"]


def flavour(path):
    return ANTHROPIC if path == "/v1/messages" else OPENAI


def valid_body(path: str, text: str = "Say hello") -> dict:
    if path == "/v1/messages":
        return {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": text}]}
    if path == "/v1/responses":
        return {"model": "gpt-4o-mini", "input": text}
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("requests", [Team("req", rpm=1000, daily_tokens=10_000_000), Team("req-rpm", rpm=2)],
                         max_request_body_bytes=MAX_BODY)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [b"{not json", b'{"model": "gpt-4o-mini", "messages": [', b"[1, 2, 3]", b'"just a string"'])
def test_malformed_json_is_400(stack, marker, path, bad):
    r = stack.post(path, token=stack.token("req"), content=bad, marker=marker)
    check_not_rate_limited_error(r, 400, flavour(path))
    assert stack.upstream_requests(marker) == []


@pytest.mark.parametrize("path", PATHS)
def test_missing_model_is_400(stack, marker, path):
    body = valid_body(path)
    del body["model"]
    r = stack.post(path, token=stack.token("req"), json_body=body, marker=marker)
    check_not_rate_limited_error(r, 400, flavour(path))
    assert stack.upstream_requests(marker) == []


@pytest.mark.parametrize("path", PATHS)
def test_oversized_body_is_413(stack, marker, path):
    body = valid_body(path, "x" * (MAX_BODY + 10_000))
    r = stack.post(path, token=stack.token("req"), json_body=body, marker=marker)
    check_not_rate_limited_error(r, 413, flavour(path))
    assert stack.upstream_requests(marker) == []


def test_sdk_sees_413_as_status_error(stack, marker):
    client = stack.openai(stack.token("req"), marker)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 100_000}])
    assert e.value.status_code == 413
    assert stack.upstream_requests(marker) == []


@pytest.mark.parametrize("path", PATHS)
def test_body_just_under_the_limit_is_forwarded_unchanged(stack, marker, path):
    text = "héllo wörld ✓ 🚀 " * 10
    body = valid_body(path, text + "z" * (MAX_BODY - 2000 - len(text.encode())))
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert len(raw) < MAX_BODY
    r = stack.post(path, token=stack.token("req"), content=raw, marker=marker)
    assert r.status_code == 200, r.text[:300]
    [up] = stack.upstream_requests(marker)
    assert up["body"] == body


def test_body_above_envoys_buffer_is_refused_by_envoy(stack, marker):
    """Above per_connection_buffer_limit_bytes (20 MiB in envoy/local.yaml) Envoy cannot buffer the
    body for ext_proc and answers 413 itself: refused, never passed through unchecked."""
    body = valid_body("/v1/chat/completions", "x" * (21 * 1024 * 1024))
    r = stack.post("/v1/chat/completions", token=stack.token("req"), json_body=body, marker=marker, timeout=60)
    assert r.status_code == 413, r.text[:300]
    assert stack.upstream_requests(marker) == []


@pytest.mark.parametrize("path", PATHS)
def test_a_key_given_twice_is_400_and_never_reaches_the_upstream(stack, marker, path):
    """Two "model" keys: tollgate would price the last, a provider may run the first. Refused,
    naming the key, before the request costs anything."""
    body = valid_body(path)
    rest = json.dumps({k: v for k, v in body.items() if k != "model"})[1:-1]
    raw = '{"model": "gpt-4o-mini", ' + rest + ', "model": "gpt-4o"}'
    r = stack.post(path, token=stack.token("req"), content=raw, marker=marker)
    body = check_not_rate_limited_error(r, 400, flavour(path))
    assert body["reason"] == 'request body has the key "model" more than once', body
    if flavour(path) == OPENAI:
        assert body["error"]["code"] == "invalid_request_body", body
    assert stack.upstream_requests(marker) == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("messages", ['"Say hello"', '{"role": "user", "content": "Say hello"}'])
def test_messages_that_are_not_an_array_are_400(stack, marker, path, messages):
    tok = stack.token("req")
    raw = '{"model": "%s", "max_tokens": 8, "messages": %s}' % (valid_body(path)["model"], messages)
    r = stack.post(path, token=tok, content=raw, marker=marker)
    body = check_not_rate_limited_error(r, 400, flavour(path))
    assert body["reason"] == 'request body field "messages" must be an array', body
    assert stack.upstream_requests(marker) == []


@pytest.mark.parametrize(
    "path,field,value,said",
    [
        ("/v1/responses", "input", {"text": "hi"}, "a string or an array"),
        ("/v1/chat/completions", "stream", "yes", "true or false"),
        ("/v1/chat/completions", "max_tokens", -1, "a non-negative integer"),
        ("/v1/messages", "max_tokens", "8", "a non-negative integer"),
        ("/v1/messages", "system", 7, "a string or an array"),
    ],
)
def test_fields_of_the_wrong_type_are_400(stack, marker, path, field, value, said):
    body = dict(valid_body(path), **{field: value})
    r = stack.post(path, token=stack.token("req"), json_body=body, marker=marker)
    got = check_not_rate_limited_error(r, 400, flavour(path))
    assert got["reason"] == f'request body field "{field}" must be {said}', got
    assert stack.upstream_requests(marker) == []


def test_a_refused_body_costs_no_rpm_slot(stack, marker):
    """Two requests a minute: one sent, four malformed bodies refused, and the second still fits."""
    tok = stack.token("req-rpm")
    assert stack.chat(tok, marker=marker, usage="prompt=0,completion=0").status_code == 200
    for raw in (
        '{"model": "gpt-4o-mini", "messages": "Say hello"}',
        '{"model": "gpt-4o-mini", "messages": {"role": "user", "content": "hi"}}',
        '{"model": "gpt-4o-mini", "messages": [], "model": "gpt-4o"}',
        '{"messages": [], "model": "gpt-4o-mini", "messages": []}',
    ):
        r = stack.post("/v1/chat/completions", token=tok, content=raw, marker=marker)
        check_not_rate_limited_error(r, 400, OPENAI)
    r = stack.chat(tok, marker=marker, usage="prompt=0,completion=0")
    assert r.status_code == 200, r.text
    assert len(stack.upstream_requests(marker)) == 2
