"""Envoy configs for dev/bench, written into a directory: the upstream (direct_response) and
Envoy alone from bench/envoy-bench.json, and each attachment rendered from the real
envoy/local.yaml (fast) and envoy/local-guarded.yaml (guarded), pointed at a given ext_proc
server. Each runs in its own Envoy process with one worker, so no two scenarios share a core's
worker thread.

  python dev/bench_envoy.py OUTDIR   -> prints "name port config" lines
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import render_envoy_config  # noqa: E402

UPSTREAM = 10103
TOLLGATE_GRPC = 10150
NOOP_GRPC = 10160


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = json.loads((ROOT / "bench" / "envoy-bench.json").read_text())
    listeners = {l["name"]: l for l in base["static_resources"]["listeners"]}
    rows = []

    def only(listener: str, admin: int) -> dict:
        d = copy.deepcopy(base)
        d["admin"]["address"]["socket_address"]["port_value"] = admin
        d["static_resources"]["listeners"] = [copy.deepcopy(listeners[listener])]
        d["static_resources"]["clusters"] = [c for c in d["static_resources"]["clusters"] if c["name"] == "upstream"]
        return d

    (out / "upstream.json").write_text(json.dumps(only("upstream", 10190)))
    rows.append(("upstream", UPSTREAM, out / "upstream.json"))
    (out / "alone.json").write_text(json.dumps(only("direct", 10191)))
    rows.append(("alone", 10101, out / "alone.json"))

    scenarios = [
        # name, source, ext_proc server, listener, admin
        ("noop-fast", "local.yaml", NOOP_GRPC, 10111, 10192),
        ("tollgate-fast", "local.yaml", TOLLGATE_GRPC, 10112, 10193),
        ("noop-guarded", "local-guarded.yaml", NOOP_GRPC, 10113, 10194),
        ("tollgate-guarded", "local-guarded.yaml", TOLLGATE_GRPC, 10114, 10195),
    ]
    for name, source, grpc, listener, admin in scenarios:
        path = out / f"{name}.yaml"
        path.write_text(render_envoy_config(ROOT / "envoy" / source, listener=listener, admin=admin,
                                            grpc=grpc, upstream=UPSTREAM))
        rows.append((name, listener, path))
    for name, port, path in rows:
        print(name, port, path)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
