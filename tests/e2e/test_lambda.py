"""tollgate's Lambda functions as Lambda runs them: each binary polls the Lambda runtime API that
`cargo lambda watch --only-lambda-apis` emulates, events are sent with `cargo lambda invoke`, and
state lives in DynamoDB Local. One story end to end: the admin-api function registers a team
(API Gateway v2 event), budget-enforcement admits its prompts through the webhook (ALB events)
until its RPM is spent, usage-recorder charges the agentgateway access-log records of the calls
(CloudWatch Logs subscription event, gzip+base64), once even when delivered twice, and admin-api
reports the usage (Function URL event).

The functions are the workspace's debug binaries (`cargo build --workspace`); cargo-lambda comes
from PyPI (tests/requirements.txt).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamodb_local import DynamoDBLocal, DynamoDBLocalMissing, scratch_dir, tollgate_aws_env
from processes import REPO, tollgate_cli_env
from tokens import ISSUER, admin_token, mint_token
from lambda_emulator import Emulator, event_fixture, logs_event

SECRET = "lambda-webhook-secret"
# All digits, as deployments name tables from account or build numbers: set through the
# environment, it must stay a string (figment alone would read it as a number and refuse it).
TABLE = "20261130"
TEAM = "lambda-team"
CLIENT = "lambda-agent"


def fixture(name: str, token: str) -> dict:
    return event_fixture(name, token=token, secret=SECRET, team=TEAM)


def http_event(name: str, token: str, *, method: str | None = None, path: str | None = None,
               body: dict | None = None) -> dict:
    """A fixture's HTTP event, re-aimed: API Gateway v2 / Function URL events name the route in
    `rawPath` and `requestContext.http`, ALB events in `path` and `httpMethod`."""
    event = fixture(name, token)
    if "rawPath" in event:
        if path:
            event["rawPath"] = event["requestContext"]["http"]["path"] = path
        if method:
            event["requestContext"]["http"]["method"] = method
    else:
        if path:
            event["path"] = path
        if method:
            event["httpMethod"] = method
    if body is not None:
        event["body"] = json.dumps(body)
        event["isBase64Encoded"] = False
    return event


def response_json(result: dict) -> tuple[int, dict]:
    body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return result["statusCode"], json.loads(body)


@pytest.fixture(scope="module")
def lambdas(e2e_root, tollgate_bin):
    if shutil.which("cargo-lambda", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("cargo-lambda is not installed in the venv: dev/test installs tests/requirements.txt")
    workdir = e2e_root / "lambda"
    workdir.mkdir(parents=True, exist_ok=True)
    data = scratch_dir()
    try:
        ddb = DynamoDBLocal(workdir, db_path=data).start()
    except DynamoDBLocalMissing as e:
        pytest.fail(str(e))
    store_env = {
        "TOLLGATE_STORE__BACKEND": "dynamodb",
        "TOLLGATE_STORE__DYNAMODB__TABLE": TABLE,
        "TOLLGATE_STORE__DYNAMODB__ENDPOINT_URL": ddb.endpoint_url,
        "TOLLGATE_STORE__DYNAMODB__TIMEOUT_MS": "10000",
    }
    r = subprocess.run(
        [str(tollgate_bin), "admin", "init-table"], capture_output=True, text=True, timeout=120,
        env=tollgate_cli_env(**tollgate_aws_env(), **store_env),
    )
    assert r.returncode == 0, f"init-table: {r.stdout}\n{r.stderr}"
    function_env = {
        **tollgate_cli_env(**tollgate_aws_env(), **store_env),
        "TOLLGATE_IDENTITY__JWKS_FILE": str(REPO / "dev" / "keys" / "jwks.json"),
        "TOLLGATE_IDENTITY__ISSUER": ISSUER,
        "TOLLGATE_WEBHOOK__SECRET": SECRET,
        "TOLLGATE_POLICY__ADMISSION_TIMEOUT_MS": "10000",
        "TOLLGATE_POLICY__TEAM_CACHE_TTL_SECONDS": "0",
    }
    emulator = Emulator(workdir, function_env).start()
    try:
        yield emulator
    finally:
        emulator.stop()
        ddb.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_the_functions_register_admit_charge_and_report_a_team(lambdas):
    admin = admin_token()
    created = lambdas.invoke("admin-api", http_event(
        "apigwv2-admin-get-teams.json", admin, method="POST", path="/admin/teams",
        body={"id": TEAM, "tier": "standard", "client_ids": [CLIENT], "rpm": 2},
    ))
    status, team = response_json(created)
    assert status == 201, team
    assert team["id"] == TEAM and team["rpm"] == 2

    # budget-enforcement: the webhook behind an ALB target group.
    caller = mint_token(CLIENT)
    for _ in range(2):
        status, reply = response_json(lambdas.invoke("budget-enforcement", fixture("alb-webhook-request.json", caller)))
        assert status == 200
        assert reply == {"action": {"reason": f"admitted for team {TEAM}"}}
    status, reply = response_json(lambdas.invoke("budget-enforcement", fixture("alb-webhook-request.json", caller)))
    assert reply["action"]["status_code"] == 429, reply
    refusal = json.loads(reply["action"]["body"])
    assert refusal["allowed"] is False and refusal["error"]["code"] == "rpm_limit_exceeded"

    status, reply = response_json(lambdas.invoke("budget-enforcement", fixture("alb-webhook-response.json", caller)))
    assert reply == {"action": {"reason": "answer allowed"}}

    # usage-recorder: the access-log records of those calls, logged now.
    payload = fixture("cloudwatch-logs-usage.payload.json", caller)
    now_ms = int(time.time() * 1000)
    for e in payload["logEvents"]:
        e["timestamp"] = now_ms
    report = lambdas.invoke("usage-recorder", logs_event(payload))
    assert report["recorded"] == 2, report
    assert [f["event_id"] for f in report["failed"]] == [payload["logEvents"][0]["id"]], report
    expected_tokens = 1234 + 56 + 6454 + 187
    assert report["tokens"] == expected_tokens
    again = lambdas.invoke("usage-recorder", logs_event(payload))
    assert again["recorded"] == 2

    # admin-api behind a Function URL: the usage, charged once.
    status, usage = response_json(lambdas.invoke("admin-api", http_event(
        "function-url-admin-put-budget.json", admin, method="GET", path=f"/admin/teams/{TEAM}/usage",
    )))
    assert status == 200, usage
    assert usage["tokens_today"]["used"] == expected_tokens, usage
    assert usage["spend_this_month"]["usd"] * 1e6 == pytest.approx(report["cost_micros"], abs=1)

    # CloudWatch checking the destination.
    control = lambdas.invoke("usage-recorder", fixture("cloudwatch-logs-control.json", caller))
    assert control == {"control_message": True}


def test_the_admin_function_refuses_tokens_without_the_admin_scope(lambdas):
    status, body = response_json(lambdas.invoke("admin-api", fixture("apigwv2-admin-get-teams.json", mint_token(CLIENT))))
    assert status == 403, body
    status, body = response_json(lambdas.invoke("admin-api", fixture("apigwv2-admin-get-teams.json", "not-a-jwt")))
    assert status == 401, body
