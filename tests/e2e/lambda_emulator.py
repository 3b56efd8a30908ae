"""cargo-lambda's Lambda runtime API emulator (`cargo lambda watch --only-lambda-apis`) with
tollgate's function binaries polling it, and `cargo lambda invoke`. Used by tests/e2e/test_lambda.py
and dev/bench-lambda."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from processes import Proc, REPO, free_port, port_open, wait_until

FUNCTIONS = ("budget-enforcement", "admin-api", "usage-recorder")
EVENTS = REPO / "tests" / "events"


def event_fixture(name: str, *, token: str, secret: str, team: str) -> dict:
    """A real event shape from tests/events/ with its placeholders filled in."""
    text = (EVENTS / name).read_text()
    return json.loads(text.replace("__TOKEN__", token).replace("__SECRET__", secret).replace("__TEAM__", team))


def logs_event(payload: dict) -> dict:
    """The subscription event CloudWatch Logs sends for `payload` (gzip, then base64)."""
    data = gzip.compress(json.dumps(payload, separators=(",", ":")).encode())
    return {"awslogs": {"data": base64.b64encode(data).decode()}}


def cargo_lambda_env() -> dict[str, str]:
    """cargo finds the `cargo-lambda` subcommand in the venv."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "tollgate-target"))


class Emulator:
    """`cargo lambda watch --only-lambda-apis`, and one process per function polling it."""

    def __init__(self, workdir: Path, function_env: dict[str, str], profile: str = "debug"):
        self.workdir = workdir
        self.profile = profile
        self.port = free_port()
        self.function_env = function_env
        self.watch: Proc | None = None
        self.functions: dict[str, Proc] = {}

    def start(self) -> "Emulator":
        self.watch = Proc(
            "cargo-lambda-watch",
            ["cargo", "lambda", "watch", "--only-lambda-apis", "--ignore-changes",
             "--invoke-address", "127.0.0.1", "--invoke-port", str(self.port)],
            self.workdir, env=cargo_lambda_env(), cwd=REPO,
        ).start()
        wait_until(lambda: port_open(self.port), 60, what="cargo lambda watch listening", proc=self.watch)
        for name in FUNCTIONS:
            self.spawn(name)
        return self

    def spawn(self, name: str) -> Proc:
        """Starts (or restarts) one function's process: a cold start."""
        binary = target_dir() / self.profile / name
        assert binary.exists(), f"{binary} missing: run `cargo build --workspace`"
        env = {
            **self.function_env,
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_VERSION": "1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.port}/.rt/{name}",
        }
        if name in self.functions:
            self.functions[name].stop()
        self.functions[name] = Proc(name, [str(binary)], self.workdir, env=env, scrub_env_prefix="TOLLGATE_").start()
        return self.functions[name]

    def post(self, function: str, event: dict) -> dict:
        """An invocation over the emulator's Invoke API directly (no CLI start-up in the timing)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/2015-03-31/functions/{function}/invocations",
            data=json.dumps(event).encode(), method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def invoke(self, function: str, event: dict | str) -> dict:
        """`cargo lambda invoke`; the function's result (for HTTP functions, the ALB/API Gateway
        response document)."""
        data = self.workdir / f"{function}-event.json"
        data.write_text(event if isinstance(event, str) else json.dumps(event))
        r = subprocess.run(
            ["cargo", "lambda", "invoke", function, "--invoke-address", "127.0.0.1",
             "--invoke-port", str(self.port), "--data-file", str(data), "--output-format", "json"],
            capture_output=True, text=True, timeout=60, env=cargo_lambda_env(), cwd=REPO,
        )
        assert r.returncode == 0, (
            f"invoke {function}: rc={r.returncode}\n{r.stdout}\n{r.stderr}\n{self.functions[function].tail()}"
        )
        return json.loads(r.stdout)

    def stop(self) -> None:
        for proc in [*self.functions.values(), self.watch]:
            if proc is not None:
                proc.stop()

