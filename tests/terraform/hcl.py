"""Terraform files read with python-hcl2, in a plain shape the checks can walk.

python-hcl2 keeps HCL's quoting: keys and string literals arrive as '"name"', expressions as
'${...}', blocks as lists of dicts marked `__is_block__`. `normalize` turns that into
{"name": value} with string literals unquoted (interpolations kept as ${...}) and blocks as
lists of dicts; `Module` indexes one directory's declarations; `references` finds what an
expression refers to.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import hcl2

META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return re.sub(r'\\(["\\])', r"\1", s[1:-1])
    return s


def normalize(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ("__is_block__", "__comments__", "__inline_comments__"):
                continue
            out[_unquote(k)] = normalize(v)
        return out
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


def is_block_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v.get("__is_block__") for v in value)


def expressions(text: str) -> list[str]:
    """The ${...} parts of a string (the whole of it when it is one expression)."""
    parts, i = [], 0
    while (start := text.find("${", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        parts.append(text[start + 2 : j])
        i = j + 1
    return parts


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if not (isinstance(k, str) and k.startswith("__")):
                yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


DATA_REF = re.compile(r"(?<![\w.])data\.([a-z][a-z0-9_]*)\.([\w-]+)(?:\[[^\]]*\])?(?:\.(\w+))?")
RESOURCE_REF = re.compile(r"(?<![\w.])((?:aws|random)_[a-z0-9_]+)\.([a-z_][\w-]*)(?:\[[^\]]*\])?(?:\.(\w+))?")
SIMPLE_REF = re.compile(r"(?<![\w.])(var|local|module)\.([\w-]+)(?:\[[^\]]*\])?(?:\.([\w-]+))?")


@dataclass
class Ref:
    kind: str  # var | local | module | data | resource
    type: str  # resource/data type, or "" for var/local/module
    name: str
    attribute: str | None


def references(value: Any) -> Iterator[Ref]:
    for s in strings(value):
        for expr in expressions(s):
            # String literals inside expressions (regexes, JSON keys) are not references.
            code = re.sub(r'\\?"(?:[^"\\]|\\.)*?\\?"', '""', expr)
            for m in DATA_REF.finditer(code):
                yield Ref("data", m.group(1), m.group(2), m.group(3))
            code = DATA_REF.sub("", code)
            for m in RESOURCE_REF.finditer(code):
                yield Ref("resource", m.group(1), m.group(2), m.group(3))
            for m in SIMPLE_REF.finditer(code):
                yield Ref(m.group(1), "", m.group(2), m.group(3))


@functools.lru_cache(maxsize=256)
def parse(text: str) -> dict:
    """hcl2's parse of one file (cached by content: the mutation tests reparse copies that differ
    in one file). Callers must not modify the result."""
    return hcl2.loads(text)


@dataclass
class Module:
    """One directory of .tf files."""

    path: Path
    raw: dict[str, list[dict]] = field(default_factory=dict)  # file name -> hcl2 output
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    resources: dict[tuple[str, str], dict] = field(default_factory=dict)  # (type, name) -> body
    data: dict[tuple[str, str], dict] = field(default_factory=dict)
    modules: dict[str, dict] = field(default_factory=dict)
    providers: list[dict] = field(default_factory=list)
    raw_blocks: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # kind,type,name -> raw body
    files: dict[tuple[str, str, str], str] = field(default_factory=dict)  # kind,type,name -> file

    @classmethod
    def load(cls, path: Path) -> "Module":
        m = cls(path)
        for tf in sorted(path.glob("*.tf")):
            doc = parse(tf.read_text())
            m.raw[tf.name] = doc
            for block in doc.get("variable", []):
                for name, body in block.items():
                    m.variables[_unquote(name)] = normalize(body)
            for block in doc.get("output", []):
                for name, body in block.items():
                    m.outputs[_unquote(name)] = normalize(body)
            for block in doc.get("locals", []):
                m.locals.update(normalize(block))
            m.providers.extend(normalize(b) for b in doc.get("provider", []))
            for block in doc.get("module", []):
                for name, body in block.items():
                    m.modules[_unquote(name)] = normalize(body)
            for kind, target in (("resource", m.resources), ("data", m.data)):
                for block in doc.get(kind, []):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            key = (_unquote(rtype), _unquote(name))
                            target[key] = normalize(body)
                            m.raw_blocks[(kind,) + key] = body
                            m.files[(kind,) + key] = tf.name
        return m

    def resource(self, rtype: str, name: str) -> dict:
        return self.resources[(rtype, name)]

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == rtype}

    def default(self, variable: str) -> Any:
        return self.variables[variable].get("default")


def blocks(body: dict, name: str) -> list[dict]:
    """The blocks called `name` in a normalized body, dynamic ones included (their content)."""
    found = [b for b in body.get(name, []) if isinstance(b, dict)] if isinstance(body.get(name), list) else []
    for dyn in body.get("dynamic", []):
        if name in dyn:
            found.extend(dyn[name].get("content", []))
    return found


def walk_raw(body: dict) -> Iterator[tuple[str, Any, bool]]:
    """(name, value, is_block) of one raw hcl2 body's arguments and blocks; dynamic blocks as
    their content."""
    for key, value in body.items():
        if key in ("__is_block__", "__comments__", "__inline_comments__"):
            continue
        name = _unquote(key)
        if name == "dynamic" and isinstance(value, list):
            for dyn in value:
                for dname, spec in dyn.items():
                    if dname.startswith("__"):
                        continue
                    yield _unquote(dname), spec.get("content", []), True
            continue
        yield name, value, is_block_list(value)
