"""Budget threshold alerts and the usage feed, through real Envoy (docs/alerts.md).

A local HTTP receiver (threads, loopback) takes the webhooks; per team it answers 2xx, fails the
first attempts, never answers 2xx, or holds an attempt open. The scenarios: the webhook received
exactly once per threshold while two tollgate instances race past it on DynamoDB Local; retries
after receiver failures; the dead-letter log after a receiver that never answers 2xx; an alert
owed by an instance killed mid-delivery sent again, with the same event id, when it restarts; a
forged signature caught by the verification snippet of docs/alerts.md, run as it is there; the
usage feed's lines adding up to what the admin API reports as spent.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from checks import utc_month
from dynamodb_local import tollgate_aws_env
from harness import REPO, Team, micros, wait_until
# `ddb`: the module's DynamoDB Local, the same fixture as test_dynamodb's.
from test_dynamodb import ddb, ensure_table, store_section  # noqa: F401

MODEL = "al-model"
# $1000 per million tokens in and out: $0.001 (1,000 micro-dollars) a token.
PRICING = {"models": {MODEL: {"input": 1000.0, "output": 1000.0}}}
SECRET = b"e2e-alert-secret"
SECRET_VAR = "E2E_TOLLGATE_ALERT_SECRET"
ZERO = "prompt=0,completion=0"

# Budgets of $1 = 1000 tokens' worth.
SIGN, RETRY, DEAD, CRASH, FEED = "al-sign", "al-retry", "al-dead", "al-crash", "al-feed"
TEAMS = [Team(t, rpm=10_000, daily_tokens=100_000_000, monthly_budget_usd=1.0) for t in (SIGN, RETRY, DEAD, CRASH)]
TEAMS.append(Team(FEED, rpm=10_000, daily_tokens=100_000_000, monthly_budget_usd=1000.0))
RACE = "al-race"
RACE_TABLE = "tollgate-alerts"


def verify_snippet() -> dict:
    """The Python block of docs/alerts.md marked as the verification snippet, executed: its names."""
    text = (REPO / "docs" / "alerts.md").read_text()
    m = re.search(r"<!-- alerts-verify-snippet[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/alerts.md lost its verification snippet"
    names: dict = {}
    exec(compile(m.group(1), "docs/alerts.md", "exec"), names)  # noqa: S102 - our own docs
    return names


class Receiver:
    """An alert receiver on loopback. Records every request (headers, raw body, answer); what it
    answers is decided per team (the body's scope id) by `plan[team](attempt_number)`: a status,
    or "hold" (wait until `release` is set, then 503)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.plan: dict = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                team = json.loads(body)["scope"]["id"]
                with receiver.lock:
                    n = 1 + sum(1 for r in receiver.requests if r["team"] == team)
                    record = {"team": team, "headers": dict(self.headers.items()), "body": body,
                              "status": None, "at": time.time()}
                    receiver.requests.append(record)
                answer = receiver.plan.get(team, lambda n: 200)(n)
                if answer == "hold":
                    receiver.release.wait(60)
                    answer = 503
                record["status"] = answer
                try:
                    self.send_response(answer)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the sender is gone (killed): it never saw the answer
                    record["status"] = f"{answer} unseen"

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/tollgate"

    def of(self, team: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["team"] == team]

    def stop(self):
        self.release.set()
        self.server.shutdown()


def alert_env(workdir: Path, receiver: Receiver, **extra: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    return {
        "TOLLGATE_ALERTS__URL": receiver.url,
        "TOLLGATE_ALERTS__SECRET_ENV": SECRET_VAR,
        SECRET_VAR: SECRET.decode(),
        "TOLLGATE_ALERTS__OUTBOX_PATH": str(workdir / "outbox.jsonl"),
        "TOLLGATE_ALERTS__DEAD_LETTER_PATH": str(workdir / "dead-letter.jsonl"),
        "TOLLGATE_ALERTS__TIMEOUT_MS": "3000",
        "TOLLGATE_ALERTS__MAX_ATTEMPTS": "3",
        "TOLLGATE_ALERTS__BACKOFF_INITIAL_MS": "200",
        "TOLLGATE_ALERTS__BACKOFF_MAX_MS": "1000",
        "TOLLGATE_USAGE_FEED__PATH": str(workdir / "usage.jsonl"),
        **extra,
    }


def feed_lines(path: Path, team: str) -> list[dict]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["scopes"][0]["id"] == team]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def alert_dir(e2e_root):
    return e2e_root / f"alerts-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def stack(stack_factory, receiver, alert_dir):
    return stack_factory("alerts", TEAMS, pricing=PRICING, tollgate_env=alert_env(alert_dir, receiver))


def cross_80_percent(stack, team: str) -> None:
    """$0.90 of a $1 budget spent in one call (its admission saw $0: no crossing), then one more
    admission, which sees the 80 % crossed."""
    token = stack.token(team)
    r = stack.chat(token, model=MODEL, usage="prompt=450,completion=450")
    assert r.status_code == 200, r.text
    stack.wait_spend(team, 0.9)
    r = stack.chat(token, model=MODEL, usage=ZERO)
    assert r.status_code == 200, r.text
    assert r.headers.get("x-tollgate-budget-warning", "").startswith("80%"), dict(r.headers)


def wait_requests(receiver: Receiver, team: str, count: int, timeout: float = 20.0) -> list[dict]:
    wait_until(lambda: len(receiver.of(team)) >= count, timeout, what=f"{count} webhook(s) for {team}")
    return receiver.of(team)


# --------------------------------------------------------------------------- signatures


def test_a_genuine_alert_verifies_and_a_forged_one_does_not(stack, receiver):
    cross_80_percent(stack, SIGN)
    (got,) = wait_requests(receiver, SIGN, 1)
    time.sleep(1.0)
    assert len(receiver.of(SIGN)) == 1, "one alert, delivered once"
    body, headers = got["body"], got["headers"]
    event = json.loads(body)
    assert headers["x-tollgate-event-id"] == event["id"]
    assert event["type"] == "budget.threshold_crossed"
    assert event["scope"] == {"kind": "team", "id": SIGN, "label": f"team {SIGN}"}
    assert event["period"]["name"] == "month" and event["period"]["key"] == utc_month()
    assert event["period"]["start"].startswith(utc_month() + "-01T00:00:00")
    assert event["threshold_percent"] == 80
    assert event["spent_micros"] == micros(0.9) and event["budget_micros"] == micros(1.0)
    assert event["spent_usd"] == 0.9 and event["budget_usd"] == 1.0

    verify = verify_snippet()["verify_tollgate_signature"]
    signature = headers["x-tollgate-signature"]
    assert verify(SECRET, signature, body), "the genuine alert must verify"
    tampered = body.replace(b'"threshold_percent":80', b'"threshold_percent":100')
    assert tampered != body
    assert not verify(SECRET, signature, tampered), "a tampered body must not verify"
    assert not verify(b"not-the-secret", signature, body), "a wrong secret must not verify"
    # A forger without the secret signs with one of their own.
    import hashlib
    import hmac

    t = str(int(time.time()))
    forged = hmac.new(b"guessed", t.encode() + b"." + tampered, hashlib.sha256).hexdigest()
    assert not verify(SECRET, f"t={t},v1={forged}", tampered)
    # A captured genuine request replayed later, with a fresh timestamp pasted in.
    old_t = re.search(r"t=(\d+)", signature).group(1)
    assert not verify(SECRET, signature.replace(f"t={old_t}", f"t={int(old_t) + 100}"), body)
    # ... or as it was, past the tolerance.
    assert not verify(SECRET, signature, body, tolerance=-1)


# --------------------------------------------------------------------------- retries, dead letter


def test_a_failing_receiver_gets_retries_with_the_same_event_id(stack, receiver, alert_dir):
    receiver.plan[RETRY] = lambda n: 500 if n <= 2 else 200
    cross_80_percent(stack, RETRY)
    got = wait_requests(receiver, RETRY, 3)
    time.sleep(1.0)
    got = receiver.of(RETRY)
    assert [r["status"] for r in got] == [500, 500, 200]
    assert [r["headers"]["x-tollgate-attempt"] for r in got] == ["1", "2", "3"]
    assert len({r["headers"]["x-tollgate-event-id"] for r in got}) == 1
    assert len({r["body"] for r in got}) == 1, "every attempt sends the same event"
    verify = verify_snippet()["verify_tollgate_signature"]
    assert all(verify(SECRET, r["headers"]["x-tollgate-signature"], r["body"]) for r in got)
    # Backed off: at least the initial 200 ms, then 400 ms.
    gaps = [b["at"] - a["at"] for a, b in zip(got, got[1:])]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38, gaps
    dead = alert_dir / "dead-letter.jsonl"
    assert not dead.exists() or RETRY not in dead.read_text()


def test_a_receiver_that_never_answers_2xx_ends_in_the_dead_letter_log(stack, receiver, alert_dir):
    receiver.plan[DEAD] = lambda n: 503
    dead = alert_dir / "dead-letter.jsonl"
    cross_80_percent(stack, DEAD)
    got = wait_requests(receiver, DEAD, 3)

    def dead_lines():
        if not dead.exists():
            return []
        return [json.loads(x) for x in dead.read_text().splitlines() if DEAD in x]

    wait_until(lambda: dead_lines(), 10, what="a dead-letter line")
    (line,) = dead_lines()
    assert line["attempts"] == 3
    assert "503" in line["last_error"]
    assert line["event"]["id"] == got[0]["headers"]["x-tollgate-event-id"]
    assert line["event"]["scope"]["id"] == DEAD and line["event"]["threshold_percent"] == 80
    time.sleep(1.0)
    assert len(receiver.of(DEAD)) == 3, "no attempt after the last one"
    assert stack.metric("tollgate_alerts_total", outcome="dead_letter") >= 1


# --------------------------------------------------------------------------- usage feed


def test_the_usage_feed_adds_up_to_the_spend_the_admin_api_reports(stack, alert_dir):
    token = stack.token(FEED)
    usages = [(120, 30), (7, 0), (1000, 250), (1, 1), (64, 64), (333, 17)]
    for i, (prompt, completion) in enumerate(usages):
        usage = f"prompt={prompt},completion={completion}"
        if i % 3 == 0:
            r = stack.chat(token, model=MODEL, usage=usage, headers={"x-request-id": f"feed-{i}"})
        elif i % 3 == 1:
            r = stack.chat(token, model=MODEL, usage=usage, stream=True, headers={"x-request-id": f"feed-{i}"})
            r.read()
        else:
            r = stack.messages(token, model=MODEL, usage=usage, headers={"x-request-id": f"feed-{i}"})
        assert r.status_code == 200, r.text
    tokens = sum(p + c for p, c in usages)
    spent = stack.wait_spend(FEED, tokens * 1000 / 1e6)
    path = alert_dir / "usage.jsonl"
    wait_until(lambda: len(feed_lines(path, FEED)) >= len(usages), 10, what="usage feed lines")
    lines = feed_lines(path, FEED)
    assert len(lines) == len(usages), lines
    assert sum(line["cost_micros"] for line in lines) == micros(spent["spend_this_month"]["usd"])
    assert sum(line["tokens"]["total"] for line in lines) == spent["tokens_today"]["used"] == tokens
    assert sorted(line["request_id"] for line in lines) == sorted(f"feed-{i}" for i in range(len(usages)))
    assert len({line["debit_id"] for line in lines}) == len(lines)
    by_id = {line["request_id"]: line for line in lines}
    first = by_id["feed-0"]
    assert first["tokens"]["input"] == 120 and first["tokens"]["output"] == 30
    assert first["cost_micros"] == 150_000 and first["cost_usd"] == 0.15
    assert first["model"] == MODEL and first["estimated"] is False and first["source"] == "settled"
    assert stack.metric("tollgate_usage_feed_lines_total", outcome="written") >= len(usages)


# --------------------------------------------------------------------------- crash mid-delivery


def test_an_alert_owed_by_a_killed_instance_is_sent_at_its_restart(stack, receiver, alert_dir):
    """The instance wins the marker and is killed while the receiver holds its first attempt: the
    outbox still owes the alert, and the restarted instance sends it, with the same event id."""
    receiver.plan[CRASH] = lambda n: "hold" if n == 1 else 200
    cross_80_percent(stack, CRASH)
    (held,) = wait_requests(receiver, CRASH, 1)
    stack.tollgate.kill()
    receiver.release.set()
    stack.start_tollgate()
    got = wait_requests(receiver, CRASH, 2)
    time.sleep(1.0)
    got = receiver.of(CRASH)
    assert len(got) == 2, got
    assert got[0]["status"] != 200, "the held attempt was never accepted"
    assert got[1]["status"] == 200
    assert got[1]["headers"]["x-tollgate-event-id"] == held["headers"]["x-tollgate-event-id"]
    assert got[1]["body"] == held["body"], "the replay is the same event"
    assert got[1]["headers"]["x-tollgate-attempt"] == "1", "sent by the restarted process"
    assert stack.metric("tollgate_alerts_total", outcome="replayed") == 1
    # The restarted instance does not claim it again: the store's marker is set.
    r = stack.chat(stack.token(CRASH), model=MODEL, usage=ZERO)
    assert r.status_code == 200
    time.sleep(1.0)
    assert len(receiver.of(CRASH)) == 2


# --------------------------------------------------------------------------- two instances, one table


def test_two_instances_racing_past_the_thresholds_send_each_alert_once(
    stack_factory, tollgate_bin, e2e_root, ddb, receiver
):
    workdir = e2e_root / f"alerts-race-{uuid.uuid4().hex[:6]}"
    ensure_table(tollgate_bin, workdir, ddb, RACE_TABLE)
    team = Team(RACE, rpm=10_000, daily_tokens=100_000_000, monthly_budget_usd=1.0)
    stacks = [
        stack_factory(
            f"alerts-race-{n}", [team],
            store=store_section(ddb.endpoint_url, RACE_TABLE),
            pricing=PRICING,
            tollgate_env={**tollgate_aws_env(), **alert_env(workdir / n, receiver)},
        )
        for n in ("a", "b")
    ]
    token = stacks[0].token(RACE)
    # $1.10 of $1 in one call, admitted at $0: no instance has seen a crossing yet.
    r = stacks[0].chat(token, model=MODEL, usage="prompt=550,completion=550", headers={"x-request-id": "race-big"})
    assert r.status_code == 200, r.text
    month = utc_month()
    wait_until(lambda: ddb.value(RACE_TABLE, f"team#{RACE}", f"spend#{month}") == micros(1.1), 10,
               what="the spend in DynamoDB")
    assert receiver.of(RACE) == []

    def raced() -> bool:
        # Bursts through both instances at once: every admission reads the spend past 80 % and
        # 100 % (and is refused: the budget is spent); each instance races for both markers.
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: stacks[i % 2].chat(token, model=MODEL, usage=ZERO).status_code, range(8)))
        outcomes = [sum(s.metric("tollgate_alerts_total", outcome=o) for s in stacks)
                    for o in ("delivered", "claimed_elsewhere", "claim_unknown")]
        return outcomes[0] + outcomes[2] >= 2 and outcomes[1] + outcomes[2] >= 2

    wait_until(raced, 30, interval=0.2, what="both instances racing for both thresholds")
    time.sleep(2.0)  # any duplicate would have arrived by now (retries start at 200 ms)
    got = receiver.of(RACE)
    assert sorted(json.loads(r["body"])["threshold_percent"] for r in got) == [80, 100], [r["body"] for r in got]
    assert all(r["status"] == 200 for r in got)
    assert len({r["headers"]["x-tollgate-event-id"] for r in got}) == 2
    verify = verify_snippet()["verify_tollgate_signature"]
    assert all(verify(SECRET, r["headers"]["x-tollgate-signature"], r["body"]) for r in got)
    # Both raced: each instance lost at least one marker or won both (then the other lost both).
    per_instance = [(s.metric("tollgate_alerts_total", outcome="delivered"),
                     s.metric("tollgate_alerts_total", outcome="claimed_elsewhere")) for s in stacks]
    assert sum(d for d, _ in per_instance) == 2 and sum(c for _, c in per_instance) == 2, per_instance
    for threshold in (80, 100):
        assert ddb.value(RACE_TABLE, f"team#{RACE}", f"warned#{month}#{threshold}") == 1

    # The two instances' feeds together account for the spend the admin API reports.
    lines = [line for n in ("a", "b") for line in feed_lines(workdir / n / "usage.jsonl", RACE)]
    spent = micros(stacks[1].usage(RACE)["spend_this_month"]["usd"])
    assert spent == micros(1.1)
    assert sum(line["cost_micros"] for line in lines) == spent, lines
    assert [line["request_id"] for line in lines if line["cost_micros"]] == ["race-big"]
