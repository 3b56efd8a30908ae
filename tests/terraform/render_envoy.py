#!/usr/bin/env python3
"""Rewrite envoy/ecs.yaml and envoy/ecs-fast.yaml: modules/render's Envoy template rendered with the
example values (render-example.tfvars.json), with the four-phase and the fast attachment. The
wiring check envoy_template fails while they differ from the template.

    tests/terraform/render_envoy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import FAST_OVERRIDES, REPO, TERRAFORM, apply_render  # noqa: E402

RENDERINGS = {"ecs.yaml": {}, "ecs-fast.yaml": FAST_OVERRIDES}


def main() -> None:
    for name, overrides in RENDERINGS.items():
        path = REPO / "envoy" / name
        text = apply_render(TERRAFORM / "modules" / "render", overrides=overrides)["envoy_yaml"]
        if path.read_text() != text:
            path.write_text(text)
            print(f"updated {path}")


if __name__ == "__main__":
    main()
