#!/usr/bin/env python3
"""The AWS (and random) provider schemas the Terraform code is checked against, read out of the
npm packages of generated provider bindings (CDK Terrain `@cdktn/provider-*`, and its
predecessor `@cdktf/provider-aws` for older provider versions). No Terraform registry is needed.

Each binding's `lib/<resource>/index.js` says, per resource and per nested block, which
arguments it takes (`synthesizeHclAttributes` / `<struct>ToHclTerraform`: value, isBlock,
storageClassType) and which are required, optional or computed (`// name - computed: x,
optional: y, required: z` above each getter). That is enough to check every resource type,
argument, block and referenced attribute in terraform/.

    tests/terraform/provider_schema.py            # regenerate tests/terraform/provider-schema.json

The committed subset covers the resource and data source types terraform/ uses, for the oldest
AWS provider the root module allows (6.22: the first with the ALB jwt-validation action) and the
newest the bindings carry, so an argument that exists in only one of them is caught.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "provider-schema.json"

# (label, npm package spec, provider source): the oldest AWS provider with jwt-validation and the
# newest the bindings track.
PACKAGES = [
    ("aws-6.22.1", "@cdktf/provider-aws@21.19.0", "hashicorp/aws"),
    ("aws-6.66.0", "@cdktn/provider-aws@25.7.0", "hashicorp/aws"),
    ("random-3.9.1", "@cdktn/provider-random@15.0.1", "hashicorp/random"),
]

ENTRY = re.compile(
    r"(\w+): \{\s*value: (.*?),\s*isBlock: (true|false),\s*type: \"(\w+)\",\s*storageClassType: \"(\w+)\",\s*\}",
    re.S,
)
STRUCT_FN = re.compile(r"function (\w+)ToHclTerraform\(struct\) \{(.*?)\n\}", re.S)
CLASS = re.compile(r"^class (\w+) extends (\w+)\.(\w+) \{(.*?)^\}", re.S | re.M)
TYPE_NEW = re.compile(r'static tfResourceType = "(\w+)"')
TYPE_OLD = re.compile(r'(\w+)\.tfResourceType = "(\w+)"')
CHILD_FN = re.compile(r"(?<![.\w])(\w+)ToHclTerraform\b")
GETTER = re.compile(r"get \w+\(\) \{\s*return this\.get\w+Attribute\('(\w+)'\)")
# d.ts: the argument's Terraform name is the anchor of its registry link; `?` marks it optional.
INTERFACE = re.compile(r"^export interface (\w+)(?: extends [\w.]+)? \{(.*?)^\}", re.S | re.M)
FIELD = re.compile(r"#(\w+) \w+#\w+\}(?:(?!\*/).)*\*/\s*readonly \w+(\??):", re.S)


def lcfirst(s: str) -> str:
    return s[:1].lower() + s[1:]


def parse_module(js: str, dts: str) -> dict[str, dict]:
    """{"resource.<type>" or "data.<type>": schema} for what one index.js / index.d.ts defines.
    A schema is {"attributes": {name: {"required": bool, "type": string|number|any|...}},
    "readable": [names], "blocks": {name: {..., "nesting": list|set|..., "required": bool}}}.
    An attribute of type `any` is a block tree the bindings do not spell out (e.g. WAF rule
    statements): its contents are not checked."""
    structs = {m.group(1): m.group(2) for m in STRUCT_FN.finditer(js)}
    required = {
        lcfirst(m.group(1)).removesuffix("Config"): {f.group(1): f.group(2) != "?" for f in FIELD.finditer(m.group(2))}
        for m in INTERFACE.finditer(dts)
    }

    def schema(fn: str, body: str, seen: tuple[str, ...] = ()) -> dict:
        attributes, blocks = {}, {}
        for m in ENTRY.finditer(body):
            name, value, is_block = m.group(1), m.group(2), m.group(3) == "true"
            if not is_block:
                attributes[name] = {"required": required.get(fn, {}).get(name, False), "type": m.group(5)}
                continue
            child = CHILD_FN.search(value)
            if child and child.group(1) in structs and child.group(1) not in seen:
                blocks[name] = schema(child.group(1), structs[child.group(1)], seen + (fn,))
            else:
                blocks[name] = {"attributes": {}, "blocks": {}}
            blocks[name]["nesting"] = m.group(4)
            blocks[name]["required"] = required.get(fn, {}).get(name, False)
        return {"attributes": attributes, "blocks": blocks}

    found = {}
    for m in CLASS.finditer(js):
        name, base, body = m.group(1), m.group(3), m.group(4)
        if base not in ("TerraformResource", "TerraformDataSource"):
            continue
        t = TYPE_NEW.search(body) or next((o for o in TYPE_OLD.finditer(js) if o.group(1) == name), None)
        if not t:
            continue
        synth = re.search(r"synthesizeHclAttributes\(\) \{(.*?)\n    \}", body, re.S)
        s = schema(lcfirst(name), synth.group(1) if synth else "")
        s["readable"] = sorted(set(GETTER.findall(body)) | set(s["attributes"]))
        kind = "data" if base == "TerraformDataSource" else "resource"
        found[f"{kind}.{t.group(t.lastindex)}"] = s
    return found


def used_types() -> set[str]:
    """`resource.aws_x` / `data.aws_x` keys for every type declared under terraform/."""
    types = set()
    for tf in (REPO / "terraform").rglob("*.tf"):
        if ".terraform" in tf.parts:
            continue
        for m in re.finditer(r'^\s*(resource|data)\s+"(\w+)"', tf.read_text(), re.M):
            types.add(f"{m.group(1)}.{m.group(2)}")
    return types


def extract(spec: str, wanted: set[str], prefix: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", spec], cwd=tmp, check=True, capture_output=True)
        tgz = next(Path(tmp).glob("*.tgz"))
        out = {}
        with tarfile.open(tgz) as tar:
            for member in tar:
                if not (member.name.startswith("package/lib/") and member.name.endswith("/index.js")):
                    continue
                directory = member.name.split("/")[2]
                kind = "data" if directory.startswith("data-") else "resource"
                name = prefix + "_" + directory.removeprefix("data-").removeprefix(prefix + "-").replace("-", "_")
                if f"{kind}.{name}" not in wanted:
                    continue
                dts = tar.extractfile(member.name.replace("index.js", "index.d.ts"))
                out.update(parse_module(tar.extractfile(member).read().decode(), dts.read().decode()))
        return {k: v for k, v in out.items() if k in wanted}


def main() -> int:
    wanted = used_types()
    result = {"generated_by": "tests/terraform/provider_schema.py", "providers": {}}
    for label, spec, source in PACKAGES:
        prefix = source.split("/")[1]
        mine = {t for t in wanted if t.split(".")[1].startswith(prefix + "_")}
        schemas = extract(spec, mine, prefix)
        missing = sorted(mine - schemas.keys())
        result["providers"][label] = {"package": spec, "source": source, "types": dict(sorted(schemas.items()))}
        print(f"{label}: {len(schemas)} types from {spec}" + (f"; not in it: {missing}" if missing else ""))
    OUT.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
