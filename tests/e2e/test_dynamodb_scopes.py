"""Scopes on the DynamoDB store, with quota leases (the sidecar's default admission there): a
fleet of two instances on one table keeps a user's RPM exact and refuses a user over their budget
through either instance while a teammate passes. The team's items keep the keys they always had
(`team#<id>`); a user's live in their own partition (`team#<team>~user~<user>`).

Needs `npm ci` at the repository root (DynamoDB Local) and Java 17, like test_dynamodb.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from checks import OPENAI, check_budget_rejection, utc_month
from dynamodb_local import tollgate_aws_env
from processes import avoid_minute_boundary
from tollgate_config import Team
# `ddb`: this module's own DynamoDB Local, as test_dynamodb.py starts one.
from test_dynamodb import MODEL, PRICING, ZERO, ddb, ensure_table, store_section, warm_up  # noqa: F401

TABLE = "tollgate-scopes"
TEAM = "scd"
SCOPE = "x-tollgate-limit-scope"
# Every user of every team: 10 requests a minute and $0.01 a month (the team: far more).
USER_DEFAULTS = {"TOLLGATE_USER_DEFAULTS__RPM": "10", "TOLLGATE_USER_DEFAULTS__BUDGET_USD": "0.01"}


@pytest.fixture(scope="module")
def fleet(stack_factory, tollgate_bin, e2e_root, ddb):
    workdir = e2e_root / f"dynamodb-scopes-{uuid.uuid4().hex[:6]}"
    ensure_table(tollgate_bin, workdir, ddb, TABLE)
    teams = [Team(TEAM, rpm=100_000, daily_tokens=100_000_000, monthly_budget_usd=10_000.0)]
    stacks = [
        stack_factory(
            f"scd-{n}", teams,
            # Scopes are what is tested here, not latency: room for a DynamoDB Local on a busy
            # machine, still within Envoy's 1 s ext_proc message timeout.
            store=store_section(ddb.endpoint_url, TABLE, timeout_ms=700),
            policy={"admission_timeout_ms": 900},
            pricing=PRICING,
            identity={"user_claim": "username"},
            tollgate_env={**tollgate_aws_env(), **USER_DEFAULTS},
        )
        for n in ("a", "b")
    ]
    warm_up(stacks, TEAM)  # DynamoDB Local's JVM, the SDK's pools, both instances' team caches
    return stacks


def user_token(stack, user: str) -> str:
    return stack.token(TEAM, extra={"username": user})


def test_a_users_rpm_is_exact_across_the_fleet_with_leases(fleet, ddb, marker):
    a, b = fleet
    alice = user_token(a, "alice")
    n, in_flight = 30, 8
    barrier = threading.Barrier(in_flight)

    def one(i):
        if i < in_flight:
            barrier.wait(15)
        return (a, b)[i % 2].chat(alice, model=MODEL, marker=marker, usage=ZERO)

    avoid_minute_boundary(10)
    minute = int(time.time() // 60)
    with ThreadPoolExecutor(in_flight) as ex:
        results = list(ex.map(one, range(n)))
    assert int(time.time() // 60) == minute, "the burst crossed a minute boundary"
    statuses = Counter(r.status_code for r in results)
    assert statuses == Counter({200: 10, 429: 20}), statuses
    for r in results:
        if r.status_code == 429:
            assert r.headers[SCOPE] == "user alice in team scd", r.headers
            assert "user alice in team scd: RPM limit exceeded" in r.json()["reason"]
    assert len(a.upstream_requests(marker)) + len(b.upstream_requests(marker)) == 10
    # Leases may hold claimed slices a while; what was admitted is what the user's bucket holds
    # once they are handed back (the minute is over or the lease idles), and never more.
    assert ddb.value(TABLE, f"team#{TEAM}~user~alice", f"rpm#{minute}") >= 10
    # A teammate has a window of their own.
    bob = user_token(a, "bob")
    assert all(s.chat(bob, model=MODEL, marker=marker, usage=ZERO).status_code == 200 for s in fleet)


def test_a_user_over_budget_is_refused_by_every_instance_and_a_teammate_is_not(fleet, ddb, marker):
    a, b = fleet
    carol, dave = user_token(a, "carol"), user_token(a, "dave")
    r = a.chat(carol, model=MODEL, marker=marker, usage="prompt=10,completion=10")  # $0.02
    assert r.status_code == 200, r.text
    for s in (a, b):
        deadline = time.time() + 10
        while (r := s.chat(carol, model=MODEL, marker=marker, usage=ZERO)).status_code == 200:
            assert time.time() < deadline, f"{s.name} still admits carol"
            time.sleep(0.2)
        check_budget_rejection(
            r, flavour=OPENAI, code="monthly_budget_exceeded",
            reason_re=r"user carol in team scd: Monthly budget exceeded \(\$0\.02/\$0\.01\)",
        )
        assert s.chat(dave, model=MODEL, marker=marker, usage=ZERO).status_code == 200
    month = utc_month()
    # The team's spend item is where it always was; the user's is in the user's partition.
    assert ddb.value(TABLE, f"team#{TEAM}~user~carol", f"spend#{month}") == 20_000
    assert ddb.value(TABLE, f"team#{TEAM}", f"spend#{month}") >= 20_000
    usage = b.admin_api().get(f"/admin/teams/{TEAM}/users/carol/usage").json()
    assert usage["spend"]["usd"] == 0.02 and usage["spend"]["period"]["key"] == month, usage
