"""Reading what comes back over the wire: Prometheus metrics text, SSE bodies, and the exceptions
a client raises when a stream is cut."""

from __future__ import annotations

import re

import httpx

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples (Prometheus text format) whose labels include all of `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL_RE.findall(m.group(2) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(3))
    return total


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """Parse an SSE body into (event, data) pairs."""
    events = []
    for block in re.split(r"\r?\n\r?\n", raw):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        events.append((event, "\n".join(data)))
    return events


def stream_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a client may raise when a stream is cut (SDKs wrap most; be tolerant)."""
    errs: list[type[BaseException]] = [httpx.HTTPError]
    try:
        import httpx2  # the transport of openai>=3 / anthropic>=2

        errs.append(httpx2.HTTPError)
    except ImportError:
        pass
    for mod in ("openai", "anthropic"):
        try:
            errs.append(__import__(mod).APIConnectionError)
        except (ImportError, AttributeError):
            pass
    return tuple(errs)
