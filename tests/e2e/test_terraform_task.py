"""The ECS task exactly as terraform/modules/render renders it, run on this machine: tollgate with
the rendered environment and Envoy with the rendered bootstrap (the container's command line).
Only what cannot be the same here changes: the ports (others may be taken), the spool directory,
and DynamoDB, which is DynamoDB Local. The JWKS and the providers stay unreachable, as they
would be without network.

It proves the health wiring the ALB relies on: the target group's health check path, answered
through Envoy from tollgate's /readyz, is healthy only while both containers are, and the
container health check (`tollgate check`) follows tollgate's readiness; and that everything else
still needs a token."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import httpx
import pytest

from dynamodb_local import tollgate_aws_env
from processes import Proc, REPO, envoy_binary, free_port, port_open, tollgate_cli_env, wait_until

sys.path.insert(0, str(REPO / "tests" / "terraform"))
from stack import FAST_OVERRIDES, TERRAFORM, apply_render  # noqa: E402


# Both Envoy attachments (envoy_attachment): the fast one adds the access log's gRPC stream to
# tollgate, the usage filters and the buffer filter, and must leave the health wiring as it is.
@pytest.fixture(scope="module", params=["four_phase", "fast"])
def rendered(request):
    return apply_render(TERRAFORM / "modules" / "render",
                        overrides=FAST_OVERRIDES if request.param == "fast" else None)


@pytest.fixture(scope="module")
def task(rendered, e2e_root, tollgate_bin, dynamodb_local):
    work = e2e_root / f"terraform-task-{uuid.uuid4().hex[:6]}"
    ddb = dynamodb_local  # the session's (conftest.py); the task's table is its own
    ddb.ensure_running()
    grpc, http, listener, admin = free_port(), free_port(), free_port(), free_port()
    env = dict(rendered["tollgate_environment"])
    env.update(
        TOLLGATE_SERVER__GRPC_LISTEN=f"127.0.0.1:{grpc}",
        TOLLGATE_SERVER__HTTP_LISTEN=f"127.0.0.1:{http}",
        TOLLGATE_STORE__DYNAMODB__SPOOL_PATH=str(work / "spool" / "spool.redb"),
        TOLLGATE_STORE__DYNAMODB__ENDPOINT_URL=ddb.endpoint_url,
        TOLLGATE_STORE__DYNAMODB__TIMEOUT_MS="5000",
        **tollgate_aws_env(),
    )
    (work / "spool").mkdir(parents=True)
    cli_env = tollgate_cli_env(**env)
    r = subprocess.run([str(tollgate_bin), "admin", "init-table"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"init-table with the rendered environment:\n{r.stdout}\n{r.stderr}"

    tollgate = Proc("tollgate", [tollgate_bin, *stack_container(rendered, "tollgate")["command"]], work / "logs",
                    env=env, scrub_env_prefix="TOLLGATE_")
    tollgate.start()
    wait_until(lambda: port_open(http), 60, what="tollgate's HTTP port", proc=tollgate)

    yaml = rendered["envoy_yaml"]
    for old, new in ((rendered["listener_port"], listener), (9901, admin), (50051, grpc), (9090, http)):
        yaml, n = re.subn(rf"port_value: {old} \}}", f"port_value: {new} }}", yaml)
        assert n >= 1, f"port {old} not in the rendered Envoy config"
    command = list(stack_container(rendered, "envoy")["command"])
    command[command.index("--config-yaml") + 1] = yaml
    envoy = Proc("envoy", [envoy_binary(), *command, "--base-id", str(listener)], work / "logs")
    envoy.start()
    wait_until(lambda: port_open(listener), 60, what="Envoy's listener", proc=envoy)
    yield {"tollgate": tollgate, "envoy": envoy, "listener": listener, "env": cli_env,
           "health": f"http://127.0.0.1:{listener}{rendered['health_check_path']}"}
    for p in (envoy, tollgate):
        p.stop()


def stack_container(rendered, name):
    return next(c for c in rendered["container_definitions"] if c["name"] == name)


def tollgate_check(tollgate_bin, task) -> subprocess.CompletedProcess:
    # The container's health check command, with the task's environment.
    return subprocess.run([str(tollgate_bin), "check"], env=task["env"], capture_output=True, text=True, timeout=30)


def test_the_health_check_passes_through_envoy_when_both_run(task, tollgate_bin):
    r = wait_until(lambda: (x := tollgate_check(tollgate_bin, task)).returncode == 0 and x, 30,
                   what="tollgate check with the rendered environment", proc=task["tollgate"])
    assert r.returncode == 0
    resp = wait_until(lambda: (x := httpx.get(task["health"], timeout=5)).status_code == 200 and x, 30,
                      what="the ALB health check path through Envoy", proc=task["envoy"])
    assert resp.json()["status"] == "ready", resp.text


def test_model_calls_still_need_a_token(task):
    r = httpx.post(f"http://127.0.0.1:{task['listener']}/v1/chat/completions",
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 401, r.text


def test_the_health_check_fails_once_tollgate_is_gone(task, tollgate_bin):
    task["tollgate"].stop(timeout=30)
    assert tollgate_check(tollgate_bin, task).returncode != 0
    r = httpx.get(task["health"], timeout=5)
    assert r.status_code == 503, f"the ALB would keep sending traffic to a task without tollgate: {r.status_code}"
