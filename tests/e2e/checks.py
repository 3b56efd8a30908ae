"""Assertions on tollgate's rejection contract shared by the test modules."""

from __future__ import annotations

import re

import httpx

OPENAI = "openai"

# The RPM window slides over two fixed minute buckets: a full bucket only fades out during the next
# minute, so a retry can be up to two minutes away (e.g. rpm=1, refused late in a minute).
RPM_MAX_RETRY = 120
ANTHROPIC = "anthropic"

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",  # endpoint_not_supported
    413: "request_too_large",
    429: "rate_limit_error",
    503: "api_error",  # policy_unavailable (the store failed, fail_mode closed)
}


def flavour_of(path: str) -> str:
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI


def check_error_body(r: httpx.Response, status: int, flavour: str) -> dict:
    """tollgate's own refusal: JSON `{"allowed": false, "reason": ...}` plus the API's error object."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), dict(r.headers)
    body = r.json()
    assert body.get("allowed") is False, body
    reason = body.get("reason")
    assert isinstance(reason, str) and reason, body
    if flavour == OPENAI:
        err = body.get("error")
        assert isinstance(err, dict), f"OpenAI-shaped error object missing: {body}"
        assert err.get("message") == reason, body
        assert isinstance(err.get("type"), str), body
    else:
        assert body.get("type") == "error", f"Anthropic-shaped error missing: {body}"
        err = body.get("error")
        assert isinstance(err, dict) and err.get("message") == reason, body
        assert err.get("type") == ANTHROPIC_ERROR_TYPES[status], (
            f"Anthropic error type for {status}: expected {ANTHROPIC_ERROR_TYPES[status]!r}, got {err.get('type')!r}"
        )
    return body


def check_not_rate_limited_error(r: httpx.Response, status: int, flavour: str) -> dict:
    """401/403/400/413: no retry hints."""
    body = check_error_body(r, status, flavour)
    assert "retry_after_seconds" not in body, body
    assert "retry-after" not in r.headers, dict(r.headers)
    return body


def check_rejection(
    r: httpx.Response,
    *,
    flavour: str,
    code: str,
    reason_re: str,
    max_retry_after: int,
) -> tuple[dict, re.Match]:
    """A 429 per the rejection contract; returns the body and the reason's match."""
    body = check_error_body(r, 429, flavour)
    m = re.fullmatch(reason_re, body["reason"])
    assert m, f"reason {body['reason']!r} does not match {reason_re!r}"
    ra = r.headers.get("retry-after")
    assert ra is not None and ra.isdigit(), f"retry-after: {ra!r}"
    assert 1 <= int(ra) <= max_retry_after, f"retry-after {ra} not in 1..{max_retry_after}"
    assert body.get("retry_after_seconds") == int(ra), f"body retry_after_seconds {body.get('retry_after_seconds')} != header {ra}"
    for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert r.headers.get(h, "").isdigit(), f"{h}: {r.headers.get(h)!r}"
    if flavour == OPENAI:
        assert body["error"].get("code") == code, body
    return body, m


def seconds_to_next_utc_month(now: float | None = None) -> int:
    """Seconds from `now` (default: the current time) to 00:00 UTC on the 1st of the next month."""
    import datetime as dt
    import time

    t = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)
    nxt = dt.datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=dt.timezone.utc)
    return int((nxt - t).total_seconds())


def utc_month(now: float | None = None) -> str:
    """The current UTC month as "YYYY-MM"."""
    import time

    return time.strftime("%Y-%m", time.gmtime(now))


def check_budget_rejection(r: httpx.Response, *, flavour: str, code: str, reason_re: str) -> tuple[dict, re.Match]:
    """A budget refusal (monthly budget or model cap): 429 that SDKs must not retry, Retry-After =
    the seconds to the next UTC month, the reason, and the code / error type in the API's shape."""
    body = check_error_body(r, 429, flavour)
    m = re.fullmatch(reason_re, body["reason"])
    assert m, f"reason {body['reason']!r} does not match {reason_re!r}"
    assert r.headers.get("x-should-retry") == "false", f"x-should-retry: {r.headers.get('x-should-retry')!r}"
    ra = r.headers.get("retry-after")
    assert ra is not None and ra.isdigit(), f"retry-after: {ra!r}"
    to_month = seconds_to_next_utc_month()
    assert abs(int(ra) - to_month) <= 5, f"retry-after {ra}, expected the seconds to the next UTC month ({to_month})"
    assert body.get("retry_after_seconds") == int(ra), (
        f"body retry_after_seconds {body.get('retry_after_seconds')} != header {ra}"
    )
    if flavour == OPENAI:
        assert body["error"].get("code") == code, body
        if code == "monthly_budget_exceeded":
            assert body["error"].get("type") == "insufficient_quota", body
    return body, m
