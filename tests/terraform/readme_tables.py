#!/usr/bin/env python3
"""The Inputs and Outputs tables of terraform/README.md, generated from variables.tf and
outputs.tf (between the BEGIN_TF_* / END_TF_* markers), so they cannot drift: test_static.py
fails when they differ.

    tests/terraform/readme_tables.py          # rewrite the tables in terraform/README.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hcl import Module  # noqa: E402
from stack import TERRAFORM  # noqa: E402

README = TERRAFORM / "README.md"


def _type(t: str) -> str:
    t = t.removeprefix("${").removesuffix("}").strip()
    if len(t) > 40:
        t = re.sub(r"\(\{.*", "({...})", t, flags=re.S)
        t = t + ")" * (t.count("(") - t.count(")"))
    return f"`{t}`"


def _default(v: dict) -> str:
    if "default" not in v:
        return "**required**"
    d = v["default"]
    text = "null" if d is None else json.dumps(d) if not isinstance(d, str) else json.dumps(d)
    return f"`{text}`" if len(text) <= 48 else "see variables.tf"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def tables(module: Module) -> dict[str, str]:
    inputs = ["| name | description | type | default |", "|---|---|---|---|"]
    for name, v in module.variables.items():
        inputs.append(f"| `{name}` | {_cell(v.get('description', ''))} | {_type(str(v.get('type', 'any')))} | {_default(v)} |")
    outputs = ["| name | description |", "|---|---|"]
    for name, o in module.outputs.items():
        sensitive = " (sensitive)" if o.get("sensitive") is True else ""
        outputs.append(f"| `{name}` | {_cell(o.get('description', ''))}{sensitive} |")
    return {"INPUTS": "\n".join(inputs), "OUTPUTS": "\n".join(outputs)}


def render(readme: str, module: Module) -> str:
    for marker, table in tables(module).items():
        pattern = re.compile(rf"(<!-- BEGIN_TF_{marker} -->\n).*?(<!-- END_TF_{marker} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"terraform/README.md has no BEGIN_TF_{marker}/END_TF_{marker} markers")
        readme = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), readme)
    return readme


if __name__ == "__main__":
    README.write_text(render(README.read_text(), Module.load(TERRAFORM)))
    print(f"updated {README}")
