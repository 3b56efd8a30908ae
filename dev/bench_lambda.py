"""Cold and warm start of tollgate's Lambda functions (release builds for this machine), each
process polling the Lambda runtime API of `cargo lambda watch --only-lambda-apis`, with DynamoDB
Local as the table.

Cold: from starting the function's process to the answer of its first invocation (init, then one
request: what a cold start adds to a caller's wait). Warm: later invocations. Medians over runs.

    .venv/bin/python dev/bench_lambda.py [runs]     (dev/bench-lambda builds and runs it)
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from dynamodb_local import DynamoDBLocal, scratch_dir, tollgate_aws_env  # noqa: E402
from harness import ISSUER, REPO, admin_token, mint_token, tollgate_cli_env  # noqa: E402
from lambda_emulator import FUNCTIONS, Emulator, event_fixture, logs_event, target_dir  # noqa: E402

SECRET = "bench-secret"


def fixture(name: str, token: str) -> dict:
    return event_fixture(name, token=token, secret=SECRET, team="bench")


def events() -> dict[str, dict]:
    caller = mint_token("bench-agent")
    logs = fixture("cloudwatch-logs-usage.payload.json", caller)
    now_ms = int(time.time() * 1000)
    for e in logs["logEvents"]:
        e["timestamp"] = now_ms
    return {
        "budget-enforcement": fixture("alb-webhook-request.json", caller),
        "admin-api": fixture("apigwv2-admin-get-teams.json", admin_token()),
        "usage-recorder": logs_event(logs),
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    workdir = Path(tempfile.mkdtemp(prefix="bench-lambda-"))
    data = scratch_dir()
    ddb = DynamoDBLocal(workdir, db_path=data).start()
    store_env = {
        "TOLLGATE_STORE__BACKEND": "dynamodb",
        "TOLLGATE_STORE__DYNAMODB__TABLE": "bench",
        "TOLLGATE_STORE__DYNAMODB__ENDPOINT_URL": ddb.endpoint_url,
    }
    tollgate = target_dir() / "release" / "tollgate"
    subprocess.run([str(tollgate), "admin", "init-table"], check=True, capture_output=True,
                   env=tollgate_cli_env(**tollgate_aws_env(), **store_env))
    emulator = Emulator(workdir, {
        **tollgate_cli_env(**tollgate_aws_env(), **store_env),
        "TOLLGATE_IDENTITY__JWKS_FILE": str(REPO / "dev" / "keys" / "jwks.json"),
        "TOLLGATE_IDENTITY__ISSUER": ISSUER,
        "TOLLGATE_WEBHOOK__SECRET": SECRET,
        "TOLLGATE_TIERS__STANDARD__RPM": "1000000",
    }, profile="release").start()
    try:
        team = {"id": "bench", "tier": "standard", "client_ids": ["bench-agent"]}
        admin = fixture("apigwv2-admin-get-teams.json", admin_token())
        admin["requestContext"]["http"]["method"] = "POST"
        admin["rawPath"] = admin["requestContext"]["http"]["path"] = "/admin/teams"
        admin["body"] = json.dumps(team)
        assert emulator.post("admin-api", admin)["statusCode"] == 201
        sample = events()
        print(f"{'function':<20} {'cold ms':>8} {'warm ms':>8}   (median of {runs}; release build, this machine)")
        for name in FUNCTIONS:
            cold, warm = [], []
            for _ in range(runs):
                started = time.perf_counter()
                emulator.spawn(name)
                emulator.post(name, sample[name])
                cold.append((time.perf_counter() - started) * 1000)
                for _ in range(5):
                    started = time.perf_counter()
                    emulator.post(name, sample[name])
                    warm.append((time.perf_counter() - started) * 1000)
            print(f"{name:<20} {statistics.median(cold):>8.1f} {statistics.median(warm):>8.1f}")
        for name in FUNCTIONS:
            size = (target_dir() / "release" / name).stat().st_size
            print(f"{name:<20} binary {size / 1e6:.1f} MB (x86_64, unstripped)")
    finally:
        emulator.stop()
        ddb.stop()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
