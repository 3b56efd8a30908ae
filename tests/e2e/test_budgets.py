"""Monthly USD budgets through Envoy + tollgate: spend is priced from the provider's actual usage
(JSON and SSE, cache tokens at cache prices, rounded up per request) and debited per team and per
model; an exhausted budget is a 429 that SDKs must not retry (`on_breach = "warn"` lets it pass
with a warning), thresholds warn once, model caps and allow-lists act per (normalised) model, and
unpriced models are refused or charged a default price."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest

from checks import ANTHROPIC, OPENAI, check_budget_rejection, check_not_rate_limited_error, utc_month
from admin import micros
from processes import wait_until
from tollgate_config import Team
from wire import sse_events

MSG = [{"role": "user", "content": "Say hello"}]
ZERO = "prompt=0,completion=0"
WARN = "x-tollgate-budget-warning"
REJECTED = "tollgate_requests_total"
CROSSINGS = "tollgate_budget_threshold_crossings_total"
SPEND = "tollgate_spend_micros_total"

# $0.001 a token in and out, so N tokens cost $N/1000; cache read $0.0001, cache write $0.00125.
FLAT = "flat-model"
PRICING = {"models": {FLAT: {"input": 1000.0, "output": 1000.0, "cache_read": 100.0, "cache_write": 1250.0}}}
BUDGETS = {"warn_at_percent": [50, 80]}
POLICY = {"team_cache_ttl_seconds": 1}


def _team(team_id: str, **kw) -> Team:
    return Team(team_id, rpm=1000, daily_tokens=100_000_000, **kw)


TEAMS = [
    _team("bud-json", monthly_budget_usd=1.0),
    _team("bud-sse-chat", monthly_budget_usd=1.0),
    _team("bud-sse-responses", monthly_budget_usd=1.0),
    _team("bud-sse-messages", monthly_budget_usd=1.0),
    _team("bud-warn", monthly_budget_usd=0.10, on_breach="warn"),
    _team("bud-thresh", monthly_budget_usd=1.0),
    _team("bud-cap", monthly_budget_usd=100.0, model_caps={"gpt-4o": 0.05}),
    _team("bud-cap-sonnet", monthly_budget_usd=100.0, model_caps={"claude-sonnet-4-5": 0.03}),
    _team("bud-allow", allowed_models=["gpt-4o-mini", "claude-haiku-4-5"]),
    _team("bud-unknown"),
    _team("bud-cache-an"),
    _team("bud-cache-oa"),
    _team("bud-cache-flat"),
    _team("bud-ceil"),
    _team("bud-sdk", monthly_budget_usd=0.01),
    _team("bud-burst", monthly_budget_usd=0.10),
    _team("bud-upstream-err", monthly_budget_usd=1.0),
    Team("bud-both", rpm=1000, daily_tokens=1000, monthly_budget_usd=1.0),
]


@pytest.fixture(scope="module")
def stack(stack_factory):
    # pricing.unknown_model is left at its default ("reject").
    return stack_factory("budgets", TEAMS, pricing=PRICING, budgets=BUDGETS, policy=POLICY)


# --------------------------------------------------------------------------- helpers


def send(stack, token, kind: str, *, model: str = FLAT, stream: bool = False, usage: str = ZERO, marker=None,
         headers: dict | None = None):
    """One model call of `kind` (chat | responses | messages)."""
    if kind == "chat":
        return stack.chat(token, model=model, stream=stream, usage=usage, marker=marker, headers=headers)
    if kind == "responses":
        body = {"model": model, "input": "Say hello"}
        if stream:
            body["stream"] = True
        return stack.post("/v1/responses", token=token, json_body=body, usage=usage, marker=marker, headers=headers)
    if kind == "messages":
        extra = {"stream": True} if stream else {}
        return stack.messages(token, model=model, usage=usage, marker=marker, headers=headers, **extra)
    raise ValueError(kind)


def flavour(kind: str) -> str:
    return ANTHROPIC if kind == "messages" else OPENAI


def wait_refused(stack, token, kind: str = "chat", *, model: str = FLAT, marker=None, timeout: float = 8.0):
    """Send zero-usage calls until one is refused (debits land after the response); return it."""
    deadline = time.time() + timeout
    while True:
        r = send(stack, token, kind, model=model, marker=marker)
        if r.status_code != 200:
            return r
        if time.time() > deadline:
            raise AssertionError(f"still admitted after {timeout}s: {r.status_code} {dict(r.headers)}")
        time.sleep(0.1)


def wait_warning(stack, token, expected_re: str, *, marker=None, timeout: float = 8.0):
    """Send zero-usage calls until one is admitted with a warning header matching `expected_re`."""
    deadline = time.time() + timeout
    seen = []
    while True:
        r = send(stack, token, "chat", marker=marker)
        assert r.status_code == 200, f"{r.status_code} {r.text}"
        value = r.headers.get(WARN)
        seen.append(value)
        if value is not None and re.fullmatch(expected_re, value):
            return r
        if time.time() > deadline:
            raise AssertionError(f"{WARN} never matched {expected_re!r} within {timeout}s; seen {seen[:2]}...{seen[-3:]}")
        time.sleep(0.1)


def rejected(stack, reason: str) -> float:
    return stack.metric(REJECTED, decision="rejected", reason=reason)


def stream_complete(kind: str, r) -> None:
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    events = sse_events(r.text)
    assert events, r.text[:300]
    last_event, last_data = events[-1]
    if kind == "chat":
        assert last_data == "[DONE]", r.text[-300:]
    elif kind == "responses":
        assert last_event == "response.completed", r.text[-300:]
    else:
        assert last_event == "message_stop", r.text[-300:]


# --------------------------------------------------------------------------- exhaustion


def test_budget_exhausted_by_json_usage(stack, marker):
    team = "bud-json"  # $1.00
    tok = stack.token(team)
    refused_before = rejected(stack, "monthly_budget_exceeded")

    r = send(stack, tok, "chat", usage="prompt=500,completion=520", marker=marker)  # $1.02
    assert r.status_code == 200, r.text
    assert WARN not in r.headers, "nothing was spent before this request"
    r = wait_refused(stack, tok, marker=marker)
    body, _ = check_budget_rejection(
        r, flavour=OPENAI, code="monthly_budget_exceeded", reason_re=r"Monthly budget exceeded \(\$1\.02/\$1\.00\)"
    )
    assert body["error"]["message"] == body["reason"]
    upstream = len(stack.upstream_requests(marker))

    # The budget is the team's: every API, streamed or not, any model.
    r = send(stack, tok, "messages", marker=marker)
    body, _ = check_budget_rejection(
        r, flavour=ANTHROPIC, code="monthly_budget_exceeded", reason_re=r"Monthly budget exceeded \(\$1\.02/\$1\.00\)"
    )
    assert body["error"] == {"type": "rate_limit_error", "message": body["reason"]}, body
    for kind, model, stream in (("responses", FLAT, False), ("chat", FLAT, True), ("chat", "gpt-4o-mini", False)):
        r = send(stack, tok, kind, model=model, stream=stream, marker=marker)
        check_budget_rejection(
            r, flavour=OPENAI, code="monthly_budget_exceeded",
            reason_re=r"Monthly budget exceeded \(\$1\.02/\$1\.00\)",
        )
    assert len(stack.upstream_requests(marker)) == upstream, "a refused request reached the upstream"
    assert rejected(stack, "monthly_budget_exceeded") - refused_before == 5

    usage = stack.usage(team)
    month = usage["spend_this_month"]
    assert month["month"] == utc_month()
    assert micros(month["usd"]) == 1_020_000 and month["budget_usd"] == 1.0, usage
    assert {k: micros(v) for k, v in month["by_model"].items()} == {FLAT: 1_020_000}, usage
    assert stack.metric(SPEND, team=team) == 1_020_000


@pytest.mark.parametrize("kind", ["chat", "responses", "messages"])
def test_budget_exhausted_by_streamed_usage(stack, marker, kind):
    """The SSE usage (OpenAI's final chunk, which tollgate asks for; Responses' response.completed;
    Anthropic's message_start + message_delta) is what is charged: exactly the budget, which is
    enough to refuse (spend >= budget)."""
    team = f"bud-sse-{kind}"  # $1.00
    tok = stack.token(team)
    r = send(stack, tok, kind, stream=True, usage="prompt=600,completion=400", marker=marker)  # $1.00
    stream_complete(kind, r)
    r = wait_refused(stack, tok, kind, marker=marker)
    check_budget_rejection(
        r, flavour=flavour(kind), code="monthly_budget_exceeded",
        reason_re=r"Monthly budget exceeded \(\$1\.00/\$1\.00\)",
    )
    # Streamed requests are refused before anything is streamed: a JSON 429.
    upstream = len(stack.upstream_requests(marker))
    r = send(stack, tok, kind, stream=True, marker=marker)
    check_budget_rejection(
        r, flavour=flavour(kind), code="monthly_budget_exceeded",
        reason_re=r"Monthly budget exceeded \(\$1\.00/\$1\.00\)",
    )
    assert len(stack.upstream_requests(marker)) == upstream
    assert micros(stack.usage(team)["spend_this_month"]["usd"]) == 1_000_000


def test_on_breach_warn_lets_requests_through_with_the_warning(stack, marker):
    team = "bud-warn"  # $0.10, warn
    tok = stack.token(team)
    refused_before = rejected(stack, "monthly_budget_exceeded")
    assert send(stack, tok, "chat", usage="prompt=100,completion=50", marker=marker).status_code == 200  # $0.15
    # The wording past 100 % is tollgate's choice; the amounts are not.
    wait_warning(stack, tok, r".*\(\$0\.15/\$0\.10\)", marker=marker)
    # Still spending, still admitted, still warned.
    sent_before = len(stack.upstream_requests(marker))
    for kind in ("chat", "responses", "messages"):
        r = send(stack, tok, kind, usage="prompt=5,completion=5", marker=marker)
        assert r.status_code == 200, f"{kind}: {r.status_code} {r.text}"
        assert WARN in r.headers, f"{kind}: {dict(r.headers)}"
        assert "x-should-retry" not in r.headers
    assert len(stack.upstream_requests(marker)) == sent_before + 3
    stack.wait_spend(team, 0.18)
    assert rejected(stack, "monthly_budget_exceeded") == refused_before


def test_a_team_over_its_daily_tokens_and_its_budget_is_told_about_the_budget(stack, marker):
    """Both limits refuse; the one that lasts longest is named, with its month-long retry (told
    "daily tokens, retry at midnight", the team would retry and be refused again for a month)."""
    team = "bud-both"  # 1000 tokens a day, $1.00 a month
    tok = stack.token(team)
    r = send(stack, tok, "chat", usage="prompt=600,completion=520", marker=marker)  # 1120 tokens, $1.12
    assert r.status_code == 200, r.text
    r = wait_refused(stack, tok, marker=marker)
    body, _ = check_budget_rejection(
        r, flavour=OPENAI, code="monthly_budget_exceeded", reason_re=r"Monthly budget exceeded \(\$1\.12/\$1\.00\)"
    )
    # The daily tokens are spent as well (the headers say so); the budget is what was named.
    assert r.headers["x-ratelimit-remaining-tokens"] == "0", dict(r.headers)
    r = send(stack, tok, "messages", marker=marker)
    check_budget_rejection(
        r, flavour=ANTHROPIC, code="monthly_budget_exceeded", reason_re=r"Monthly budget exceeded \(\$1\.12/\$1\.00\)"
    )
    assert len(stack.upstream_requests(marker)) == 1


def _log_lines(stack) -> list[str]:
    lines = []
    for path in (stack.tollgate.stdout_path, stack.tollgate.stderr_path):
        try:
            lines += path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            pass
    return lines


def test_warning_thresholds_header_and_crossings_counted_once(stack, marker):
    team = "bud-thresh"  # $1.00, thresholds 50 % and 80 %
    tok = stack.token(team)
    c50, c80 = stack.metric(CROSSINGS, threshold="50"), stack.metric(CROSSINGS, threshold="80")

    assert send(stack, tok, "chat", usage="prompt=200,completion=200", marker=marker).status_code == 200  # $0.40
    stack.wait_spend(team, 0.40)
    r = send(stack, tok, "chat", marker=marker)
    assert r.status_code == 200 and WARN not in r.headers, f"no threshold reached at 40 %: {dict(r.headers)}"

    assert send(stack, tok, "chat", usage="prompt=100,completion=50", marker=marker).status_code == 200  # $0.55
    wait_warning(stack, tok, r"50% of the monthly budget used \(\$0\.55/\$1\.00\)", marker=marker)
    wait_until(lambda: stack.metric(CROSSINGS, threshold="50") - c50 == 1, 5, what="the 50 % crossing counted")
    # More requests past the threshold: warned every time, counted once.
    for _ in range(3):
        r = send(stack, tok, "chat", usage="prompt=5,completion=5", marker=marker)  # +$0.01 each
        assert r.status_code == 200 and r.headers.get(WARN, "").startswith("50% of the monthly budget used"), (
            dict(r.headers)
        )
    wait_warning(stack, tok, r"50% of the monthly budget used \(\$0\.58/\$1\.00\)", marker=marker)
    assert stack.metric(CROSSINGS, threshold="50") - c50 == 1
    assert stack.metric(CROSSINGS, threshold="80") - c80 == 0

    assert send(stack, tok, "chat", usage="prompt=200,completion=70", marker=marker).status_code == 200  # $0.85
    wait_warning(stack, tok, r"80% of the monthly budget used \(\$0\.85/\$1\.00\)", marker=marker)
    wait_until(lambda: stack.metric(CROSSINGS, threshold="80") - c80 == 1, 5, what="the 80 % crossing counted")
    for _ in range(3):
        r = send(stack, tok, "messages", usage="prompt=5,completion=5", marker=marker)
        assert r.status_code == 200 and r.headers.get(WARN, "").startswith("80% of the monthly budget used"), (
            dict(r.headers)
        )
    wait_warning(stack, tok, r"80% of the monthly budget used \(\$0\.88/\$1\.00\)", marker=marker)
    time.sleep(0.3)
    assert stack.metric(CROSSINGS, threshold="50") - c50 == 1
    assert stack.metric(CROSSINGS, threshold="80") - c80 == 1
    # One structured log line per crossing.
    lines = [line for line in _log_lines(stack) if team in line and "threshold" in line.lower()]
    assert len(lines) == 2, "expected one log line per threshold crossing:\n" + "\n".join(lines[-10:])


def test_failed_upstream_calls_are_not_charged(stack, marker):
    team = "bud-upstream-err"
    tok = stack.token(team)
    fail = {"x-fake-status": "500"}
    for kind, stream in (("chat", False), ("chat", True), ("responses", False), ("messages", True)):
        r = send(stack, tok, kind, stream=stream, usage="prompt=500,completion=500", headers=fail, marker=marker)
        assert r.status_code == 500, f"{kind}: {r.status_code} {r.text}"
    # Debits are applied in order: once this one is in, the failed calls would have been too.
    assert send(stack, tok, "chat", usage="prompt=10,completion=0", marker=marker).status_code == 200
    stack.wait_spend(team, 0.01)
    time.sleep(0.3)
    assert micros(stack.usage(team)["spend_this_month"]["usd"]) == 10_000


def test_spend_and_reported_crossings_survive_a_restart(stack_factory, marker):
    s = stack_factory("budgets-restart", [_team("rst", monthly_budget_usd=1.0)], pricing=PRICING, policy=POLICY)
    try:
        tok = s.token("rst")
        assert send(s, tok, "chat", usage="prompt=400,completion=450", marker=marker).status_code == 200  # $0.85
        wait_warning(s, tok, r"80% of the monthly budget used \(\$0\.85/\$1\.00\)", marker=marker)
        wait_until(lambda: s.metric(CROSSINGS, threshold="80") == 1, 5, what="the 80 % crossing counted")

        s.tollgate.stop()
        s.start_tollgate()
        assert micros(s.usage("rst")["spend_this_month"]["usd"]) == 850_000
        deadline = time.time() + 10
        while True:  # Envoy may need a moment to reconnect to the restarted tollgate
            r = send(s, tok, "chat", marker=marker)
            if r.status_code == 200 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.headers.get(WARN) == "80% of the monthly budget used ($0.85/$1.00)", dict(r.headers)
        time.sleep(0.3)
        assert s.metric(CROSSINGS, threshold="80") == 0, "a crossing already reported this month was reported again"

        assert send(s, tok, "chat", usage="prompt=100,completion=100", marker=marker).status_code == 200  # $1.05
        r = wait_refused(s, tok, marker=marker)
        check_budget_rejection(r, flavour=OPENAI, code="monthly_budget_exceeded",
                               reason_re=r"Monthly budget exceeded \(\$1\.05/\$1\.00\)")
    finally:
        s.stop()


# --------------------------------------------------------------------------- per-model caps and allow-lists


def test_model_cap_refuses_that_model_only(stack, marker):
    team = "bud-cap"  # gpt-4o capped at $0.05 a month
    tok = stack.token(team)
    refused_before = rejected(stack, "model_budget_exceeded")
    # gpt-4o is $2.50 / $10.00 per million: $0.03 through its dated name, then $0.02.
    r = send(stack, tok, "chat", model="gpt-4o-2024-08-06", usage="prompt=6000,completion=1500", marker=marker)
    assert r.status_code == 200, r.text
    r = send(stack, tok, "chat", model="gpt-4o", usage="prompt=4000,completion=1000", marker=marker)
    assert r.status_code == 200, r.text
    usage = stack.wait_spend(team, 0.05)
    assert {k: micros(v) for k, v in usage["spend_this_month"]["by_model"].items()} == {"gpt-4o": 50_000}, usage

    r = send(stack, tok, "chat", model="gpt-4o", marker=marker)
    body, _ = check_budget_rejection(
        r, flavour=OPENAI, code="model_budget_exceeded",
        reason_re=r"Monthly budget for model gpt-4o exceeded \(\$0\.05/\$0\.05\)",
    )
    # Its dated alias and other spellings are the same model; every API.
    for kind, model in (("chat", "gpt-4o-2024-08-06"), ("chat", "GPT-4o"), ("responses", "gpt-4o")):
        r = send(stack, tok, kind, model=model, marker=marker)
        check_budget_rejection(
            r, flavour=OPENAI, code="model_budget_exceeded",
            reason_re=r"Monthly budget for model (gpt-4o|gpt-4o-2024-08-06|GPT-4o) exceeded \(\$0\.05/\$0\.05\)",
        )
    # Other models still pass.
    assert send(stack, tok, "chat", model="gpt-4o-mini", marker=marker).status_code == 200
    assert send(stack, tok, "messages", model="claude-haiku-4-5", marker=marker).status_code == 200
    models = [u["body"]["model"] for u in stack.upstream_requests(marker)]
    assert models == ["gpt-4o-2024-08-06", "gpt-4o", "gpt-4o-mini", "claude-haiku-4-5"], models
    assert rejected(stack, "model_budget_exceeded") - refused_before == 4


def test_model_cap_applies_to_provider_model_ids(stack, marker):
    team = "bud-cap-sonnet"  # claude-sonnet-4-5 capped at $0.03
    tok = stack.token(team)
    # $3 / $15 per million: 5000 in + 1000 out = $0.03, through a Bedrock model id.
    r = send(stack, tok, "messages", model="anthropic.claude-sonnet-4-5-20250929-v1:0",
             usage="prompt=5000,completion=1000", marker=marker)
    assert r.status_code == 200, r.text
    usage = stack.wait_spend(team, 0.03)
    assert {k: micros(v) for k, v in usage["spend_this_month"]["by_model"].items()} == {"claude-sonnet-4-5": 30_000}
    for model in ("claude-sonnet-4-5", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929",
                  "Claude-Sonnet-4-5"):
        r = send(stack, tok, "messages", model=model, marker=marker)
        body, _ = check_budget_rejection(
            r, flavour=ANTHROPIC, code="model_budget_exceeded",
            reason_re=r"Monthly budget for model \S+ exceeded \(\$0\.03/\$0\.03\)",
        )
        assert "claude-sonnet-4-5" in body["reason"].lower(), body
    assert send(stack, tok, "messages", model="claude-haiku-4-5", marker=marker).status_code == 200
    assert len(stack.upstream_requests(marker)) == 2


def test_allow_list(stack, marker):
    team = "bud-allow"  # gpt-4o-mini and claude-haiku-4-5 only
    tok = stack.token(team)
    refused_before = rejected(stack, "model_not_allowed")
    for kind, model in (("chat", "gpt-4o-mini-2024-07-18"), ("chat", "GPT-4o-mini"),
                        ("messages", "claude-haiku-4-5-20251001"), ("responses", "gpt-4o-mini")):
        r = send(stack, tok, kind, model=model, marker=marker)
        assert r.status_code == 200, f"{model} is allowed: {r.status_code} {r.text}"
    allowed = len(stack.upstream_requests(marker))
    assert allowed == 4

    for kind, model, stream in (("chat", "gpt-4o", False), ("chat", "gpt-4o", True), ("responses", "gpt-4o", False),
                                ("messages", "claude-opus-4-5", True)):
        r = send(stack, tok, kind, model=model, stream=stream, marker=marker)
        body = check_not_rate_limited_error(r, 403, flavour(kind))
        assert body["reason"] == f'model "{model}" is not allowed for team "{team}"', body
        if kind != "messages":
            assert body["error"]["code"] == "model_not_allowed", body
    with pytest.raises(openai.PermissionDeniedError) as e:
        stack.openai(tok, marker).chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.code == "model_not_allowed"
    with pytest.raises(anthropic.PermissionDeniedError):
        stack.anthropic(tok, marker).messages.create(model="claude-opus-4-5", max_tokens=8, messages=MSG)
    assert len(stack.upstream_requests(marker)) == allowed, "a refused model reached the upstream"
    assert rejected(stack, "model_not_allowed") - refused_before == 6


# --------------------------------------------------------------------------- pricing


def test_unknown_model_is_refused_by_default(stack, marker):
    tok = stack.token("bud-unknown")
    refused_before = rejected(stack, "unknown_model")
    for kind in ("chat", "responses", "messages"):
        r = send(stack, tok, kind, model="no-such-model", marker=marker)
        body = check_not_rate_limited_error(r, 400, flavour(kind))
        assert "no-such-model" in body["reason"], body
        if kind != "messages":
            assert body["error"]["code"] == "unknown_model", body
    with pytest.raises(openai.BadRequestError) as e:
        stack.openai(tok, marker).chat.completions.create(model="no-such-model", messages=MSG)
    assert e.value.code == "unknown_model"
    assert stack.upstream_requests(marker) == []
    assert rejected(stack, "unknown_model") - refused_before == 4
    # Known models pass for the same team.
    assert send(stack, tok, "chat", model="gpt-4o-mini", marker=marker).status_code == 200


def test_unknown_model_charged_at_default_price(stack_factory, marker):
    s = stack_factory(
        "budgets-default",
        [_team("dflt")],
        pricing={"unknown_model": "default", "default_price": {"input": 10.0, "output": 30.0}},
        policy=POLICY,
    )
    try:
        tok = s.token("dflt")
        r = send(s, tok, "chat", model="no-such-model", usage="prompt=1000,completion=1000", marker=marker)
        assert r.status_code == 200, r.text  # $0.01 + $0.03
        r = send(s, tok, "messages", model="other-unknown", usage="prompt=100,completion=100", marker=marker)
        assert r.status_code == 200, r.text  # $0.001 + $0.003
        # A priced model keeps its own price: gpt-4o-mini 1000 in + 1000 out = $0.00075.
        r = send(s, tok, "chat", model="gpt-4o-mini", usage="prompt=1000,completion=1000", marker=marker)
        assert r.status_code == 200, r.text
        usage = s.wait_spend("dflt", 0.04475)
        by_model = {k: micros(v) for k, v in usage["spend_this_month"]["by_model"].items()}
        assert by_model == {"no-such-model": 40_000, "other-unknown": 4_000, "gpt-4o-mini": 750}, usage
    finally:
        s.stop()


def test_anthropic_cache_tokens_at_cache_prices(stack, marker):
    team = "bud-cache-an"
    tok = stack.token(team)
    before = stack.metric(SPEND, team=team)
    # claude-haiku-4-5: in $1, out $5, cache read $0.10, cache write $1.25 per million:
    # 1000 + 5000 + 10000 * 0.1 + 2000 * 1.25 = 9500 micro-dollars, JSON and SSE alike.
    usage = "prompt=1000,completion=1000,cached=10000,cache_write=2000"
    assert send(stack, tok, "messages", model="claude-haiku-4-5", usage=usage, marker=marker).status_code == 200
    r = send(stack, tok, "messages", model="claude-haiku-4-5", stream=True, usage=usage, marker=marker)
    stream_complete("messages", r)
    got = stack.wait_spend(team, 0.019)
    assert {k: micros(v) for k, v in got["spend_this_month"]["by_model"].items()} == {"claude-haiku-4-5": 19_000}
    assert got["tokens_today"]["used"] == 2 * 14_000, got
    assert stack.metric(SPEND, team=team) - before == 19_000


def test_openai_cached_tokens_at_cache_read_price(stack, marker):
    team = "bud-cache-oa"
    tok = stack.token(team)
    # gpt-4o: 3000 prompt tokens of which 2000 cached: 1000 * 2.50 + 2000 * 1.25 + 100 * 10.00 = 6000 micro-dollars.
    usage = "prompt=1000,cached=2000,completion=100"
    assert send(stack, tok, "chat", model="gpt-4o", usage=usage, marker=marker).status_code == 200
    r = send(stack, tok, "responses", model="gpt-4o", stream=True, usage=usage, marker=marker)
    stream_complete("responses", r)
    got = stack.wait_spend(team, 0.012)
    assert {k: micros(v) for k, v in got["spend_this_month"]["by_model"].items()} == {"gpt-4o": 12_000}


def test_configured_cache_prices(stack, marker):
    team = "bud-cache-flat"
    tok = stack.token(team)
    # flat-model: in/out $1000, cache read $100, cache write $1250 per million.
    # Anthropic: 10 * 1000 + 10 * 1000 + 100 * 100 + 8 * 1250 = 40000 micro-dollars.
    r = send(stack, tok, "messages", usage="prompt=10,completion=10,cached=100,cache_write=8", marker=marker)
    assert r.status_code == 200, r.text
    # OpenAI (cached inside prompt_tokens = 110): 10 * 1000 + 100 * 100 + 10 * 1000 = 30000.
    r = send(stack, tok, "chat", usage="prompt=10,cached=100,completion=10", marker=marker)
    assert r.status_code == 200, r.text
    stack.wait_spend(team, 0.07)


def test_cost_is_rounded_up_per_request(stack, marker):
    team = "bud-ceil"
    tok = stack.token(team)
    # gpt-4o-mini $0.15 / $0.60 per million: 1 prompt token = 0.15 micro-dollars -> 1 each;
    # 3 in + 1 out = 1.05 -> 2.
    for _ in range(3):
        assert send(stack, tok, "chat", model="gpt-4o-mini", usage="prompt=1,completion=0", marker=marker).status_code == 200
    assert send(stack, tok, "chat", model="gpt-4o-mini", usage="prompt=3,completion=1", marker=marker).status_code == 200
    got = stack.wait_spend(team, 0.000005)
    assert stack.metric(SPEND, team=team) == 5, got


# --------------------------------------------------------------------------- reservations


def _burst(stack, token, n: int, marker) -> list:
    """n concurrent chat calls held 1.5 s upstream, each asking for at most 29 output tokens with a
    2-character prompt: a reservation estimate of 1 + 29 tokens = $0.03 of flat-model."""
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait(10)
        return stack.chat(token, model=FLAT, max_tokens=29, messages=[{"role": "user", "content": "hi"}],
                          usage="prompt=1,completion=1", marker=marker, headers={"x-fake-delay-ms": "1500"})

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def test_without_reservations_concurrent_requests_can_overshoot(stack, marker):
    team = "bud-burst"  # $0.10, reserve = false
    responses = _burst(stack, stack.token(team), 6, marker)
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses if r.status_code != 200]
    stack.wait_spend(team, 0.012)  # actual usage: 2 tokens each


def test_reservations_keep_concurrent_requests_within_the_budget(stack_factory, marker):
    s = stack_factory("budgets-reserve", [_team("rsv", monthly_budget_usd=0.10)], pricing=PRICING,
                      budgets={"reserve": True}, policy=POLICY)
    try:
        tok = s.token("rsv")
        responses = _burst(s, tok, 6, marker)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 3 + [429] * 3, statuses  # 3 x $0.03 reserved fit in $0.10, a 4th not
        for r in responses:
            if r.status_code == 429:
                check_budget_rejection(r, flavour=OPENAI, code="monthly_budget_exceeded",
                                       reason_re=r"Monthly budget exceeded \(\$0\.\d\d/\$0\.10\)")
        assert len(s.upstream_requests(marker)) == 3
        # Settled with the actual cost (2 tokens each), the reservations are released.
        s.wait_spend("rsv", 0.006)
        assert sorted(r.status_code for r in _burst(s, tok, 3, marker)) == [200] * 3
        s.wait_spend("rsv", 0.012)
    finally:
        s.stop()


# --------------------------------------------------------------------------- SDKs


@pytest.fixture(scope="module")
def sdk_team(stack):
    """bud-sdk with its $0.01 budget spent."""
    tok = stack.token("bud-sdk")
    assert send(stack, tok, "chat", usage="prompt=10,completion=0").status_code == 200
    wait_refused(stack, tok)
    return tok


def _oa_chat(c):
    return c.chat.completions.create(model=FLAT, messages=MSG)


def _oa_chat_stream(c):
    for _ in c.chat.completions.create(model=FLAT, messages=MSG, stream=True):
        pass


def _oa_responses(c):
    return c.responses.create(model=FLAT, input="Say hello")


def _an_messages(c):
    return c.messages.create(model=FLAT, max_tokens=8, messages=MSG)


def _an_stream(c):
    with c.messages.stream(model=FLAT, max_tokens=8, messages=MSG) as s:
        for _ in s.text_stream:
            pass


SDK_CALLS = {
    "openai-chat": ("openai", _oa_chat),
    "openai-chat-stream": ("openai", _oa_chat_stream),
    "openai-responses": ("openai", _oa_responses),
    "anthropic-messages": ("anthropic", _an_messages),
    "anthropic-stream": ("anthropic", _an_stream),
}


@pytest.mark.parametrize("call", list(SDK_CALLS))
def test_sdk_gets_rate_limit_error_without_retrying(stack, sdk_team, marker, call):
    sdk, fn = SDK_CALLS[call]
    if sdk == "openai":
        client, error = stack.openai(sdk_team, marker, max_retries=2), openai.RateLimitError
    else:
        client, error = stack.anthropic(sdk_team, marker, max_retries=2), anthropic.RateLimitError
    before = rejected(stack, "monthly_budget_exceeded")
    with pytest.raises(error) as e:
        fn(client)
    assert "Monthly budget exceeded ($0.01/$0.01)" in str(e.value)
    assert e.value.response.headers.get("x-should-retry") == "false"
    if sdk == "openai":
        assert e.value.code == "monthly_budget_exceeded"
    # The SDK raises only after its last attempt, and tollgate counts a refusal before it answers:
    # every attempt is already counted here. Counting attempts, not seconds, holds on a busy machine.
    attempts = rejected(stack, "monthly_budget_exceeded") - before
    assert attempts == 1, f"the SDK sent {attempts:g} attempts (max_retries=2): it retried a budget refusal"
    assert stack.upstream_requests(marker) == []
