"""The admin API on tollgate's HTTP port and the `tollgate admin` CLI: admin-scope tokens only,
team CRUD with validation, budgets, usage and prices; every change applies to the very next
request through Envoy."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from checks import ANTHROPIC, OPENAI, check_budget_rejection, utc_month
from admin import micros, run_admin_cli
from processes import avoid_minute_boundary
from tokens import ADMIN_SCOPE, INVOKE_SCOPE, admin_token, mint_token, other_private_key
from tollgate_config import Team

WARN = "x-tollgate-budget-warning"
ZERO = "prompt=0,completion=0"
# A long cache TTL: changes seen on the next request can only come from the admin write
# invalidating this instance's caches, not from the cache expiring.
POLICY = {"team_cache_ttl_seconds": 300}
PRICING = {"models": {"cfg-model": {"input": 5.0, "output": 7.0}}}

TEAMS = [
    Team("adm-static", rpm=100, daily_tokens=500_000, monthly_budget_usd=100.0),
    Team("adm-usage", rpm=100, daily_tokens=500_000, monthly_budget_usd=100.0),
    Team("adm-lower", rpm=1000, daily_tokens=10_000_000, monthly_budget_usd=100.0),
    Team("adm-warn80", rpm=1000, daily_tokens=10_000_000, monthly_budget_usd=0.10),
    Team("adm-price", rpm=1000, daily_tokens=10_000_000, monthly_budget_usd=100.0),
]

# Shipped prices (USD per million tokens) and the one from this stack's config.
PRICES = {
    "gpt-4o": {"input": 2.5, "output": 10.0, "cache_read": 1.25, "cache_write": 2.5, "source": "builtin"},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6, "cache_read": 0.075, "cache_write": 0.15, "source": "builtin"},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25, "source": "builtin"},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75, "source": "builtin",
                          # Anthropic bills a prompt above 200k tokens at these rates, every token of it.
                          "long_context": {"above_prompt_tokens": 200000, "input": 6.0, "output": 22.5,
                                           "cache_read": 0.6, "cache_write": 7.5}},
    "cfg-model": {"input": 5.0, "output": 7.0, "cache_read": 5.0, "cache_write": 5.0, "source": "config"},
}


@pytest.fixture(scope="module")
def stack(stack_factory):
    # No [budgets] section: the warning threshold is the default 80 %.
    return stack_factory("admin", TEAMS, pricing=PRICING, policy=POLICY)


@pytest.fixture
def api(stack):
    return stack.admin_api()


def _error(r, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if field is not None:
        assert body.get("field") == field, f"expected field {field!r}: {body}"
    return body


def _subset(team: dict, expected: dict) -> dict:
    """`team` restricted to the keys of `expected`; an allow-list is a set (tollgate may sort it)."""
    got = {k: team.get(k) for k in expected}
    if isinstance(got.get("allowed_models"), list) and isinstance(expected.get("allowed_models"), list):
        if sorted(got["allowed_models"]) == sorted(expected["allowed_models"]):
            got["allowed_models"] = expected["allowed_models"]
    return got


def _wait_warning(stack, token, expected_re: str, timeout: float = 8.0):
    deadline = time.time() + timeout
    seen = []
    while True:
        r = stack.chat(token, model="gpt-4o", usage=ZERO)
        assert r.status_code == 200, f"{r.status_code} {r.text}"
        seen.append(r.headers.get(WARN))
        if seen[-1] is not None and re.fullmatch(expected_re, seen[-1]):
            return r
        if time.time() > deadline:
            raise AssertionError(f"{WARN} never matched {expected_re!r}; seen {seen[:2]}...{seen[-3:]}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "kind,token",
    [
        ("missing", lambda: None),
        ("garbage", lambda: "not-a-jwt"),
        ("expired", lambda: admin_token(expires_in=-3600)),
        ("wrong-key", lambda: admin_token(key=other_private_key())),
        ("wrong-issuer", lambda: admin_token(issuer="https://evil.example/pool")),
    ],
)
def test_admin_api_requires_a_valid_token(stack, kind, token):
    api = stack.admin_api(token=token())
    # Writes aim at absent teams and models: without the check they would be 404s or leave traces.
    for method, path, body in (
        ("GET", "/admin/teams", None),
        ("GET", "/admin/teams/adm-static", None),
        ("POST", "/admin/teams", {"id": f"adm-401-{kind}", "tier": "standard", "client_ids": [f"c-401-{kind}"]}),
        ("PUT", f"/admin/teams/adm-401-{kind}", {"tier": "standard", "client_ids": [f"c-401-{kind}"]}),
        ("PUT", "/admin/teams/adm-absent/budget", {"monthly_budget_usd": 1.0}),
        ("DELETE", "/admin/teams/adm-absent", None),
        ("GET", "/admin/teams/adm-static/usage", None),
        ("GET", "/admin/prices", None),
        ("PUT", f"/admin/prices/adm-401-{kind}", {"input": 1.0, "output": 1.0}),
        ("DELETE", "/admin/prices/adm-absent", None),
    ):
        # A connection per request: keep-alive after a refusal is test_refusal_keeps_the_connection_usable's.
        r = api.request(method, path, body, headers={"connection": "close"})
        assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"
        _error(r, 401)
    # Nothing changed.
    assert stack.admin_api().get(f"/admin/teams/adm-401-{kind}").status_code == 404
    assert f"adm-401-{kind}" not in stack.admin_api().prices()


def test_admin_api_requires_the_admin_scope(stack):
    close = {"headers": {"connection": "close"}}
    for tok in (stack.token("adm-static"), mint_token("adm-static-agent", scope=None)):
        api = stack.admin_api(token=tok)
        _error(api.get("/admin/teams", **close), 403)
        _error(api.post("/admin/teams", {"id": "adm-403", "tier": "standard", "client_ids": ["c-403"]}, **close), 403)
        _error(api.put("/admin/teams/adm-absent/budget", {"monthly_budget_usd": 1.0}, **close), 403)
        _error(api.put("/admin/prices/adm-403-model", {"input": 1.0, "output": 1.0}, **close), 403)
        _error(api.get("/admin/teams/adm-static/usage", **close), 403)
    assert stack.admin_api().get("/admin/teams/adm-403").status_code == 404
    assert "adm-403-model" not in stack.admin_api().prices()
    # The admin scope among others will do.
    both = stack.admin_api(token=mint_token("ops-console", scope=f"{INVOKE_SCOPE} {ADMIN_SCOPE}"))
    assert both.get("/admin/teams").status_code == 200


def _read_response(f) -> tuple[int, dict, bytes]:
    status_line = f.readline()
    if not status_line:
        raise ConnectionError("EOF: the server closed the connection")
    status = int(status_line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", "0")))


@pytest.mark.parametrize("who,status", [("no-token", 401), ("invoke-token", 403), ("admin-token", 404)])
def test_refusal_keeps_the_connection_usable(stack, who, status):
    """Admin clients keep connections alive. A request refused before its body was read (the body
    arriving a moment after the headers, as it may from any client) must leave the connection
    usable for the next request, or the response must say `connection: close`; closing it
    silently breaks the client's next request."""
    token = {"no-token": None, "invoke-token": stack.token("adm-static"), "admin-token": admin_token()}[who]
    body = json.dumps({"monthly_budget_usd": 1.0}).encode()
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    head = (f"PUT /admin/teams/adm-absent/budget HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=5) as c, c.makefile("rb") as f:
        for i in range(3):
            try:
                c.sendall(head)
                time.sleep(0.05)
                c.sendall(body)
                got, headers, _ = _read_response(f)
            except OSError as e:
                pytest.fail(f"request {i + 1} on a kept-alive connection after a {status} failed: {e!r} "
                            "(the previous response did not say `connection: close`)")
            assert got == status, (i, got, headers)
            if headers.get("connection", "").lower() == "close":
                break


# --------------------------------------------------------------------------- teams


def test_config_teams_are_listed(stack, api):
    r = api.get("/admin/teams")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    teams = {t["id"]: t for t in r.json()["teams"]}
    assert {t.id for t in TEAMS} <= set(teams), sorted(teams)
    expected = {"id": "adm-static", "tier": "standard", "client_ids": ["adm-static-agent"], "rpm": 100,
                "daily_tokens": 500_000, "monthly_budget_usd": 100.0}
    assert _subset(teams["adm-static"], expected) == expected, teams["adm-static"]
    assert _subset(api.team("adm-static"), expected) == expected
    _error(api.get("/admin/teams/no-such-team"), 404)


def test_team_crud_round_trip(stack, api, marker):
    team = {
        "id": "adm-crud",
        "tier": "premium",
        "client_ids": ["adm-crud-agent", "adm-crud-ci"],
        "rpm": 50,
        "daily_tokens": 123_456,
        "monthly_budget_usd": 12.5,
        "on_breach": "warn",
        "model_caps": {"gpt-4o": 1.5},
        "allowed_models": ["gpt-4o", "gpt-4o-mini"],
    }
    try:
        r = api.post("/admin/teams", team)
        assert r.status_code == 201, r.text
        assert _subset(r.json(), team) == team, r.json()
        _error(api.post("/admin/teams", team), 409)
        assert _subset(api.team("adm-crud"), team) == team
        assert "adm-crud" in [t["id"] for t in api.get("/admin/teams").json()["teams"]]

        # PUT replaces the whole team (allowed_models gone: every model again; id from the path).
        replaced = {"tier": "standard", "client_ids": ["adm-crud-agent"], "rpm": 60, "monthly_budget_usd": 20.0}
        r = api.put("/admin/teams/adm-crud", replaced)
        assert r.status_code == 200, r.text
        got = api.team("adm-crud")
        assert _subset(got, replaced) == replaced and got["id"] == "adm-crud", got
        assert got.get("allowed_models") is None and not got.get("model_caps"), got
        assert got.get("on_breach") in (None, "block"), got
        # The freed client id is no longer the team's.
        assert stack.chat(mint_token("adm-crud-ci"), usage=ZERO, marker=marker).status_code == 403
        r = stack.chat(mint_token("adm-crud-agent"), model="claude-haiku-4-5", usage=ZERO, marker=marker)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "60", (r.status_code, r.text)

        # The budget endpoint merges.
        r = api.put("/admin/teams/adm-crud/budget", {"monthly_budget_usd": 150.0})
        assert r.status_code == 200, r.text
        assert r.json()["monthly_budget_usd"] == 150.0 and r.json()["rpm"] == 60, r.json()
        r = api.put("/admin/teams/adm-crud/budget", {"on_breach": "warn", "model_caps": {"gpt-4o": 5.0}})
        assert r.status_code == 200, r.text
        expected = {"monthly_budget_usd": 150.0, "on_breach": "warn", "model_caps": {"gpt-4o": 5.0}, "rpm": 60,
                    "tier": "standard", "client_ids": ["adm-crud-agent"]}
        assert _subset(r.json(), expected) == expected, r.json()
        assert _subset(api.team("adm-crud"), expected) == expected

        # PUT creates when absent.
        r = api.put("/admin/teams/adm-crud-2", {"id": "adm-crud-2", "tier": "sandbox", "client_ids": ["adm-crud-2-agent"]})
        assert r.status_code == 200, r.text
        assert api.team("adm-crud-2")["tier"] == "sandbox"
        r = stack.chat(mint_token("adm-crud-2-agent"), usage=ZERO, marker=marker)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "20", (r.status_code, r.text)

        r = api.delete("/admin/teams/adm-crud")
        assert r.status_code == 204, r.text
        _error(api.get("/admin/teams/adm-crud"), 404)
        _error(api.delete("/admin/teams/adm-crud"), 404)
        _error(api.get("/admin/teams/adm-crud/usage"), 404)
        _error(api.put("/admin/teams/adm-crud/budget", {"monthly_budget_usd": 1.0}), 404)
        assert "adm-crud" not in [t["id"] for t in api.get("/admin/teams").json()["teams"]]
        r = stack.chat(mint_token("adm-crud-agent"), usage=ZERO, marker=marker)
        assert r.status_code == 403, f"a deleted team's client still admitted: {r.status_code} {r.text}"
        assert r.json()["error"]["code"] == "unknown_team", r.text
    finally:
        api.delete("/admin/teams/adm-crud")
        api.delete("/admin/teams/adm-crud-2")


VALID = {"tier": "standard", "client_ids": ["adm-val-agent"]}


@pytest.mark.parametrize(
    "case,body,field",
    [
        ("unknown-tier", {"id": "adm-val", **VALID, "tier": "gold"}, "tier"),
        ("negative-budget", {"id": "adm-val", **VALID, "monthly_budget_usd": -1.0}, "monthly_budget_usd"),
        ("client-id-taken", {"id": "adm-val", **VALID, "client_ids": ["adm-static-agent"]}, "client_ids"),
        ("empty-id", {"id": "", **VALID}, "id"),
        ("unknown-field", {"id": "adm-val", **VALID, "bogus": 1}, None),
        ("bad-on-breach", {"id": "adm-val", **VALID, "on_breach": "explode"}, None),
        ("rpm-not-a-number", {"id": "adm-val", **VALID, "rpm": "lots"}, None),
    ],
)
def test_team_validation_errors(stack, api, case, body, field):
    _error(api.post("/admin/teams", body), 400, field)
    if body["id"]:
        _error(api.put(f"/admin/teams/{body['id']}", body), 400, field)
    _error(api.get("/admin/teams/adm-val"), 404)


def test_malformed_admin_requests(stack, api):
    _error(api.post("/admin/teams", content=b"{not json"), 400)
    _error(api.post("/admin/teams", content=b"[1, 2]"), 400)
    # The body's id must match the path.
    _error(api.put("/admin/teams/adm-val-x", {"id": "adm-val-y", **VALID}), 400, "id")
    _error(api.get("/admin/teams/adm-val-x"), 404)
    _error(api.get("/admin/teams/adm-val-y"), 404)
    # Budget updates are validated too, and need an existing team.
    _error(api.put("/admin/teams/adm-static/budget", {"monthly_budget_usd": -5.0}), 400, "monthly_budget_usd")
    _error(api.put("/admin/teams/adm-static/budget", {"on_breach": "explode"}), 400)
    _error(api.put("/admin/teams/no-such-team/budget", {"monthly_budget_usd": 5.0}), 404)
    assert api.team("adm-static")["monthly_budget_usd"] == 100.0
    # Prices need input and output, not negative.
    _error(api.put("/admin/prices/adm-bad-price", {"input": 1.0}), 400)
    _error(api.put("/admin/prices/adm-bad-price", {"input": -1.0, "output": 1.0}), 400)
    assert "adm-bad-price" not in api.prices()


def test_team_created_through_the_api_serves_at_once(stack, api, marker):
    avoid_minute_boundary(10)
    try:
        api.create_team(Team("adm-live", client_ids=["adm-live-agent"], rpm=3, daily_tokens=1_000_000))
        tok = mint_token("adm-live-agent")  # no team claim: the team comes from the client id
        r = stack.chat(tok, usage=ZERO, marker=marker)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-limit-tokens"] == "1000000"
        # Replaced: the next request sees the new limits.
        api.put("/admin/teams/adm-live", Team("adm-live", client_ids=["adm-live-agent"], rpm=7).to_json())
        r = stack.chat(tok, usage=ZERO, marker=marker)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "7", (r.status_code, dict(r.headers))
        api.delete_team("adm-live")
        r = stack.chat(tok, usage=ZERO, marker=marker)
        assert r.status_code == 403, r.text
        assert len(stack.upstream_requests(marker)) == 2
    finally:
        api.delete("/admin/teams/adm-live")


# --------------------------------------------------------------------------- budgets


def test_budget_changed_through_the_api_applies_to_the_next_request(stack, api, marker):
    team = "adm-lower"
    tok = stack.token(team)
    # gpt-4o: 10000 in ($0.025) + 2500 out ($0.025) = $0.05.
    assert stack.chat(tok, model="gpt-4o", usage="prompt=10000,completion=2500", marker=marker).status_code == 200
    stack.wait_spend(team, 0.05)
    assert stack.chat(tok, model="gpt-4o", usage=ZERO, marker=marker).status_code == 200

    got = api.set_budget(team, monthly_budget_usd=0.05)
    assert got["monthly_budget_usd"] == 0.05 and got["rpm"] == 1000, got
    r = stack.chat(tok, model="gpt-4o", usage=ZERO, marker=marker)
    check_budget_rejection(r, flavour=OPENAI, code="monthly_budget_exceeded",
                           reason_re=r"Monthly budget exceeded \(\$0\.05/\$0\.05\)")
    r = stack.messages(tok, usage=ZERO, marker=marker)
    check_budget_rejection(r, flavour=ANTHROPIC, code="monthly_budget_exceeded",
                           reason_re=r"Monthly budget exceeded \(\$0\.05/\$0\.05\)")

    api.set_budget(team, on_breach="warn")
    r = stack.chat(tok, model="gpt-4o", usage=ZERO, marker=marker)
    assert r.status_code == 200, r.text
    assert "$0.05/$0.05" in r.headers.get(WARN, ""), dict(r.headers)

    api.set_budget(team, on_breach="block", monthly_budget_usd=1.0)
    r = stack.chat(tok, model="gpt-4o", usage=ZERO, marker=marker)
    assert r.status_code == 200 and WARN not in r.headers, (r.status_code, dict(r.headers))

    got = api.set_budget(team, model_caps={"gpt-4o": 0.05})
    r = stack.chat(tok, model="gpt-4o", usage=ZERO, marker=marker)
    check_budget_rejection(r, flavour=OPENAI, code="model_budget_exceeded",
                           reason_re=r"Monthly budget for model gpt-4o exceeded \(\$0\.05/\$0\.05\)")
    assert stack.chat(tok, model="gpt-4o-mini", usage=ZERO, marker=marker).status_code == 200
    expected = {"monthly_budget_usd": 1.0, "on_breach": "block", "model_caps": {"gpt-4o": 0.05}, "rpm": 1000}
    assert _subset(got, expected) == expected, got
    assert _subset(api.team(team), expected) == expected
    # Refusals never reached the upstream: 2 + warn + 1.0 budget + mini.
    assert len(stack.upstream_requests(marker)) == 5


def test_default_warning_threshold_is_80_percent(stack, marker):
    team = "adm-warn80"  # $0.10
    tok = stack.token(team)
    assert stack.chat(tok, model="gpt-4o", usage="prompt=10000,completion=2500", marker=marker).status_code == 200
    stack.wait_spend(team, 0.05)
    r = stack.chat(tok, model="gpt-4o", usage=ZERO, marker=marker)
    assert r.status_code == 200 and WARN not in r.headers, dict(r.headers)
    # +$0.04: 8000 in ($0.02) + 2000 out ($0.02).
    assert stack.chat(tok, model="gpt-4o", usage="prompt=8000,completion=2000", marker=marker).status_code == 200
    _wait_warning(stack, tok, r"80% of the monthly budget used \(\$0\.09/\$0\.10\)")


def test_usage_endpoint(stack, api, marker):
    team = "adm-usage"
    tok = stack.token(team)
    avoid_minute_boundary(10)
    for _ in range(3):  # gpt-4o-mini: 1000 * 0.15 + 1000 * 0.60 = 750 micro-dollars
        assert stack.chat(tok, usage="prompt=1000,completion=1000", marker=marker).status_code == 200
    # claude-haiku-4-5: 100 * 1 + 100 * 5 = 600 micro-dollars
    assert stack.messages(tok, usage="prompt=100,completion=100", marker=marker).status_code == 200
    u = stack.wait_usage(team, lambda u: u["tokens_today"]["used"] == 6200 and micros(u["spend_this_month"]["usd"]) == 2850)
    assert u["team"] == team and u["tier"] == "standard", u
    assert u["rpm"] == {"limit": 100, "used": 4}, u
    assert u["tokens_today"] == {"used": 6200, "limit": 500_000}, u
    month = u["spend_this_month"]
    assert month["month"] == utc_month() and month["budget_usd"] == 100.0, u
    assert month["usd"] == 0.00285, u
    assert month["by_model"] == {"gpt-4o-mini": 0.00225, "claude-haiku-4-5": 0.0006}, u
    assert isinstance(u["recent_months"], list) and u["recent_months"], u
    assert u["recent_months"][0] == {"month": utc_month(), "usd": 0.00285}, u
    _error(api.get("/admin/teams/no-such-team/usage"), 404)


# --------------------------------------------------------------------------- prices


def test_price_table(stack, api):
    r = api.get("/admin/prices")
    assert r.status_code == 200, r.text
    prices = r.json()["prices"]
    for model, price in PRICES.items():
        assert prices.get(model) == price, f"{model}: {prices.get(model)}"


def test_prices_set_through_the_api_change_the_next_charge(stack, api, marker):
    team = "adm-price"
    tok = stack.token(team)
    model = "adm-price-model"
    try:
        r = stack.chat(tok, model=model, usage=ZERO, marker=marker)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_model", r.text

        api.set_price(model, input=1000.0, output=1000.0)
        assert api.prices()[model] == {"input": 1000.0, "output": 1000.0, "cache_read": 1000.0,
                                       "cache_write": 1000.0, "source": "admin"}
        assert stack.chat(tok, model=model, usage="prompt=10,completion=10", marker=marker).status_code == 200
        stack.wait_spend(team, 0.02)

        api.set_price(model, input=2000.0, output=3000.0, cache_read=200.0, cache_write=2500.0)
        assert stack.chat(tok, model=model, usage="prompt=10,completion=10", marker=marker).status_code == 200
        stack.wait_spend(team, 0.07)  # + 10 * 2000 + 10 * 3000 micro-dollars

        r = api.delete(f"/admin/prices/{model}")
        assert r.status_code == 204, r.text
        assert model not in api.prices()
        _error(api.delete(f"/admin/prices/{model}"), 404)
        r = stack.chat(tok, model=model, usage=ZERO, marker=marker)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_model", r.text

        # Overriding a shipped price, through a dated model name; deleting restores it.
        api.set_price("claude-sonnet-4-5", input=1000.0, output=1000.0)
        assert api.prices()["claude-sonnet-4-5"]["source"] == "admin"
        r = stack.messages(tok, model="claude-sonnet-4-5-20250929", usage="prompt=10,completion=10", marker=marker)
        assert r.status_code == 200, r.text
        stack.wait_spend(team, 0.09)
        api.delete_price("claude-sonnet-4-5")
        assert api.prices()["claude-sonnet-4-5"] == PRICES["claude-sonnet-4-5"]
        r = stack.messages(tok, model="claude-sonnet-4-5", usage="prompt=1000,completion=1000", marker=marker)
        assert r.status_code == 200, r.text
        u = stack.wait_spend(team, 0.108)  # + 1000 * 3 + 1000 * 15
        by_model = {k: micros(v) for k, v in u["spend_this_month"]["by_model"].items()}
        assert by_model == {model: 70_000, "claude-sonnet-4-5": 38_000}, u
        _error(api.delete("/admin/prices/gpt-4o"), 404)  # no admin price to remove
    finally:
        api.delete(f"/admin/prices/{model}")
        api.delete("/admin/prices/claude-sonnet-4-5")


# --------------------------------------------------------------------------- CLI


def _json_out(p) -> object:
    assert p.returncode == 0, f"rc={p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    try:
        return json.loads(p.stdout)
    except ValueError as e:
        raise AssertionError(f"not JSON on stdout ({e}): {p.stdout!r}") from e


def _failed(p) -> str:
    assert p.returncode != 0, f"expected a failure\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p.stdout + p.stderr


def _team_ids(listed) -> list[str]:
    teams = listed["teams"] if isinstance(listed, dict) else listed
    return [t["id"] for t in teams]


def test_cli_team_budget_and_usage(stack, api, tollgate_bin, marker):
    url, tok = stack.tollgate_url, admin_token()

    def cli(*args, **kw):
        kw.setdefault("token", tok)
        return run_admin_cli(tollgate_bin, url, *args, **kw)

    try:
        added = _json_out(cli(
            "teams", "add", "adm-cli", "--tier", "standard", "--client-id", "adm-cli-agent",
            "--client-id", "adm-cli-2", "--rpm", "5", "--daily-tokens", "100000", "--budget-usd", "2.5",
            "--allow-model", "gpt-4o-mini", "--allow-model", "claude-haiku-4-5",
        ))
        expected = {"id": "adm-cli", "tier": "standard", "client_ids": ["adm-cli-agent", "adm-cli-2"], "rpm": 5,
                    "daily_tokens": 100_000, "monthly_budget_usd": 2.5,
                    "allowed_models": ["gpt-4o-mini", "claude-haiku-4-5"]}
        assert _subset(added, expected) == expected, added
        assert _subset(api.team("adm-cli"), expected) == expected

        # It serves at once, for either client id, with its limits and allow-list.
        r = stack.chat(mint_token("adm-cli-2"), usage="prompt=100,completion=100", marker=marker)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "5", (r.status_code, r.text)
        assert stack.chat(mint_token("adm-cli-agent"), model="gpt-4o", usage=ZERO, marker=marker).status_code == 403

        assert _subset(_json_out(cli("teams", "get", "adm-cli")), expected) == expected
        assert "adm-cli" in _team_ids(_json_out(cli("teams", "list")))

        updated = _json_out(cli("set-budget", "adm-cli", "--usd", "0.5", "--model-cap", "gpt-4o-mini=0.25",
                                "--on-breach", "warn"))
        budget = {"monthly_budget_usd": 0.5, "model_caps": {"gpt-4o-mini": 0.25}, "on_breach": "warn", "rpm": 5}
        assert _subset(updated, budget) == budget, updated
        assert _subset(api.team("adm-cli"), budget) == budget

        stack.wait_spend("adm-cli", 0.000075)  # gpt-4o-mini: 100 * 0.15 + 100 * 0.60
        # The token may come from TOLLGATE_ADMIN_TOKEN.
        usage = _json_out(cli("usage", "adm-cli", token=None, env_token=tok))
        assert usage["team"] == "adm-cli" and usage["tokens_today"]["used"] == 200, usage
        assert micros(usage["spend_this_month"]["usd"]) == 75 and usage["spend_this_month"]["budget_usd"] == 0.5

        # Failures: non-zero exit with the API's message.
        conflict = api.post("/admin/teams", {"id": "adm-cli", "tier": "standard", "client_ids": ["adm-cli-3"]})
        message = _error(conflict, 409)["error"]
        assert message in _failed(cli("teams", "add", "adm-cli", "--tier", "standard", "--client-id", "adm-cli-3"))
        out = _failed(cli("teams", "add", "adm-cli-bad", "--tier", "gold", "--client-id", "adm-cli-bad-agent"))
        assert "gold" in out or "tier" in out, out
        _failed(cli("teams", "get", "adm-cli", token=stack.token("adm-static")))  # no admin scope
        _failed(cli("teams", "get", "adm-cli", token=None))  # no token at all
        _failed(cli("teams", "get", "no-such-team"))
        _error(api.get("/admin/teams/adm-cli-bad"), 404)

        assert cli("teams", "delete", "adm-cli").returncode == 0
        _failed(cli("teams", "get", "adm-cli"))
        assert stack.chat(mint_token("adm-cli-agent"), usage=ZERO, marker=marker).status_code == 403
    finally:
        api.delete("/admin/teams/adm-cli")
        api.delete("/admin/teams/adm-cli-bad")


def test_cli_prices(stack, api, tollgate_bin):
    url, tok = stack.tollgate_url, admin_token()

    def cli(*args):
        return run_admin_cli(tollgate_bin, url, *args, token=tok)

    try:
        listed = _json_out(cli("prices", "list"))
        assert listed["prices"]["gpt-4o"] == PRICES["gpt-4o"], listed
        _json_out(cli("prices", "set", "adm-cli-model", "--input", "1000", "--output", "2000", "--cache-read", "100"))
        want = {"input": 1000.0, "output": 2000.0, "cache_read": 100.0, "cache_write": 1000.0, "source": "admin"}
        assert _json_out(cli("prices", "list"))["prices"]["adm-cli-model"] == want
        assert api.prices()["adm-cli-model"] == want
        assert cli("prices", "delete", "adm-cli-model").returncode == 0
        assert "adm-cli-model" not in api.prices()
        _failed(cli("prices", "delete", "adm-cli-model"))
    finally:
        api.delete("/admin/prices/adm-cli-model")


def test_offline_cli_edits_the_store_while_tollgate_is_stopped(stack_factory, tollgate_bin):
    """`tollgate admin --offline` goes through the same handlers against the embedded store, for
    when no instance is running; the next start serves what it wrote."""
    import subprocess

    from processes import tollgate_cli_env

    s = stack_factory("offline", [Team("off-static", rpm=100)])
    try:
        s.tollgate.stop()

        def offline(*args):
            return subprocess.run(
                [str(tollgate_bin), "admin", "--offline", "--config", str(s.config_path), *args],
                capture_output=True, text=True, timeout=30, env=tollgate_cli_env(),
            )

        r = offline("teams", "add", "off-new", "--tier", "sandbox", "--client-id", "off-new-agent", "--budget-usd", "7")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["monthly_budget_usd"] == 7.0
        r = offline("teams", "add", "off-new", "--tier", "sandbox")
        assert r.returncode != 0 and "already exists" in r.stderr

        s.start_tollgate()
        assert s.admin_api().get("/admin/teams/off-new").json()["client_ids"] == ["off-new-agent"]
        r = s.chat(mint_token("off-new-agent"), usage=ZERO)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit"] == "20", "sandbox tier"
    finally:
        s.stop()
