"""Envoy configurations for the tests: the shipped envoy/*.yaml with their placeholder ports
replaced by a stack's free ports, so the tests run exactly the YAML `dev/run` uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

from processes import REPO

# The placeholder ports in envoy/*.yaml (`port_value:` lines).
ENVOY_LISTENER_PORT = 10000
ENVOY_ADMIN_PORT = 9901
TOLLGATE_GRPC_PORT = 50051
UPSTREAM_PORT = 8081


_PORT_RE = re.compile(r"(port_value:\s*)(\d+)")
_FILENAME_RE = re.compile(r"(filename:\s*)([^\s,}]+)")


def render_envoy_config(source: Path, *, listener: int, admin: int, grpc: int, upstream: int) -> str:
    """Substitute the placeholder ports and make relative `filename:` paths absolute."""
    mapping = {
        ENVOY_LISTENER_PORT: listener,
        ENVOY_ADMIN_PORT: admin,
        TOLLGATE_GRPC_PORT: grpc,
        UPSTREAM_PORT: upstream,
    }
    text = source.read_text()

    def port(m: re.Match) -> str:
        value = int(m.group(2))
        if value not in mapping:
            raise ValueError(f"{source}: unexpected port_value {value} (known: {sorted(mapping)})")
        return f"{m.group(1)}{mapping[value]}"

    def filename(m: re.Match) -> str:
        raw = m.group(2).strip("\"'")
        path = Path(raw)
        if not path.is_absolute():
            path = REPO / path
        return f"{m.group(1)}{json.dumps(str(path))}"

    text = _PORT_RE.sub(port, text)
    text = _FILENAME_RE.sub(filename, text)
    return text

