"""Scopes through Envoy + tollgate: a user inside a team has a budget of their own (teammates are
not refused when one user is), an org ceiling above every team refuses all of them, a project a
team allows is a scope with its limits (one it does not list is refused), tokens per minute are a
limit charged with actual usage, refusals name the scope in the body and in
`x-tollgate-limit-scope`, and an admin can reset a scope's spend once per client-chosen id."""

from __future__ import annotations

import json
import time

import pytest

from admin import micros, run_admin_cli
from checks import OPENAI, check_budget_rejection, check_error_body
from tokens import admin_token
from tollgate_config import Team

MSG_USAGE_2_CENTS = "prompt=10,completion=10"  # $0.02 at the flat price
FLAT = "flat-model"
PRICING = {"models": {FLAT: {"input": 1000.0, "output": 1000.0}}}
POLICY = {"team_cache_ttl_seconds": 1, "project_header": "x-tollgate-project"}
IDENTITY = {"user_claim": "username"}
SCOPE = "x-tollgate-limit-scope"


def _team(team_id: str, **kw) -> Team:
    return Team(team_id, rpm=1000, daily_tokens=100_000_000, monthly_budget_usd=100.0, **kw)


@pytest.fixture(scope="module")
def stack(stack_factory):
    teams = [_team("sc-users"), _team("sc-tpm"), _team("sc-proj")]
    return stack_factory("scopes", teams, pricing=PRICING, policy=POLICY, identity=IDENTITY)


@pytest.fixture(scope="module")
def org_stack(stack_factory):
    """A second deployment whose org may spend $0.01 a month, whatever each team may."""
    teams = [_team("sc-org-a"), _team("sc-org-b")]
    return stack_factory(
        "scopes-org", teams, pricing=PRICING, policy=POLICY, identity=IDENTITY,
        tollgate_env={"TOLLGATE_ORG__BUDGET_USD": "0.01"},
    )


def user_token(stack, team: str, user: str) -> str:
    return stack.token(team, extra={"username": user})


def call(stack, token, *, usage: str = "prompt=0,completion=0", marker=None, headers=None):
    return stack.chat(token, model=FLAT, usage=usage, marker=marker, headers=headers)


def wait_status(stack, token, status: int, *, marker=None, headers=None, timeout: float = 8.0):
    """Send zero-usage calls until one answers `status` (debits land after the response)."""
    deadline = time.time() + timeout
    while True:
        r = call(stack, token, marker=marker, headers=headers)
        if r.status_code == status:
            return r
        assert time.time() < deadline, f"still {r.status_code} after {timeout}s: {r.text[:300]}"
        time.sleep(0.1)


def test_a_user_over_their_budget_is_refused_while_a_teammate_is_admitted(stack, marker):
    admin = stack.admin_api()
    r = admin.put("/admin/teams/sc-users/users/alice", {"budget_usd": 0.01})
    assert r.status_code == 200, r.text
    assert r.json()["users"] == {"alice": {"budget_usd": 0.01}}
    alice, bob = user_token(stack, "sc-users", "alice"), user_token(stack, "sc-users", "bob")

    assert call(stack, alice, usage=MSG_USAGE_2_CENTS, marker=marker).status_code == 200
    r = wait_status(stack, alice, 429, marker=marker)
    body, _ = check_budget_rejection(
        r, flavour=OPENAI, code="monthly_budget_exceeded",
        reason_re=r"user alice in team sc-users: Monthly budget exceeded \(\$0\.02/\$0\.01\)",
    )
    assert r.headers[SCOPE] == "user alice in team sc-users"
    upstream = len(stack.upstream_requests(marker))
    # Bob shares the team (and its $100) but not Alice's budget.
    for _ in range(3):
        r = call(stack, bob, marker=marker)
        assert r.status_code == 200, r.text
        assert SCOPE not in r.headers
    assert len(stack.upstream_requests(marker)) == upstream + 3

    usage = admin.get("/admin/teams/sc-users/users/alice/usage").json()
    assert usage["scope"] == {"kind": "user", "id": "alice", "team": "sc-users",
                              "label": "user alice in team sc-users"}
    assert micros(usage["spend"]["usd"]) == 20_000 and usage["spend"]["budget_usd"] == 0.01, usage
    assert usage["spend_history"][0]["period"] == usage["spend"]["period"]["key"]
    # The team's own spend counts Alice's call too.
    assert micros(stack.usage("sc-users")["spend_this_month"]["usd"]) == 20_000


def test_an_admin_reset_lets_the_user_in_again_once_per_id(stack, marker):
    admin = stack.admin_api()
    alice = user_token(stack, "sc-users", "alice")
    # (After the test above, Alice is over her $0.01.)
    assert wait_status(stack, alice, 429, marker=marker).headers[SCOPE] == "user alice in team sc-users"
    adjustment = {
        "id": f"reset-{marker}",
        "scope": {"user": {"team": "sc-users", "user": "alice"}},
        "counter": "spend",
        "reset": True,
        "reason": "refund: the fake upstream was misbehaving",
    }
    r = admin.post("/admin/adjustments", adjustment)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["applied"] is True and done["after"] == 0 and micros(done["before"]) >= 20_000, done
    assert done["by"] == "tollgate-admin" and done["reason"] == adjustment["reason"]
    assert call(stack, alice, marker=marker).status_code == 200
    # The same id again changes nothing, even after more spend.
    assert call(stack, alice, usage=MSG_USAGE_2_CENTS, marker=marker).status_code == 200
    wait_status(stack, alice, 429, marker=marker)
    again = admin.post("/admin/adjustments", adjustment)
    assert again.status_code == 200 and again.json() == {
        "id": adjustment["id"], "applied": False, "already_applied": True}
    assert call(stack, alice, marker=marker).status_code == 429
    # Saying why is not optional.
    r = admin.post("/admin/adjustments", {**adjustment, "id": "x", "reason": " "})
    assert r.status_code == 400 and r.json()["field"] == "reason"


def test_the_org_ceiling_refuses_every_team(org_stack, marker):
    a, b = org_stack.token("sc-org-a"), org_stack.token("sc-org-b")
    assert call(org_stack, a, usage=MSG_USAGE_2_CENTS, marker=marker).status_code == 200
    for token in (a, b):
        r = wait_status(org_stack, token, 429, marker=marker)
        check_budget_rejection(
            r, flavour=OPENAI, code="monthly_budget_exceeded",
            reason_re=r"org: Monthly budget exceeded \(\$0\.02/\$0\.01\)",
        )
        assert r.headers[SCOPE] == "org"
    org = org_stack.admin_api().get("/admin/org/usage").json()
    assert micros(org["spend"]["usd"]) == 20_000 and org["spend"]["budget_usd"] == 0.01, org
    # Each team spent within its own $100.
    assert micros(org_stack.usage("sc-org-b")["spend_this_month"]["usd"]) == 0


def test_tokens_per_minute_are_charged_with_actual_usage(stack, marker):
    admin = stack.admin_api()
    team = {**_team("sc-tpm").to_json(), "tpm": 100}
    assert admin.put("/admin/teams/sc-tpm", team).status_code == 200
    tok = stack.token("sc-tpm")
    r = call(stack, tok, usage="prompt=80,completion=40", marker=marker)  # 120 tokens
    assert r.status_code == 200, r.text
    r = wait_status(stack, tok, 429, marker=marker)
    body = check_error_body(r, 429, OPENAI)
    assert body["error"]["code"] == "tpm_limit_exceeded", body
    assert body["reason"] == "TPM limit exceeded: 120 tokens in the last 60 s, limit 100", body
    assert r.headers[SCOPE] == "team sc-tpm"
    # Retryable: the window slides; the SDK may retry after Retry-After.
    assert r.headers.get("x-should-retry") != "false"
    assert 1 <= int(r.headers["retry-after"]) <= 120
    usage = admin.get("/admin/teams/sc-tpm/scope-usage").json()
    assert usage["tpm"] == {"limit": 100, "used": 120}, usage


def test_a_project_the_team_allows_is_a_scope_and_others_are_refused(stack, marker):
    admin = stack.admin_api()
    assert admin.put("/admin/teams/sc-proj/projects/search", {"rpm": 2}).status_code == 200
    tok = stack.token("sc-proj")
    search = {"x-tollgate-project": "search"}
    for _ in range(2):
        assert call(stack, tok, marker=marker, headers=search).status_code == 200
    r = call(stack, tok, marker=marker, headers=search)
    body = check_error_body(r, 429, OPENAI)
    assert body["reason"].startswith("project search in team sc-proj: RPM limit exceeded: 2 requests"), body
    assert r.headers[SCOPE] == "project search in team sc-proj"
    # Without the header the team's own limits apply.
    assert call(stack, tok, marker=marker).status_code == 200
    r = call(stack, tok, marker=marker, headers={"x-tollgate-project": "ads"})
    body = check_error_body(r, 403, OPENAI)
    assert 'project "ads" is not allowed for team "sc-proj"' in body["reason"], body
    assert "PUT /admin/teams/sc-proj/projects/ads" in body["reason"]


def test_a_weekly_budget_in_a_time_zone_names_its_local_week(stack):
    admin = stack.admin_api()
    r = admin.put("/admin/teams/sc-users/users/carol",
                  {"budget_usd": 5, "budget_period": {"every": "week", "time_zone": "Pacific/Auckland"}})
    assert r.status_code == 200, r.text
    period = admin.get("/admin/teams/sc-users/users/carol/usage").json()["spend"]["period"]
    assert period["key"].startswith("week-"), period
    # Auckland's Monday midnight: a whole week long (no DST change mid-week in most weeks) and
    # never on a UTC midnight (UTC+12/+13).
    assert period["start"] <= time.time() < period["end"], period
    assert period["start"] % 86_400 != 0
    # Unknown keys in a scope's limits are refused, naming the key.
    r = admin.put("/admin/teams/sc-users/users/carol", {"budget": 5})
    assert r.status_code == 400 and "budget" in r.json()["error"], r.text


def test_the_cli_sets_a_users_limits_shows_their_usage_and_adjusts_it(stack, tollgate_bin, marker):
    tok = admin_token()

    def cli(*args):
        r = run_admin_cli(tollgate_bin, stack.tollgate_url, *args, token=tok)
        assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return json.loads(r.stdout) if r.stdout.strip() else None

    team = cli("limits", "sc-users", "--user", "dana#1", '{"budget_usd": 0.05, "tpm": 1000}')
    assert team["users"]["dana#1"] == {"budget_usd": 0.05, "tpm": 1000}
    dana = user_token(stack, "sc-users", "dana#1")
    assert call(stack, dana, usage="prompt=15,completion=5", marker=marker).status_code == 200  # $0.02
    deadline = time.time() + 8
    while micros((usage := cli("usage", "sc-users", "--user", "dana#1"))["spend"]["usd"]) != 20_000:
        assert time.time() < deadline, usage
        time.sleep(0.1)
    assert usage["scope"]["label"] == "user dana#1 in team sc-users"
    assert usage["tpm"] == {"limit": 1000, "used": 20}
    done = cli("adjust", "--id", f"cli-{marker}", "--team", "sc-users", "--user", "dana#1",
               "--counter", "spend", "--add", "-0.015", "--reason", "goodwill")
    assert done["applied"] is True and micros(done["after"]) == 5_000, done
    assert micros(cli("usage", "sc-users", "--user", "dana#1")["spend"]["usd"]) == 5_000
    # A typo in the limits is refused by the server, naming the field.
    r = run_admin_cli(tollgate_bin, stack.tollgate_url, "limits", "sc-users", "--user", "dana#1",
                      '{"budget_usd": 1, "tmp": 5}', token=tok)
    assert r.returncode != 0 and "tmp" in r.stderr, r.stderr
