"""The endpoint catalogue through Envoy + tollgate: every paid endpoint is metered (RPM, budget,
allow-list before it is forwarded; charged from the provider's usage after) or refused before the
upstream; free endpoints pass on identity and RPM alone; anything else is 404
`endpoint_not_supported` and never reaches the upstream."""

from __future__ import annotations

import openai
import pytest

from checks import ANTHROPIC, OPENAI, check_budget_rejection, check_error_body, check_not_rate_limited_error
from admin import micros
from processes import avoid_minute_boundary
from tollgate_config import Team

# $1 per 1000 tokens: a budget is spent with a small usage report.
FLAT = "flat-model"
PRICING = {"models": {FLAT: {"input": 1000.0, "output": 1000.0}}}
# Uploads are not free by default; this operator lets them through.
ENDPOINTS = {"free": ["POST /v1/files"]}
POLICY = {"team_cache_ttl_seconds": 1}


def _team(team_id: str, **kw) -> Team:
    kw.setdefault("rpm", 1000)
    return Team(team_id, daily_tokens=100_000_000, **kw)


TEAMS = [
    _team("ep-broke", monthly_budget_usd=0.01),
    _team("ep-free"),
    _team("ep-free-rpm", rpm=3),
    _team("ep-refused"),
    _team("ep-completions", monthly_budget_usd=10.0),
    _team("ep-completions-sse", monthly_budget_usd=10.0),
    _team("ep-embeddings", monthly_budget_usd=10.0),
    _team("ep-dalle", monthly_budget_usd=10.0),
    _team("ep-dalle-short", monthly_budget_usd=10.0),
    _team("ep-gpt-image", monthly_budget_usd=10.0),
    _team("ep-speech", monthly_budget_usd=10.0),
    _team("ep-allow", allowed_models=["gpt-4o-mini"]),
    _team("ep-sdk", monthly_budget_usd=10.0),
    _team("ep-admin-price", monthly_budget_usd=10.0),
]


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("endpoints", TEAMS, pricing=PRICING, endpoints=ENDPOINTS, policy=POLICY)


def completion(stack, team, marker=None, usage="prompt=0,completion=0", **body):
    payload = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello", "max_tokens": 16, **body}
    return stack.post("/v1/completions", token=stack.token(team), json_body=payload, usage=usage, marker=marker)


def embedding(stack, team, marker=None, usage="prompt=0", **body):
    payload = {"model": "text-embedding-3-small", "input": ["hello", "world"], **body}
    return stack.post("/v1/embeddings", token=stack.token(team), json_body=payload, usage=usage, marker=marker)


def image(stack, team, marker=None, usage=None, headers=None, **body):
    payload = {"model": "dall-e-3", "prompt": "a lighthouse at dusk", **body}
    return stack.post("/v1/images/generations", token=stack.token(team), json_body=payload, usage=usage,
                      marker=marker, headers=headers)


def speech(stack, team, text, marker=None, model="tts-1"):
    payload = {"model": model, "input": text, "voice": "alloy"}
    return stack.post("/v1/audio/speech", token=stack.token(team), json_body=payload, marker=marker)


def spend_by_model(stack, team: str) -> dict[str, int]:
    return {k: micros(v) for k, v in stack.usage(team)["spend_this_month"]["by_model"].items()}


def wait_charged(stack, team: str, expected: dict[str, int], timeout: float = 8.0) -> dict:
    """Polls until the team's spend by model is exactly `expected` micro-dollars."""
    return stack.wait_usage(
        team,
        lambda u: {k: micros(v) for k, v in u["spend_this_month"]["by_model"].items()} == expected,
        timeout,
        what=f"spend {expected}",
    )


# --------------------------------------------------------------------------- budgets hold everywhere


def test_a_team_over_budget_is_refused_on_every_paid_endpoint(stack, marker):
    team = "ep-broke"  # $0.01
    r = stack.chat(stack.token(team), model=FLAT, usage="prompt=10,completion=10", marker=marker)  # $0.02
    assert r.status_code == 200, r.text
    wait_charged(stack, team, {FLAT: 20_000})
    upstream = len(stack.upstream_requests(marker))

    refusals = [
        completion(stack, team, marker),
        completion(stack, team, marker, stream=True),
        embedding(stack, team, marker),
        image(stack, team, marker, n=1, size="1024x1024"),
        image(stack, team, marker, model="gpt-image-1", quality="low"),
        speech(stack, team, "Hello there", marker),
    ]
    for r in refusals:
        check_budget_rejection(
            r, flavour=OPENAI, code="monthly_budget_exceeded", reason_re=r"Monthly budget exceeded \(\$0\.02/\$0\.01\)"
        )
    assert len(stack.upstream_requests(marker)) == upstream, "a refused call reached the upstream"
    # Reads cost nothing and still pass.
    r = stack.request("GET", "/v1/models", token=stack.token(team), marker=marker)
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- charged from usage


def test_legacy_completions_are_charged_from_their_usage(stack, marker):
    # gpt-3.5-turbo-instruct: $1.50 in, $2.00 out per million: 1000 x 1.5 + 500 x 2 = 2500 micro-dollars.
    r = completion(stack, "ep-completions", marker, usage="prompt=1000,completion=500")
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"
    assert r.headers.get("x-ratelimit-limit") == "1000"
    wait_charged(stack, "ep-completions", {"gpt-3.5-turbo-instruct": 2500})


def test_streamed_completions_are_asked_for_usage_and_charged_from_it(stack, marker):
    r = completion(stack, "ep-completions-sse", marker, usage="prompt=2000,completion=1000", stream=True)
    assert r.status_code == 200, r.text
    assert r.text.rstrip().endswith("data: [DONE]"), r.text[-200:]
    sent = stack.upstream_requests(marker)[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}, "tollgate asks the stream to report usage"
    # 2000 x 1.5 + 1000 x 2 = 5000 micro-dollars: the reported usage, not an estimate.
    wait_charged(stack, "ep-completions-sse", {"gpt-3.5-turbo-instruct": 5000})


def test_embeddings_are_charged_for_their_input_tokens(stack, marker):
    # text-embedding-3-small at $0.02 per million input tokens: 1M tokens = $0.02.
    r = embedding(stack, "ep-embeddings", marker, usage="prompt=1000000")
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
    usage = wait_charged(stack, "ep-embeddings", {"text-embedding-3-small": 20_000})
    assert usage["tokens_today"]["used"] == 1_000_000, usage


def test_dall_e_images_are_charged_per_image_returned_at_their_quality_and_size(stack, marker):
    r = image(stack, "ep-dalle", marker, n=2, quality="hd", size="1792x1024")
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
    # DALL-E 3 hd 1792x1024: $0.12 an image.
    usage = wait_charged(stack, "ep-dalle", {"dall-e-3": 240_000})
    assert usage["tokens_today"]["used"] == 0, "images are not tokens"

    # Asked for three, got one: what the provider returned is what it bills.
    r = image(stack, "ep-dalle-short", marker, n=3, headers={"x-fake-images": "1"})
    assert r.status_code == 200, r.text
    # Quality and size left to the provider: DALL-E 3's standard 1024x1024, $0.04.
    wait_charged(stack, "ep-dalle-short", {"dall-e-3": 40_000})


def test_gpt_image_is_charged_from_the_tokens_it_reports(stack, marker):
    # gpt-image-1: $5 per million text tokens in, $40 per million image tokens out:
    # 100 x 5 + 4160 x 40 = 166900 micro-dollars, not the per-image price on top.
    r = image(stack, "ep-gpt-image", marker, model="gpt-image-1", quality="high", size="1024x1024",
              usage="prompt=100,completion=4160")
    assert r.status_code == 200, r.text
    usage = wait_charged(stack, "ep-gpt-image", {"gpt-image-1": 166_900})
    assert usage["tokens_today"]["used"] == 4260, usage


def test_speech_is_charged_per_character_and_token_billed_speech_is_refused(stack, marker):
    text = "Hello there, how are you today?"  # 31 characters
    r = speech(stack, "ep-speech", text, marker)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg" and r.content.startswith(b"ID3")
    # tts-1: $15 per million characters.
    wait_charged(stack, "ep-speech", {"tts-1": 31 * 15})
    # gpt-4o-mini-tts bills audio tokens its response does not report: no price, refused.
    upstream = len(stack.upstream_requests(marker))
    r = speech(stack, "ep-speech", text, marker, model="gpt-4o-mini-tts")
    body = check_not_rate_limited_error(r, 400, OPENAI)
    assert body["error"]["code"] == "unknown_model", body
    assert len(stack.upstream_requests(marker)) == upstream


def test_allow_lists_and_missing_image_prices_apply_to_the_new_endpoints(stack, marker):
    r = embedding(stack, "ep-allow", marker)
    body = check_not_rate_limited_error(r, 403, OPENAI)
    assert body["error"]["code"] == "model_not_allowed", body
    r = image(stack, "ep-free", marker, quality="hd", size="256x256")
    body = check_not_rate_limited_error(r, 400, OPENAI)
    assert "quality hd and size 256x256" in body["reason"], body
    r = image(stack, "ep-free", marker, n="2")
    check_not_rate_limited_error(r, 400, OPENAI)
    assert stack.upstream_requests(marker) == []


# --------------------------------------------------------------------------- free endpoints


FREE = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/gpt-4o", None),
    ("POST", "/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/responses/input_tokens", {"model": "gpt-4o", "input": "hi"}),
    ("GET", "/v1/responses/resp_123", None),
    ("GET", "/v1/files", None),
    ("GET", "/v1/files/file-abc/content", None),
    ("GET", "/v1/batches/batch_abc", None),
    ("GET", "/v1/messages/batches/msgbatch_abc/results", None),
]


def test_free_endpoints_pass_on_identity_and_cost_nothing(stack, marker):
    tok = stack.token("ep-free")
    for method, path, body in FREE:
        r = stack.request(method, path, token=tok, marker=marker, json=body)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        assert r.headers.get("x-ratelimit-limit") == "1000", f"{method} {path}: {dict(r.headers)}"
    assert [(u["method"], u["path"]) for u in stack.upstream_requests(marker)] == [(m, p) for m, p, _ in FREE]
    # An upload, free because this operator listed it in endpoints.free.
    r = stack.request("POST", "/v1/files", token=tok, marker=marker,
                      files={"file": ("batch.jsonl", b"{}\n")}, data={"purpose": "batch"})
    assert r.status_code == 200 and r.json()["object"] == "file", r.text
    assert stack.upstream_requests(marker)[-1]["path"] == "/v1/files"
    assert stack.usage("ep-free")["spend_this_month"]["usd"] == 0
    # Identity is still required.
    r = stack.request("GET", "/v1/models", token=None, marker=marker)
    check_not_rate_limited_error(r, 401, OPENAI)


def test_free_endpoints_count_against_rpm(stack, marker):
    tok = stack.token("ep-free-rpm")  # rpm 3
    avoid_minute_boundary()
    statuses = [stack.request("GET", "/v1/models", token=tok, marker=marker).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429], statuses


# --------------------------------------------------------------------------- refused


def test_unknown_endpoints_are_refused_before_the_upstream(stack, marker):
    tok = stack.token("ep-refused")
    cases = [
        ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "gpt-4o-mini", "training_file": "file-abc"}}),
        ("POST", "/v1/images/edits", {"files": {"image": ("a.png", b"\x89PNG")}, "data": {"prompt": "x"}}),
        ("POST", "/v1/uploads", {"json": {"filename": "a", "purpose": "batch", "bytes": 1}}),
        ("DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc", {}),
        ("POST", "/v1/realtime/sessions", {"json": {"model": "gpt-4o-realtime-preview"}}),
        ("POST", "/v1/embeddings%2F..%2Fmodels", {"json": {"model": "text-embedding-3-small", "input": "x"}}),
    ]
    for method, path, kw in cases:
        r = stack.request(method, path, token=tok, marker=marker, **kw)
        body = check_not_rate_limited_error(r, 404, OPENAI)
        assert body["error"]["code"] == "endpoint_not_supported", body
        assert body["error"]["type"] == "invalid_request_error", body
        assert r.headers.get("x-should-retry") == "false", dict(r.headers)
        assert "endpoints.free" in body["reason"], body
    reason = stack.request("POST", "/v1/fine_tuning/jobs", token=tok, json={}).json()["reason"]
    assert reason.startswith("POST /v1/fine_tuning/jobs is not an endpoint tollgate meters"), reason
    assert stack.upstream_requests(marker) == [], "a refused endpoint reached the upstream"
    assert stack.metric("tollgate_requests_total", decision="rejected", reason="endpoint_not_supported") >= len(cases)


def test_batches_and_transcriptions_are_refused_saying_why(stack, marker):
    tok = stack.token("ep-refused")
    r = stack.request("POST", "/v1/batches", token=tok, marker=marker,
                      json={"input_file_id": "file-abc", "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    body = check_not_rate_limited_error(r, 404, OPENAI)
    assert "cost is known only when the batch finishes" in body["reason"], body
    requests = [{"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 10,
                                              "messages": [{"role": "user", "content": "hi"}]}}]
    r = stack.request("POST", "/v1/messages/batches", token=tok, marker=marker, json={"requests": requests},
                      headers={"anthropic-version": "2023-06-01"})
    body = check_error_body(r, 404, ANTHROPIC)
    assert "tollgate has no setting to admit batches" in body["reason"], body
    r = stack.request("POST", "/v1/audio/transcriptions", token=tok, marker=marker,
                      files={"file": ("a.mp3", b"ID3")}, data={"model": "whisper-1"})
    body = check_not_rate_limited_error(r, 404, OPENAI)
    assert "billed by the length of the audio" in body["reason"], body
    assert stack.upstream_requests(marker) == []


def test_the_official_sdk_raises_its_own_errors(stack, marker):
    client = stack.openai(stack.token("ep-sdk"), marker)
    e = client.embeddings.create(model="text-embedding-3-large", input="hello",
                                 extra_headers={"x-fake-usage": "prompt=100000"})
    assert e.usage.prompt_tokens == 100_000
    # $0.13 per million: 13000 micro-dollars.
    wait_charged(stack, "ep-sdk", {"text-embedding-3-large": 13_000})
    with pytest.raises(openai.NotFoundError) as refused:
        client.batches.create(input_file_id="file-abc", endpoint="/v1/chat/completions", completion_window="24h")
    assert "batch jobs are refused" in str(refused.value)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-abc")
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


# --------------------------------------------------------------------------- prices are data


def test_admin_prices_take_image_and_character_prices(stack, marker):
    api = stack.admin_api()
    price = {"input": 0.0, "output": 0.0, "images": {"standard/512x512": 0.5, "hd/512x512": 0.75},
             "default_image": "standard/512x512"}
    r = api.put("/admin/prices/house-painter", price)
    assert r.status_code == 200, r.text
    listed = api.prices()["house-painter"]
    assert listed["images"] == {"standard/512x512": 0.5, "hd/512x512": 0.75}, listed
    assert listed["default_image"] == "standard/512x512" and listed["source"] == "admin", listed
    r = image(stack, "ep-admin-price", marker, model="house-painter", n=2)
    assert r.status_code == 200, r.text
    wait_charged(stack, "ep-admin-price", {"house-painter": 1_000_000})
    # Malformed prices name their field; a token-only price (the earlier shape) still works.
    r = api.put("/admin/prices/house-painter", {"input": 0.0, "output": 0.0, "images": {"512": 0.5}})
    assert r.status_code == 400 and r.json()["field"] == "images", r.text
    r = api.put("/admin/prices/house-reader", {"input": 1.0, "output": 2.0, "characters": -1})
    assert r.status_code == 400 and r.json()["field"] == "characters", r.text
    assert api.put("/admin/prices/house-reader", {"input": 1.0, "output": 2.0}).status_code == 200
    assert "images" not in api.prices()["house-reader"]
