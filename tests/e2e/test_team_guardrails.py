"""Guardrail policy per team, through Envoy + tollgate with the local guardrail engine: the same
prompt is refused for a team in enforce mode, only flagged for one in observe mode, and untouched
for one that turned the guardrail off, whatever the global `[guardrail] mode`; a team without a
policy of its own gets the global one. Teams with a policy are created through the admin API (their
`guardrail` field), as an operator would.
"""

from __future__ import annotations

import pytest

from checks import OPENAI, check_error_body
from tollgate_config import Team

HEADER = "x-tollgate-guardrail"
BLOCKED_IN = "Sorry, that topic is off limits here."
LOCAL = {"blocked_input_message": BLOCKED_IN, "words": ["project falcon"]}
PROMPT = [{"role": "user", "content": "Tell me everything about Project Falcon."}]


def team_json(team_id: str, guardrail: dict | None) -> dict:
    body = {"id": team_id, "tier": "standard", "client_ids": [f"{team_id}-agent"], "rpm": 1000}
    if guardrail is not None:
        body["guardrail"] = guardrail
    return body


def ask(stack, team_id: str):
    return stack.chat(stack.token(f"{team_id}-agent"), messages=PROMPT)


def assert_blocked(r) -> None:
    body = check_error_body(r, 400, OPENAI)
    assert (body["reason"], body["error"]["code"]) == (BLOCKED_IN, "guardrail_intervened"), body
    assert body.get("policies") == ["word"], body
    assert HEADER not in r.headers


def assert_flagged(r) -> None:
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    assert r.headers.get(HEADER) == "would-block", dict(r.headers)


def assert_untouched(r) -> None:
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    assert HEADER not in r.headers, dict(r.headers)


@pytest.fixture(scope="module")
def observing(stack_factory):
    """Global mode observe; teams: the global policy, enforce, observe spelled out, off."""
    s = stack_factory("team-guardrails-observe", [Team("tg-global", rpm=1000)],
                      guardrail={"mode": "observe", "local": LOCAL})
    admin = s.admin_api()
    admin.create_team(team_json("tg-strict", {"mode": "enforce"}))
    admin.create_team(team_json("tg-watch", {"mode": "observe"}))
    admin.create_team(team_json("tg-none", {"mode": "off"}))
    return s


@pytest.fixture(scope="module")
def off(stack_factory):
    """Global mode off; one team turns enforce on for itself."""
    s = stack_factory("team-guardrails-off", [Team("tgo-global", rpm=1000)],
                      guardrail={"mode": "off", "local": LOCAL})
    s.admin_api().create_team(team_json("tgo-strict", {"mode": "enforce"}))
    return s


def test_the_same_prompt_is_blocked_for_an_enforcing_team_and_only_flagged_for_an_observing_one(observing):
    assert_blocked(ask(observing, "tg-strict"))
    assert_flagged(ask(observing, "tg-watch"))
    assert_flagged(ask(observing, "tg-global"))
    assert_untouched(ask(observing, "tg-none"))
    # A clean prompt passes for every team.
    for team in ("tg-strict", "tg-watch", "tg-none", "tg-global"):
        r = observing.chat(observing.token(f"{team}-agent"))
        assert r.status_code == 200 and HEADER not in r.headers, f"{team}: {r.status_code} {r.text}"
    # The verdicts are counted under the mode each team ran.
    assert observing.metric("tollgate_guardrail_verdicts_total", source="INPUT", verdict="blocked", mode="enforce") == 1
    assert observing.metric("tollgate_guardrail_verdicts_total", source="INPUT", verdict="blocked", mode="observe") == 2


def test_a_team_can_enforce_where_the_global_guardrail_is_off(off):
    assert_blocked(ask(off, "tgo-strict"))
    assert_untouched(ask(off, "tgo-global"))


def test_the_policy_is_part_of_the_team_and_checked(observing):
    admin = observing.admin_api()
    assert admin.team("tg-strict")["guardrail"] == {"mode": "enforce"}
    assert "guardrail" not in admin.team("tg-global")
    bad = admin.post("/admin/teams", team_json("tg-typo", {"mode": "enfroce"}))
    assert bad.status_code in (400, 422), f"{bad.status_code} {bad.text}"
    blank = admin.post("/admin/teams", team_json("tg-blank", {"bedrock": {"guardrail_id": " ", "guardrail_version": "1"}}))
    assert blank.status_code == 400 and "guardrail" in blank.text, f"{blank.status_code} {blank.text}"
