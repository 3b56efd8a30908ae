"""The README's examples run as written, after the quick start, and do what the README says.

The blocks marked `<!-- readme-example: NAME -->` in README.md are run in order, in one bash
(`set -euo pipefail`) from the repository root, against the stack `dev/run` starts: the fake LLM,
tollgate with `dev/tollgate.toml`, Envoy with `envoy/local.yaml`. Only the ports differ, so that
the test never collides with a `dev/run` on this machine: the stack gets free ports, and the
examples' `127.0.0.1:10000` and `127.0.0.1:9090` are pointed at them (`dev/tollgate admin` through
`TOLLGATE_ADMIN_URL`). `dev/tollgate` runs the binary under test (`TOLLGATE_BIN`).

Each example's outcome is checked, and every refusal reason the README prints in a comment
(`"reason":"..."`) must be the one tollgate actually gave.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from processes import REPO

from e2e_stack import Stack

README = REPO / "README.md"
MARKER = re.compile(r"^<!--\s*readme-example:\s*([\w-]+)\s*-->\s*$")
SEPARATOR = "@@@readme-example"


def readme_examples(text: str | None = None) -> list[tuple[str, str]]:
    """(name, shell code) of each marked block, in README order."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    examples = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        assert i + 1 < len(lines) and lines[i + 1].startswith("```sh"), f"{m.group(1)}: no ```sh block after the marker"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        examples.append((m.group(1), "\n".join(lines[i + 2 : end])))
    return examples


def shown_reasons(code: str) -> list[str]:
    """The refusal reasons the README shows in its output comments, as the JSON body has them."""
    return [f'"reason":"{r}"' for r in re.findall(r'"reason":"((?:[^"\\]|\\.)*)"', code)]


@pytest.fixture(scope="module")
def dev_stack(e2e_root, tollgate_bin):
    workdir = e2e_root / "readme"
    stack = Stack("readme", workdir, [], tollgate_bin=tollgate_bin)
    # dev/run's configuration, on this stack's ports and with its own store file.
    stack.config_path = REPO / "dev" / "tollgate.toml"
    stack.tollgate.env = dict(
        stack.tollgate.env or {},
        TOLLGATE_SERVER__GRPC_LISTEN=f"127.0.0.1:{stack.grpc_port}",
        TOLLGATE_SERVER__HTTP_LISTEN=f"127.0.0.1:{stack.http_port}",
        TOLLGATE_STORE__PATH=str(workdir / "tollgate.redb"),
    )
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def outputs(dev_stack, tollgate_bin):
    """Runs every marked example in one shell; returns {name: stdout}."""
    examples = readme_examples()
    script = ["set -euo pipefail"]
    for name, code in examples:
        code = code.replace("127.0.0.1:10000", f"127.0.0.1:{dev_stack.listener_port}")
        code = code.replace("127.0.0.1:9090", f"127.0.0.1:{dev_stack.http_port}")
        script += [f"echo '{SEPARATOR} {name}'", code]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(TOLLGATE_BIN=str(tollgate_bin), TOLLGATE_ADMIN_URL=dev_stack.tollgate_url, NO_COLOR="1")
    run = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "\n".join(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"the README's examples failed (rc {run.returncode})\n{run.stderr}\n{run.stdout}"
    assert "command not found" not in run.stderr, run.stderr
    parts = run.stdout.split(SEPARATOR + " ")[1:]
    got = {}
    for part in parts:
        name, _, out = part.partition("\n")
        got[name] = out
    assert list(got) == [name for name, _ in examples]
    return got


EXPECTED = ["first-request", "first-refusal", "admin-change", "guardrail-finding"]


def test_the_readme_marks_the_newcomer_path():
    assert [name for name, _ in readme_examples()] == EXPECTED


def test_first_request_is_answered_and_charged(outputs):
    body = json.loads(outputs["first-request"])
    assert body["object"] == "chat.completion", body
    assert body["usage"]["total_tokens"] > 0, body


def test_sixth_request_in_a_minute_is_refused(outputs):
    out = outputs["first-refusal"]
    assert out.splitlines()[:4] == ["200"] * 4, out
    assert re.search(r"^HTTP/1\.1 429 Too Many Requests", out, re.M), out
    assert re.search(r"^retry-after: \d+", out, re.M | re.I), out
    (body,) = json_documents(out)
    assert body["error"]["code"] == "rpm_limit_exceeded", body
    assert body["reason"] == "RPM limit exceeded: 5 requests in the last 60 s, limit 5", body


def json_documents(text: str) -> list:
    """The JSON documents printed one after the other (curl adds no newline after a body)."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while (start := text.find("{", pos)) != -1:
        doc, pos = decoder.raw_decode(text, start)
        docs.append(doc)
    return docs


def test_admin_change_registers_a_client(outputs):
    refused, team, answer, usage = json_documents(outputs["admin-change"])
    assert refused["error"]["code"] == "unknown_team", refused
    assert team["id"] == "data" and team["client_ids"] == ["data-etl"], team
    assert answer["object"] == "chat.completion", answer
    assert usage["team"] == "platform" and usage["rpm"]["used"] == 5, usage


def test_guardrail_finding(outputs):
    out = outputs["guardrail-finding"]
    (report,) = json_documents(out)
    header = out[out.rindex("}") + 1 :]
    assert report["verdict"] == "blocked" and report["backend"] == "local", report
    assert report["policies"] == ["sensitiveInformation:US_SOCIAL_SECURITY_NUMBER"], report
    assert header.strip().lower() == "x-tollgate-guardrail: would-block", out


def test_reasons_shown_in_the_readme_are_the_real_ones(outputs):
    for name, code in readme_examples():
        for reason in shown_reasons(code):
            assert reason in outputs[name], f"{name}: the README shows {reason!r}; tollgate said:\n{outputs[name]}"


def test_example_extraction():
    text = "x\n<!-- readme-example: one -->\n```sh\necho 1\n# {\"reason\":\"a \\\"b\\\"\"}\n```\n```sh\nnot marked\n```\n"
    assert readme_examples(text) == [("one", 'echo 1\n# {"reason":"a \\"b\\""}')]
    assert shown_reasons(readme_examples(text)[0][1]) == ['"reason":"a \\"b\\""']
