"""Envoy configs for dev/bench, written into a directory: the upstream (direct_response) and
Envoy alone from bench/envoy-bench.json, and each attachment rendered from the real
envoy/local-fast.yaml (fast) and envoy/local.yaml (four-phase, guarded), pointed at a given ext_proc
server. Each runs in its own Envoy process with one worker, so no two scenarios share a core's
worker thread.

  python dev/bench_envoy.py OUTDIR   -> prints "name port admin_port config" lines

BENCH_EXPLORE=1 adds floors of attachments that are not shipped (see `scenarios`).
BENCH_VARIANTS="name ..." adds one four-phase scenario `tollgate-guarded-NAME` per tollgate variant,
pointed at that variant's gRPC port (VARIANT_GRPC + its index; dev/bench starts the variants).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import render_envoy_config  # noqa: E402

UPSTREAM = 10103
TOLLGATE_GRPC = 10150
NOOP_GRPC = 10160
VARIANT_GRPC = 10170


def _cut(text: str, start_marker: str, end_marker: str) -> str:
    start = text.index(start_marker)
    return text[:start] + text[text.index(end_marker, start):]


def admission_only(text: str) -> str:
    """The admission filter alone: one synchronous message, nothing reads or reports the
    response (no usage filters, no access log): the floor of any attachment that admits on the
    request body."""
    return without_access_log(without_usage_filters(text))


def without_usage_filters(text: str) -> str:
    """The fast attachment without json_to_metadata and sse_to_metadata (no usage read)."""
    return _cut(text, "          - name: envoy.filters.http.json_to_metadata",
                "          - name: envoy.filters.http.buffer")


def without_access_log(text: str) -> str:
    """The fast attachment without its access log (nothing reported)."""
    return _cut(text, "          access_log:\n", "          route_config:")


def admission_only_no_attributes(text: str) -> str:
    """`noop-admission-only` without request_attributes (what CEL costs Envoy; tollgate needs them)."""
    return "\n".join(line for line in admission_only(text).split("\n") if "request_attributes:" not in line)


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
    rows.append(("upstream", UPSTREAM, 10190, out / "upstream.json"))
    (out / "alone.json").write_text(json.dumps(only("direct", 10191)))
    rows.append(("alone", 10101, 10191, out / "alone.json"))

    scenarios = [
        # name, source, ext_proc server, listener, admin, change to the rendered config
        ("noop-fast", "local-fast.yaml", NOOP_GRPC, 10111, 10192, None),
        ("tollgate-fast", "local-fast.yaml", TOLLGATE_GRPC, 10112, 10193, None),
        ("noop-guarded", "local.yaml", NOOP_GRPC, 10113, 10194, None),
        ("tollgate-guarded", "local.yaml", TOLLGATE_GRPC, 10114, 10195, None),
    ]
    if os.environ.get("BENCH_EXPLORE"):
        # Floors of attachments not shipped, to see what each part of the fast one costs.
        scenarios += [
            ("noop-admission-only", "local-fast.yaml", NOOP_GRPC, 10115, 10196, admission_only),
            ("noop-fast-no-usage-filters", "local-fast.yaml", NOOP_GRPC, 10116, 10197, without_usage_filters),
            ("noop-fast-no-access-log", "local-fast.yaml", NOOP_GRPC, 10117, 10198, without_access_log),
            ("noop-admission-only-no-attributes", "local-fast.yaml", NOOP_GRPC, 10118, 10199,
             admission_only_no_attributes),
        ]
    for i, variant in enumerate(os.environ.get("BENCH_VARIANTS", "").split()):
        scenarios.append((f"tollgate-guarded-{variant}", "local.yaml", VARIANT_GRPC + i,
                          10120 + i, 10200 + i, None))
    for name, source, grpc, listener, admin, change in scenarios:
        path = out / f"{name}.yaml"
        text = render_envoy_config(ROOT / "envoy" / source, listener=listener, admin=admin,
                                   grpc=grpc, upstream=UPSTREAM)
        path.write_text(change(text) if change else text)
        rows.append((name, listener, admin, path))
    for name, port, admin, path in rows:
        print(name, port, admin, path)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
