"""Nothing lost in a crash: tollgate journals every admitted model call until it is settled, and
a restarted tollgate charges what the killed one left at its estimated prompt, exactly once.

25 streaming calls are held open through Envoy (the fake upstream pauses between events), tollgate
is SIGKILLed with all of them in flight, and restarted on the same data (the embedded store's redb
file; for DynamoDB, the same table and the same spool file, where the journal lives). The team must
then have been charged the prompts of exactly those 25 calls, on top of what it had spent before;
a second restart charges nothing more. A SIGTERM whose grace period ends with streams in flight
leaves nothing in the journal for the next start either. Calls that reuse a request id are each
charged (a debit's id, which DynamoDB deduplicates on, is each admission's own).

The DynamoDB tests need `npm ci` at the repository root (DynamoDB Local) and Java 17.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from dynamodb_local import DynamoDBLocal, DynamoDBLocalMissing, tollgate_aws_env
from admin import micros
from processes import free_port, tollgate_cli_env, wait_until
from tollgate_config import Team, render_tollgate_config

MODEL = "journal-model"
# $1000 per million tokens in and out: 1,000 micro-dollars a token.
PRICING = {"models": {MODEL: {"input": 1000.0, "output": 1000.0}}}
MICROS_PER_TOKEN = 1000
STREAMS = 25
RECOVERED = "tollgate_journal_recovered_total"
ABANDONED = "tollgate_journal_abandoned_total"
# Before the kill: one call settled normally (30 tokens).
BEFORE = "prompt=10,completion=20"
BEFORE_TOKENS = 30


def _team(team_id: str) -> Team:
    return Team(team_id, rpm=10_000, daily_tokens=100_000_000, monthly_budget_usd=10_000.0)


def prompt(i: int) -> str:
    """Call i's prompt: 400 + 4i characters, estimated at 100 + i tokens (4 characters a token)."""
    return "x" * (400 + 4 * i)


def estimated_tokens(n: int) -> int:
    return sum(100 + i for i in range(n))


class HeldStreams:
    """`n` streaming chat calls held open by the fake upstream (one SSE event every 500 ms, a long
    text), each in its own thread, until the connection breaks or `timeout` passes."""

    def __init__(self, stack, token: str, n: int, marker: str, timeout: float = 90.0):
        self.stack, self.token, self.n, self.marker, self.timeout = stack, token, n, marker, timeout
        self.started = [threading.Event() for _ in range(n)]
        self.status: list[int | None] = [None] * n
        self.threads = [threading.Thread(target=self._one, args=(i,), daemon=True) for i in range(n)]

    def _one(self, i: int) -> None:
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt(i)}]}
        headers = {
            "authorization": f"Bearer {self.token}",
            "x-test-id": self.marker,
            "x-fake-usage": "prompt=5000,completion=5000",
            "x-fake-event-pause-ms": "500",
            "x-fake-text": " ".join(f"word{w}" for w in range(400)),
        }
        try:
            with httpx.stream("POST", self.stack.base_url + "/v1/chat/completions", json=body, headers=headers,
                              timeout=self.timeout) as r:
                self.status[i] = r.status_code
                for _ in r.iter_raw():
                    self.started[i].set()
        except httpx.HTTPError:
            pass
        finally:
            self.started[i].set()

    def start(self) -> "HeldStreams":
        for t in self.threads:
            t.start()
        return self

    def wait_all_streaming(self, timeout: float = 30.0) -> None:
        """Every call reached the upstream, and its answer is streaming to the client."""
        wait_until(lambda: len(self.stack.upstream_requests(self.marker)) == self.n, timeout,
                   what=f"{self.n} calls at the upstream", proc=self.stack.tollgate)
        for i, event in enumerate(self.started):
            assert event.wait(timeout), f"call {i} is not streaming"
        assert self.status == [200] * self.n, self.status

    def join(self, timeout: float = 30.0) -> None:
        for t in self.threads:
            t.join(timeout)


def charged(stack, team: str) -> tuple[int, int]:
    """(tokens today, spend this month in micro-dollars) from the admin usage API."""
    u = stack.usage(team)
    return u["tokens_today"]["used"], micros(u["spend_this_month"]["usd"])


def wait_charged(stack, team: str, tokens: int, timeout: float = 10.0) -> None:
    want = (tokens, tokens * MICROS_PER_TOKEN)
    seen = []

    def ok():
        seen.append(charged(stack, team))
        return seen[-1] == want

    try:
        wait_until(ok, timeout, interval=0.1, what=f"{team} charged {want}")
    except TimeoutError:
        raise AssertionError(f"{team}: expected (tokens, micros) {want}, last seen {seen[-3:]}") from None


def recovery_logs(stack) -> list[str]:
    text = stack.tollgate.stderr_path.read_text(errors="replace") + stack.tollgate.stdout_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "left unsettled" in line]


def crash_with_streams_in_flight_and_restart(s, team: str, marker: str) -> None:
    token = s.token(team)
    r = s.chat(token, model=MODEL, marker=marker, usage=BEFORE)
    assert r.status_code == 200, r.text
    wait_charged(s, team, BEFORE_TOKENS)

    streams = HeldStreams(s, token, STREAMS, f"{marker}-held").start()
    streams.wait_all_streaming()
    # Admitted well before the kill: each journal entry was committed right after its admission.
    time.sleep(1.0)
    assert charged(s, team) == (BEFORE_TOKENS, BEFORE_TOKENS * MICROS_PER_TOKEN), "settled before the kill?"
    s.tollgate.kill()
    streams.join()

    s.start_tollgate()
    # The prompts of exactly those calls, on top of what was charged before.
    expected = BEFORE_TOKENS + estimated_tokens(STREAMS)
    wait_charged(s, team, expected)
    assert s.metric(RECOVERED, team=team) == STREAMS, s.tollgate_get("/metrics").text[-3000:]
    logs = recovery_logs(s)
    summary = [line for line in logs if "teams=1" in line]
    assert summary and f"calls={STREAMS}" in summary[-1], logs
    assert f"tokens={estimated_tokens(STREAMS)}" in summary[-1], summary[-1]

    # Nothing is left for the next start: a second restart charges nothing more.
    s.tollgate.stop()
    s.start_tollgate()
    assert s.metric(RECOVERED) == 0
    time.sleep(1.0)
    assert charged(s, team) == (expected, expected * MICROS_PER_TOKEN)
    # And tollgate meters as before.
    r = s.chat(token, model=MODEL, marker=marker, usage=BEFORE)
    assert r.status_code == 200, r.text
    wait_charged(s, team, expected + BEFORE_TOKENS)


# --------------------------------------------------------------------------- embedded store


def test_sigkill_with_streams_in_flight_charges_their_prompts_once_embedded(stack_factory, marker):
    s = stack_factory("journal-embedded", [_team("jr-embedded")], pricing=PRICING)
    try:
        crash_with_streams_in_flight_and_restart(s, "jr-embedded", marker)
    finally:
        s.stop()


def test_sigterm_leaves_nothing_for_the_next_start(stack_factory, tollgate_bin, marker):
    """SIGTERM with streams that outlast the grace period: they are charged before tollgate exits
    (what passed, the prompt at least), and the next start finds nothing to recover."""
    team = "jr-drain"
    s = stack_factory("journal-drain", [_team(team)], pricing=PRICING)
    try:
        s.config_path.write_text(s.config_path.read_text().replace(
            "[server]\n", "[server]\nshutdown_grace_seconds = 1\n", 1))
        s.tollgate.stop()
        s.start_tollgate()
        token = s.token(team)
        streams = HeldStreams(s, token, 5, f"{marker}-held").start()
        streams.wait_all_streaming()
        s.tollgate._signal_group(signal.SIGTERM)
        wait_until(lambda: not s.tollgate.alive(), 20, what="tollgate to exit after SIGTERM")
        assert s.tollgate.returncode() == 0, s.tollgate.tail()
        # (Envoy goes on streaming those answers unprocessed once tollgate let them go.)
        s.tollgate.stop()
        s.start_tollgate()
        tokens, spend = charged(s, team)
        assert tokens >= estimated_tokens(5), f"the streams' prompts were not charged: {tokens} tokens"
        assert spend == tokens * MICROS_PER_TOKEN
        assert s.metric(RECOVERED) == 0, "the journal kept calls a clean shutdown had settled"
        assert not recovery_logs(s)
        time.sleep(1.0)
        assert charged(s, team) == (tokens, spend)
    finally:
        s.stop()


# --------------------------------------------------------------------------- DynamoDB, through the spool

TABLE = "tollgate-journal"


@pytest.fixture(scope="module")
def ddb(e2e_root):
    try:
        d = DynamoDBLocal(e2e_root / f"journal-ddb-{uuid.uuid4().hex[:6]}" / "logs")
    except DynamoDBLocalMissing as e:
        pytest.fail(str(e), pytrace=False)
    d.start()
    yield d
    d.proc.stop(timeout=10)


def store_section(ddb: DynamoDBLocal, **extra) -> dict:
    return {"backend": "dynamodb", "dynamodb": {
        "table": TABLE, "region": "us-east-1", "endpoint_url": ddb.endpoint_url, "timeout_ms": 2000,
        "read_cache_ms": 0, **extra}}


def init_table(tollgate_bin, workdir, ddb: DynamoDBLocal) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "init-table.toml"
    config.write_text(render_tollgate_config(
        grpc_port=free_port(), http_port=free_port(), teams=[], store_path=None,
        store=store_section(ddb, timeout_ms=10_000, spool_path=str(workdir / "init-spool.redb"))))
    r = subprocess.run([str(tollgate_bin), "admin", "init-table", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, env=tollgate_cli_env(**tollgate_aws_env()))
    assert r.returncode == 0, f"init-table: rc={r.returncode}\n{r.stdout}\n{r.stderr}"


def debit_markers(ddb: DynamoDBLocal) -> int:
    items = ddb.client().scan(TableName=TABLE, ProjectionExpression="pk")["Items"]
    return sum(1 for item in items if item["pk"]["S"].startswith("debit#"))


def test_sigkill_with_streams_in_flight_charges_their_prompts_once_dynamodb(stack_factory, tollgate_bin, e2e_root,
                                                                           ddb, marker):
    init_table(tollgate_bin, e2e_root / f"journal-init-{uuid.uuid4().hex[:6]}", ddb)
    team = "jr-dynamodb"
    s = stack_factory("journal-dynamodb", [_team(team)], pricing=PRICING, store=store_section(ddb),
                      tollgate_env=tollgate_aws_env())
    try:
        crash_with_streams_in_flight_and_restart(s, team, marker)
        # The recovered charges went to DynamoDB as debits with the calls' request ids.
        assert debit_markers(ddb) == 1 + STREAMS + 1
        assert s.metric("tollgate_spool_pending") == 0
    finally:
        s.stop()


def test_calls_that_reuse_a_request_id_are_each_charged_dynamodb(stack_factory, tollgate_bin, e2e_root, ddb, marker):
    """A client chooses its x-request-id (Envoy keeps it). DynamoDB takes a debit id it has seen
    for a replay, so a debit id that is just the request id would let every call after the first
    that reuses one go uncharged."""
    init_table(tollgate_bin, e2e_root / f"journal-init-{uuid.uuid4().hex[:6]}", ddb)
    team = "jr-reused-id"
    s = stack_factory("journal-reused-id", [_team(team)], pricing=PRICING, store=store_section(ddb),
                      tollgate_env=tollgate_aws_env())
    try:
        token = s.token(team)
        for _ in range(3):
            r = s.chat(token, model=MODEL, marker=marker, usage=BEFORE, headers={"x-request-id": "the-same-id"})
            assert r.status_code == 200, r.text
        assert {q["headers"]["x-request-id"] for q in s.upstream_requests(marker)} == {"the-same-id"}
        wait_charged(s, team, 3 * BEFORE_TOKENS)
    finally:
        s.stop()
