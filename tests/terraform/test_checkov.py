"""checkov (from its own virtualenv: it pins an hcl2 that conflicts with python-hcl2) finds no
failed check in terraform/, offline (--skip-download). Every skip is inline, in the resource it
concerns, with its reason; checkov-skips.txt lists them, so a new skip shows up in review instead
of growing the list silently."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from stack import HERE, REPO, TERRAFORM

SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
LISTED = HERE / "checkov-skips.txt"


def checkov_binary() -> Path:
    path = Path(os.environ.get("TOLLGATE_CHECKOV", REPO / ".venv-checkov" / "bin" / "checkov"))
    if not path.is_file():
        pytest.fail(f"checkov not found at {path}: dev/test-terraform installs it (or set TOLLGATE_CHECKOV)", pytrace=False)
    return path


def inline_skips() -> list[tuple[str, str, str]]:
    found = []
    for tf in sorted(TERRAFORM.rglob("*.tf")):
        for line in tf.read_text().splitlines():
            if m := SKIP.search(line):
                found.append((str(tf.relative_to(REPO)), m.group(1), (m.group(2) or "").strip()))
    return found


def test_checkov_finds_nothing():
    r = subprocess.run(
        [str(checkov_binary()), "-d", str(TERRAFORM), "--framework", "terraform", "--skip-download",
         "--quiet", "--compact", "--output", "json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = {k: sum(x["summary"][k] for x in reports) for k in ("passed", "failed", "skipped", "parsing_errors")}
    failed = [f"{f['check_id']} {f['resource']} ({f['file_path']}): {f['check_name']}"
              for x in reports for f in x["results"].get("failed_checks", [])]
    assert summary["parsing_errors"] == 0, r.stderr[-2000:]
    assert failed == [], "checkov failed checks:\n" + "\n".join(failed)
    assert summary["passed"] > 100, summary
    # Inline skips are honoured (one per resource instance they cover).
    assert summary["skipped"] >= len(inline_skips()), summary


def test_every_skip_is_listed_and_says_why():
    skips = inline_skips()
    for path, check, reason in skips:
        assert len(reason) >= 40, f"{path}: skip of {check} needs its reason inline"
    listed = sorted(line.split() for line in LISTED.read_text().splitlines() if line.strip())
    assert listed == sorted([p, c] for p, c, _ in skips), (
        "inline checkov skips and tests/terraform/checkov-skips.txt differ: review the new skip, then list it"
    )
