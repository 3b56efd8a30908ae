"""Latency the output guardrail adds to streamed answers, through real Envoy and tollgate.

For each setting (guardrail off, enforce with the buffered strategy, enforce with the async
strategy) it streams the same answer -- 80 words, 20 ms apart, as a model streams -- and reports
the time to the first content byte and to the end, median over the runs.

    .venv/bin/python dev/bench_guardrail.py [runs]     (dev/bench-guardrail builds and runs it)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from harness import Stack, Team, mint_token  # noqa: E402

WORDS = " ".join(f"word{i}" for i in range(80))
LOCAL = {"pii": [{"type": "EMAIL", "action": "ANONYMIZE"}, {"type": "US_SOCIAL_SECURITY_NUMBER", "action": "BLOCK"}]}
SETTINGS = {
    "off": {"mode": "off"},
    "buffered": {"mode": "enforce", "local": LOCAL, "streaming": {"strategy": "buffered", "window_chars": 1000}},
    "buffered/200": {"mode": "enforce", "local": LOCAL,
                     "streaming": {"strategy": "buffered", "window_chars": 200, "overlap_chars": 50}},
    "async": {"mode": "enforce", "local": LOCAL, "streaming": {"strategy": "async", "window_chars": 1000}},
}


def one_stream(base: str, token: str) -> tuple[float, float]:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {token}", "x-fake-text": WORDS, "x-fake-event-pause-ms": "20"}
    start = time.perf_counter()
    first = None
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for chunk in r.iter_bytes():
            if first is None and b'"content"' in chunk:
                first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    root = Path(tempfile.mkdtemp(prefix="tollgate-bench-guardrail-"))
    print(f"{'setting':<13} {'first byte p50':>15} {'end p50':>10}   ({runs} streams of 80 words, 20 ms apart)")
    for name, guardrail in SETTINGS.items():
        stack = Stack(name.replace("/", "-"), root / name.replace("/", "-"), [Team("bench", rpm=100_000, daily_tokens=100_000_000)], guardrail=guardrail)
        stack.start()
        try:
            token = mint_token("bench-agent")
            one_stream(stack.base_url, token)  # warm up
            samples = [one_stream(stack.base_url, token) for _ in range(runs)]
        finally:
            stack.stop()
        first = statistics.median(s[0] for s in samples) * 1000
        end = statistics.median(s[1] for s in samples) * 1000
        print(f"{name:<13} {first:>12.1f} ms {end:>7.1f} ms")


if __name__ == "__main__":
    main()
