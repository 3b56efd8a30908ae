"""What modules/render produces, read by the programs that will read it in AWS: the tollgate
binary (`tollgate config`) with each rendered environment, Envoy (`envoy --mode validate` with
the container's own command line, with either attachment). botocore's ECS model and the fixture-based filter check are
wiring checks (wiring.py). The task itself runs in tests/e2e/test_terraform_task.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stack import REPO

sys.path.insert(0, str(REPO / "tests" / "e2e"))
import processes  # noqa: E402


@pytest.fixture(scope="module")
def tollgate_bin():
    path = processes.tollgate_binary()
    if path is None:
        pytest.fail("tollgate binary not found: cargo build, or set TOLLGATE_BIN", pytrace=False)
    return path


def tollgate_config(tollgate_bin, environment: dict[str, str]) -> dict:
    env = processes.tollgate_cli_env(**environment)
    r = subprocess.run([str(tollgate_bin), "config"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, f"tollgate config refused the rendered environment:\n{r.stderr}"
    return json.loads(r.stdout)


def test_the_sidecar_reads_its_rendered_environment(stack, tollgate_bin):
    s = tollgate_config(tollgate_bin, stack.rendered["tollgate_environment"])
    assert s["store"]["backend"] == "dynamodb"
    assert s["store"]["dynamodb"]["table"] == "tollgate"
    assert s["store"]["dynamodb"]["spool_path"].startswith(stack.rendered["spool_dir"] + "/")
    assert s["identity"]["issuer"] == stack.rendered["issuer"]
    assert s["identity"]["jwks_url"] == stack.rendered["jwks_url"]
    assert s["server"]["grpc_listen"] == "127.0.0.1:50051"
    assert s["server"]["shutdown_grace_seconds"] == 20
    assert s["server"]["shutdown_grace_seconds"] < stack.rendered["stop_timeout"]
    assert s["log"]["format"] == "json"
    # The guardrail's published version is a number in Terraform; tollgate must read a string.
    assert s["guardrail"]["mode"] == "observe"
    assert s["guardrail"]["bedrock"] == {
        "guardrail_id": "gr-example1", "guardrail_version": "1", "region": "eu-west-1",
        "endpoint_url": None, "timeout_ms": 1500,
    }


@pytest.mark.parametrize("function", ["budget-enforcement", "admin-api", "usage-recorder"])
def test_each_function_reads_its_rendered_environment(stack, tollgate_bin, function):
    env = stack.rendered["lambda_environments"][function]
    s = tollgate_config(tollgate_bin, env)
    assert s["store"]["backend"] == "dynamodb", "the functions refuse any other store"
    assert s["store"]["dynamodb"]["table"] == "tollgate"
    assert s["identity"]["jwks_url"] == stack.rendered["jwks_url"]
    if function == "budget-enforcement":
        assert s["webhook"]["secret"] == "example-webhook-secret"
    else:
        assert s["webhook"]["secret"] is None, "only budget-enforcement needs the webhook secret"
    if function == "usage-recorder":
        assert s["guardrail"]["bedrock"] is None
    else:
        assert s["guardrail"]["bedrock"]["guardrail_version"] == "1"


def test_without_a_guardrail_the_mode_is_off(stack, tollgate_bin, tmp_path):
    from stack import TERRAFORM, apply_render

    rendered = apply_render(TERRAFORM / "modules" / "render", overrides={"guardrail": None})
    s = tollgate_config(tollgate_bin, rendered["tollgate_environment"])
    assert s["guardrail"]["mode"] == "off"
    assert s["guardrail"]["bedrock"] is None


@pytest.mark.parametrize("attachment", ["four_phase", "fast"])
def test_envoy_validates_the_containers_own_command_line(stack, attachment):
    rendered = stack.rendered if attachment == "four_phase" else stack.rendered_fast
    envoy = next(c for c in rendered["container_definitions"] if c["name"] == "envoy")
    assert envoy["entryPoint"] == ["/usr/local/bin/envoy"]
    r = subprocess.run([str(processes.envoy_binary()), "--mode", "validate", *envoy["command"]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"envoy --mode validate {envoy['command'][2:]}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def test_envoy_rejects_a_broken_rendering(stack):
    """Negative control: validation of --config-yaml really reads the YAML."""
    command = list(stack.container("envoy")["command"])
    command[1] = command[1].replace("cluster: tollgate_http", "cluster: no_such_cluster")
    r = subprocess.run([str(processes.envoy_binary()), "--mode", "validate", *command],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
