"""Content guardrails on the request path, through Envoy + tollgate with the local guardrail engine.

One stack per configuration (module-scoped fixtures):
  enforce   mode enforce, scope latest, fail_mode closed, backend local
  all       mode enforce, scope all
  observe   `[guardrail]` with only `[guardrail.local]`: the defaults (observe, local, latest)
  off       mode off, same local policies
  bedrock-* backend bedrock pointed at a closed port, to see the fail modes

What is checked, for OpenAI Chat Completions, OpenAI Responses and Anthropic Messages:
- BLOCK findings (SSN, Luhn-valid card, denied word, BLOCK regex) in enforce mode: 400 in the API's
  error shape with tollgate's contract fields (`allowed`, `reason` = the blocked message,
  `policies`), `x-should-retry: false`, nothing reaches the upstream, the SDKs raise
  BadRequestError, and neither the reply nor tollgate's log holds the matched text;
- ANONYMIZE findings only (email, ticket regex): the upstream receives the body with exactly those
  texts masked Bedrock-style and everything else as sent; `x-tollgate-guardrail: anonymized`;
- scope latest (system/instructions + trailing user/tool messages) against scope all;
- observe: nothing blocked or changed, `x-tollgate-guardrail: would-block|would-anonymize`;
- metrics: verdicts, text units (billed ones: 1 per 1,000 characters of a text), the clean-text
  cache, errors; a blocked request counts against RPM and charges no tokens;
- off: no guardrail at all.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

import anthropic
import openai
import pytest

from checks import ANTHROPIC, OPENAI, check_error_body
from processes import avoid_minute_boundary, free_port, wait_until
from tollgate_config import Team
from wire import metric_total

TEXT = "Hello from the fake LLM upstream! This is a canned answer."
BLOCKED_IN = "Sorry, I can't help with that request."
BLOCKED_OUT = "Sorry, I can't share that response."
HEADER = "x-tollgate-guardrail"
INTERVENTION_NOTES = ("anonymized", "would-block", "would-anonymize", "unavailable")

SSN = "219-09-9999"
CARD = "4111 1111 1111 1111"
BAD_CARD = "4111 1111 1111 1112"  # Luhn-invalid: not a card

SSN_POLICY = "sensitiveInformation:US_SOCIAL_SECURITY_NUMBER"
CARD_POLICY = "sensitiveInformation:CREDIT_DEBIT_CARD_NUMBER"
EMAIL_POLICY = "sensitiveInformation:EMAIL"

VERDICTS = "tollgate_guardrail_verdicts_total"
UNITS = "tollgate_guardrail_text_units_total"
CACHE_HITS = "tollgate_guardrail_cache_hits_total"
ERRORS = "tollgate_guardrail_errors_total"
GUARDRAIL_METRICS = (VERDICTS, UNITS, CACHE_HITS, ERRORS)

LOCAL = {
    "blocked_input_message": BLOCKED_IN,
    "blocked_output_message": BLOCKED_OUT,
    "pii": [
        {"type": "EMAIL", "action": "ANONYMIZE"},
        {"type": "US_SOCIAL_SECURITY_NUMBER", "action": "BLOCK"},
        {"type": "CREDIT_DEBIT_CARD_NUMBER", "action": "BLOCK"},
    ],
    "regexes": [
        {"name": "ticket", "pattern": "TCK-[0-9]{6}", "action": "ANONYMIZE"},
        {"name": "codename", "pattern": "CODENAME-[A-Z]{4}", "action": "BLOCK"},
    ],
    "words": ["project falcon"],
}

PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
FLAVOURS = {"chat": OPENAI, "responses": OPENAI, "messages": ANTHROPIC}
MODELS = {"chat": "gpt-4o-mini", "responses": "gpt-4o-mini", "messages": "claude-haiku-4-5"}
RPM = 1000
DAILY = 1_000_000


def _team(team_id: str, **kw) -> Team:
    kw.setdefault("rpm", RPM)
    kw.setdefault("daily_tokens", DAILY)
    return Team(team_id, **kw)


# --------------------------------------------------------------------------- helpers


def send(stack, api: str, team: str, body: dict, marker: str, headers: dict | None = None):
    """POST `body` (completed with the API's model, and max_tokens for Anthropic) as `team`."""
    body = dict(body)
    body.setdefault("model", MODELS[api])
    h = {}
    if api == "messages":
        body.setdefault("max_tokens", 64)
        h["anthropic-version"] = "2023-06-01"
    h.update(headers or {})
    return stack.post(PATHS[api], token=stack.token(team), json_body=body, marker=marker, headers=h)


def sent(api: str, body: dict) -> dict:
    """The body `send` puts on the wire for `body`."""
    body = dict(body)
    body.setdefault("model", MODELS[api])
    if api == "messages":
        body.setdefault("max_tokens", 64)
    return body


def upstream_body(stack, marker: str) -> dict:
    reqs = stack.upstream_requests(marker)
    assert len(reqs) == 1, f"expected exactly one upstream request for {marker}, got {len(reqs)}"
    return reqs[0]["body"]


def answered(r, api: str) -> None:
    """A 200 with the fake upstream's answer."""
    assert r.status_code == 200, f"{r.status_code}: {r.text[:600]}"
    j = r.json()
    if api == "chat":
        assert j["choices"][0]["message"]["content"] == TEXT, j
    elif api == "messages":
        assert j["content"][0]["text"] == TEXT, j
    else:
        assert j["output"][0]["content"][0]["text"] == TEXT, j


def tollgate_log(stack) -> str:
    return "".join(
        p.read_text(errors="replace") for p in (stack.tollgate.stdout_path, stack.tollgate.stderr_path) if p.exists()
    )


def assert_blocked(stack, r, api: str, policies: list[str], marker: str, secret: str | None = None) -> dict:
    """tollgate's guardrail refusal: 400 in the API's shape, never forwarded, no matched text."""
    body = check_error_body(r, 400, FLAVOURS[api])
    assert body["reason"] == BLOCKED_IN, body
    assert body.get("policies") == policies, f"policies {body.get('policies')!r}, expected {policies!r}"
    assert "retry_after_seconds" not in body and "retry-after" not in r.headers, (body, dict(r.headers))
    assert r.headers.get("x-should-retry") == "false", dict(r.headers)
    # The refused request was admitted first (it counts against RPM): the rate headers say so.
    assert "x-ratelimit-remaining" in r.headers and "x-ratelimit-limit" in r.headers, dict(r.headers)
    if FLAVOURS[api] == OPENAI:
        err = body["error"]
        assert (err.get("message"), err.get("type"), err.get("code")) == (
            BLOCKED_IN, "invalid_request_error", "guardrail_intervened"), body
    else:
        assert body["type"] == "error", body
        assert body["error"] == {"type": "invalid_request_error", "message": BLOCKED_IN}, body
    assert stack.upstream_requests(marker) == [], "a blocked request must not reach the upstream"
    if secret is not None:
        assert secret not in r.text, f"the matched text is in the reply: {r.text}"
    return body


class Metrics:
    """A /metrics snapshot; `delta(name, **labels)` is the change since it was taken."""

    def __init__(self, stack):
        self.stack = stack
        self.before = stack.tollgate_get("/metrics").text

    def delta(self, name: str, **labels) -> float:
        now = self.stack.tollgate_get("/metrics").text
        return metric_total(now, name, **labels) - metric_total(self.before, name, **labels)

    def deltas(self, *names: str, **labels) -> dict[str, float]:
        now = self.stack.tollgate_get("/metrics").text
        return {n: metric_total(now, n, **labels) - metric_total(self.before, n, **labels) for n in names}


def verdicts(m: Metrics, mode: str) -> dict[str, float]:
    return {v: m.delta(VERDICTS, source="INPUT", verdict=v, mode=mode) for v in ("blocked", "anonymized", "none")}


def unique(prefix: str = "q") -> str:
    return f"{prefix} {uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- block cases (enforce)

CHAT_TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"id\": 7}"}}],
}
ANTHROPIC_TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"id": 7}}]}

# (id, api, body, policies, secret): each a BLOCK finding in a different place.
BLOCK_CASES = [
    ("chat-user-string-ssn", "chat",
     {"messages": [{"role": "user", "content": f"My SSN is {SSN}, please file my taxes."}]}, [SSN_POLICY], SSN),
    ("chat-user-parts-card", "chat",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "Charge my card please."},
         {"type": "text", "text": f"It is {CARD}, exp 12/29."}]}]}, [CARD_POLICY], CARD),
    ("chat-system-word", "chat",
     {"messages": [{"role": "system", "content": "You are the Project  FALCON assistant."},
                   {"role": "user", "content": "What is our roadmap?"}]}, ["word"], "FALCON"),
    ("chat-developer-regex", "chat",
     {"messages": [{"role": "developer", "content": "Internal name: CODENAME-ORCA."},
                   {"role": "user", "content": "hello"}]}, ["regex:codename"], "CODENAME-ORCA"),
    ("chat-tool-message-ssn", "chat",
     {"messages": [{"role": "user", "content": "Look up customer 7."}, CHAT_TOOL_CALL,
                   {"role": "tool", "tool_call_id": "call_1", "content": f"ssn: {SSN}"}]}, [SSN_POLICY], SSN),
    ("chat-email-and-ssn", "chat",
     {"messages": [{"role": "user", "content": f"Mail ivy@example.com, SSN {SSN}."}]}, [EMAIL_POLICY, SSN_POLICY], SSN),
    ("messages-user-string-ssn", "messages",
     {"messages": [{"role": "user", "content": f"SSN {SSN}"}]}, [SSN_POLICY], SSN),
    ("messages-text-block-word", "messages",
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me about project falcon."}]}]},
     ["word"], "project falcon"),
    ("messages-system-blocks-card", "messages",
     {"system": [{"type": "text", "text": f"Company card: {CARD.replace(' ', '-')}"}],
      "messages": [{"role": "user", "content": "hi"}]}, [CARD_POLICY], CARD.replace(" ", "-")),
    ("messages-system-string-regex", "messages",
     {"system": "You work on CODENAME-KITE.", "messages": [{"role": "user", "content": "hi"}]},
     ["regex:codename"], "CODENAME-KITE"),
    ("messages-tool-result-string-ssn", "messages",
     {"messages": [{"role": "user", "content": "Look up customer 7."}, ANTHROPIC_TOOL_USE,
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": f"ssn {SSN}"}]}]},
     [SSN_POLICY], SSN),
    ("messages-tool-result-blocks-card", "messages",
     {"messages": [{"role": "user", "content": "Look up customer 7."}, ANTHROPIC_TOOL_USE,
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                 "content": [{"type": "text", "text": f"card {CARD.replace(' ', '')}"}]}]}]},
     [CARD_POLICY], CARD.replace(" ", "")),
    ("responses-input-string-ssn", "responses", {"input": f"My SSN: {SSN}"}, [SSN_POLICY], SSN),
    ("responses-instructions-word", "responses",
     {"instructions": "Never mention Project Falcon.", "input": "hello"}, ["word"], "Project Falcon"),
    ("responses-input-text-item-regex", "responses",
     {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Status of CODENAME-LYNX?"}]}]},
     ["regex:codename"], "CODENAME-LYNX"),
    ("responses-function-output-card", "responses",
     {"input": [{"role": "user", "content": "Look up customer 7."},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"id\": 7}"},
                {"type": "function_call_output", "call_id": "c1", "output": f"card on file: {CARD}"}]},
     [CARD_POLICY], CARD),
]

# ------------------------------------------------------------------ anonymize cases (enforce, latest)

ANON_CASES = [
    # (id, api, body as sent, body the upstream must receive)
    (
        "chat-system-user-unicode-other-fields",
        "chat",
        {
            "temperature": 0.2,
            "user": "alice.smith@example.com",  # not a message text: forwarded as is
            "tools": [{"type": "function", "function": {
                "name": "lookup", "description": "Look up TCK-000001 or bob@example.org",
                "parameters": {"type": "object", "properties": {}}}}],
            "messages": [
                {"role": "system", "content": "Route tickets like TCK-123456 to support."},
                {"role": "user", "content": "Grüße! Écris à alice.smith@example.com 🙂 about \"TCK-654321\"\n"
                                            "thanks, alice.smith@example.com"},
            ],
        },
        {
            "temperature": 0.2,
            "user": "alice.smith@example.com",
            "tools": [{"type": "function", "function": {
                "name": "lookup", "description": "Look up TCK-000001 or bob@example.org",
                "parameters": {"type": "object", "properties": {}}}}],
            "messages": [
                {"role": "system", "content": "Route tickets like {ticket} to support."},
                {"role": "user", "content": "Grüße! Écris à {EMAIL} 🙂 about \"{ticket}\"\nthanks, {EMAIL}"},
            ],
        },
    ),
    (
        "chat-parts-image-untouched",
        "chat",
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "From bob@example.org:"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png?owner=carol@example.net"}},
            {"type": "text", "text": f"see TCK-111222 (card {BAD_CARD} is not a card)"}]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "From {EMAIL}:"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png?owner=carol@example.net"}},
            {"type": "text", "text": f"see {{ticket}} (card {BAD_CARD} is not a card)"}]}]},
    ),
    (
        "chat-trailing-tool-messages",
        "chat",
        {"messages": [
            {"role": "user", "content": "Look up customers dave and erin."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"email\": \"dave@example.com\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": "{\"email\": \"erin@example.com\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "dave@example.com, ticket TCK-999000"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "erin@example.com"}]},
        ]},
        {"messages": [
            {"role": "user", "content": "Look up customers dave and erin."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"email\": \"dave@example.com\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": "{\"email\": \"erin@example.com\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{EMAIL}, ticket {ticket}"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "{EMAIL}"}]},
        ]},
    ),
    (
        "messages-system-tool-results-text",
        "messages",
        {
            "temperature": 0.5,
            "metadata": {"user_id": "erin@example.com"},
            "system": [{"type": "text", "text": "Escalate TCK-123456 first.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Find erin."},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking up erin@example.com"},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"email": "erin@example.com"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found erin@example.com"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                        {"type": "text", "text": "ticket TCK-222333"},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/erin@example.com.png"}}]},
                    {"type": "text", "text": "Reply to erin@example.com"}]},
            ],
        },
        {
            "temperature": 0.5,
            "metadata": {"user_id": "erin@example.com"},
            "system": [{"type": "text", "text": "Escalate {ticket} first.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Find erin."},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking up erin@example.com"},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"email": "erin@example.com"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found {EMAIL}"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                        {"type": "text", "text": "ticket {ticket}"},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/erin@example.com.png"}}]},
                    {"type": "text", "text": "Reply to {EMAIL}"}]},
            ],
        },
    ),
    (
        "messages-system-string-user-string",
        "messages",
        {"system": "Customer contact: gus@example.com", "messages": [{"role": "user", "content": "Mail gus@example.com about TCK-777888"}]},
        {"system": "Customer contact: {EMAIL}", "messages": [{"role": "user", "content": "Mail {EMAIL} about {ticket}"}]},
    ),
    (
        "responses-instructions-input-string",
        "responses",
        {"instructions": "Tickets look like TCK-100200.", "input": "Write to frank@example.com", "temperature": 0.1},
        {"instructions": "Tickets look like {ticket}.", "input": "Write to {EMAIL}", "temperature": 0.1},
    ),
    (
        "responses-items",
        "responses",
        {"input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "mail frank@example.com"},
                {"type": "input_image", "image_url": "https://example.com/frank@example.com.png"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\": \"frank@example.com\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "frank@example.com has TCK-300400"},
        ]},
        {"input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "mail {EMAIL}"},
                {"type": "input_image", "image_url": "https://example.com/frank@example.com.png"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\": \"frank@example.com\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "{EMAIL} has {ticket}"},
        ]},
    ),
]

# ------------------------------------------------------------------ scope cases

OLD_PII = f"Earlier: my SSN is {SSN}, card {CARD}, mail old@example.com, CODENAME-OWLS, project falcon."

# (id, api, body, upstream body under scope latest): PII before the last assistant turn is left alone.
LATEST_CASES = [
    (
        "chat",
        "chat",
        {"messages": [
            {"role": "system", "content": "Support bot. Escalations: TCK-123123."},
            {"role": "user", "content": OLD_PII},
            {"role": "assistant", "content": "Noted, mail old@example.com back?"},
            {"role": "user", "content": "Yes, and new@example.com too."},
            {"role": "user", "content": "Ticket TCK-456456."},
        ]},
        {"messages": [
            {"role": "system", "content": "Support bot. Escalations: {ticket}."},
            {"role": "user", "content": OLD_PII},
            {"role": "assistant", "content": "Noted, mail old@example.com back?"},
            {"role": "user", "content": "Yes, and {EMAIL} too."},
            {"role": "user", "content": "Ticket {ticket}."},
        ]},
    ),
    (
        "messages",
        "messages",
        {"system": "Support bot.", "messages": [
            {"role": "user", "content": [{"type": "text", "text": OLD_PII}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Which one, old@example.com?"}, ANTHROPIC_TOOL_USE["content"][0]]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "new@example.com"}]},
        ]},
        {"system": "Support bot.", "messages": [
            {"role": "user", "content": [{"type": "text", "text": OLD_PII}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Which one, old@example.com?"}, ANTHROPIC_TOOL_USE["content"][0]]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "{EMAIL}"}]},
        ]},
    ),
    (
        "responses",
        "responses",
        {"instructions": "Support bot.", "input": [
            {"role": "user", "content": OLD_PII},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Noted old@example.com."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "now new@example.com"}]},
        ]},
        {"instructions": "Support bot.", "input": [
            {"role": "user", "content": OLD_PII},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Noted old@example.com."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "now {EMAIL}"}]},
        ]},
    ),
]

# Earlier turns with only ANONYMIZE findings: masked under scope all; assistant turns are the
# model's own output and stay as they are.
ALL_ANON_CASES = [
    (
        "chat",
        "chat",
        {"messages": [
            {"role": "user", "content": "I am old@example.com (TCK-010101)."},
            {"role": "assistant", "content": "Hi old@example.com."},
            {"role": "user", "content": "Now write to new@example.com."},
        ]},
        {"messages": [
            {"role": "user", "content": "I am {EMAIL} ({ticket})."},
            {"role": "assistant", "content": "Hi old@example.com."},
            {"role": "user", "content": "Now write to {EMAIL}."},
        ]},
    ),
    (
        "messages",
        "messages",
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "I am old@example.com."}]},
            {"role": "assistant", "content": "Hi old@example.com."},
            {"role": "user", "content": "thanks"},
        ]},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "I am {EMAIL}."}]},
            {"role": "assistant", "content": "Hi old@example.com."},
            {"role": "user", "content": "thanks"},
        ]},
    ),
    (
        "responses",
        "responses",
        {"input": [
            {"role": "user", "content": "I am old@example.com."},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi old@example.com."}]},
            {"role": "user", "content": "thanks"},
        ]},
        {"input": [
            {"role": "user", "content": "I am {EMAIL}."},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi old@example.com."}]},
            {"role": "user", "content": "thanks"},
        ]},
    ),
]

# --------------------------------------------------------------------------- stacks

ENFORCE_TEAMS = (
    [_team(f"gr-blk-{c[0]}") for c in BLOCK_CASES]
    + [_team(f"gr-anon-{c[0]}") for c in ANON_CASES]
    + [_team(f"gr-latest-{c[0]}") for c in LATEST_CASES]
    + [_team(t) for t in (
        "gr-raw-block", "gr-sdk-openai", "gr-sdk-anthropic", "gr-anon-sdk", "gr-anon-stream", "gr-latest-clean",
        "gr-latest-tool-block", "gr-cache", "gr-units", "gr-not-cached", "gr-mixed-clean",
    )]
    + [_team("gr-rpm", rpm=4, daily_tokens=1000)]
    + [_team(f"gr-out-{n}") for n in ("block-chat", "block-responses", "block-messages", "anon", "clean", "sdk")]
    + [_team(f"gr-stream-{n}") for n in ("chat", "messages", "responses", "clean")]
)
ALL_TEAMS = [_team(f"gr-all-anon-{c[0]}") for c in ALL_ANON_CASES] + [_team(f"gr-all-block-{a}") for a in PATHS]
OBSERVE_TEAMS = [_team(t) for t in ("gr-obs-block", "gr-obs-anon", "gr-obs-clean", "gr-obs-mixed", "gr-obs-sdk",
                                    "gr-obs-answer", "gr-obs-stream")]
OFF_TEAMS = [_team("gr-off")]
BEDROCK_TEAMS = [_team("gr-bedrock")]


def guardrail(**top) -> dict:
    return {**top, "local": copy.deepcopy(LOCAL)}


@pytest.fixture(scope="module")
def enforce(stack_factory):
    # tollgate at debug level: even its debug logs must not carry matched text
    return stack_factory(
        "guardrail-enforce", ENFORCE_TEAMS,
        guardrail=guardrail(mode="enforce", backend="local", scope="latest", fail_mode="closed"),
        tollgate_env={"RUST_LOG": "info,tollgate=debug"},
    )


@pytest.fixture(scope="module")
def enforce_all(stack_factory):
    return stack_factory("guardrail-all", ALL_TEAMS, guardrail=guardrail(mode="enforce", scope="all"))


@pytest.fixture(scope="module")
def observe(stack_factory):
    # only [guardrail.local]: mode observe, backend local and scope latest are the defaults
    return stack_factory("guardrail-observe", OBSERVE_TEAMS, guardrail=guardrail())


@pytest.fixture(scope="module")
def off(stack_factory):
    return stack_factory("guardrail-off", OFF_TEAMS, guardrail=guardrail(mode="off"))


def bedrock_down(**top) -> dict:
    """A Bedrock guardrail whose endpoint is a closed port: every call fails."""
    return {
        **top,
        "backend": "bedrock",
        "bedrock": {
            "guardrail_id": "gr-e2e-unreachable",
            "guardrail_version": "1",
            "region": "us-east-1",
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "timeout_ms": 500,
        },
    }


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "e2e",
    "AWS_SECRET_ACCESS_KEY": "e2e",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# --------------------------------------------------------------------------- enforce: block


@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_enforce_blocks_before_the_upstream(enforce, marker, case):
    case_id, api, body, policies, secret = case
    m = Metrics(enforce)
    r = send(enforce, api, f"gr-blk-{case_id}", body, marker)
    assert_blocked(enforce, r, api, policies, marker, secret)
    assert verdicts(m, "enforce") == {"blocked": 1, "anonymized": 0, "none": 0}


def test_enforce_block_raw_contract_log_and_metrics(enforce, marker):
    m = Metrics(enforce)
    r = send(enforce, "chat", "gr-raw-block", {"messages": [{"role": "user", "content": f"SSN {SSN} for gail@example.com"}]},
             marker)
    body = assert_blocked(enforce, r, "chat", [SSN_POLICY, EMAIL_POLICY], marker, SSN)
    assert r.headers.get("content-type", "").startswith("application/json")
    assert set(body) >= {"allowed", "reason", "policies", "error"}, body
    assert "gail@example.com" not in r.text
    assert verdicts(m, "enforce") == {"blocked": 1, "anonymized": 0, "none": 0}
    assert m.delta(VERDICTS, mode="observe") == 0
    assert m.delta(UNITS, source="INPUT") == 1, "one short text: one billed text unit"
    # The policies are logged, never the matched text.
    time.sleep(0.2)
    log = tollgate_log(enforce)
    assert SSN not in log and SSN.replace("-", "") not in log, "the SSN is in tollgate's log"
    assert "gail@example.com" not in log, "the email address is in tollgate's log"


def test_enforce_block_openai_sdk(enforce, marker):
    client = enforce.openai(enforce.token("gr-sdk-openai"), marker)
    msgs = [{"role": "user", "content": f"My card is {CARD}"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    assert e.value.status_code == 400
    assert e.value.code == "guardrail_intervened" and e.value.type == "invalid_request_error"
    assert BLOCKED_IN in str(e.value)
    assert e.value.response.headers.get("x-should-retry") == "false"
    with pytest.raises(openai.BadRequestError) as e:
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True):
            pass
    assert e.value.code == "guardrail_intervened"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", instructions="Be brief.", input=f"My SSN is {SSN}")
    assert e.value.code == "guardrail_intervened" and BLOCKED_IN in str(e.value)
    assert enforce.upstream_requests(marker) == []


def test_enforce_block_anthropic_sdk(enforce, marker):
    client = enforce.anthropic(enforce.token("gr-sdk-anthropic"), marker)
    msgs = [{"role": "user", "content": "Status of project falcon?"}]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=msgs)
    assert e.value.status_code == 400
    assert e.value.body["error"] == {"type": "invalid_request_error", "message": BLOCKED_IN}
    assert e.value.body["policies"] == ["word"]
    assert BLOCKED_IN in str(e.value)
    with pytest.raises(anthropic.BadRequestError):
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=16, messages=msgs) as s:
            for _ in s.text_stream:
                pass
    assert enforce.upstream_requests(marker) == []


def test_blocked_request_counts_against_rpm_but_charges_no_tokens(enforce, marker):
    team = "gr-rpm"  # rpm 4, 1000 tokens a day
    avoid_minute_boundary()
    r = send(enforce, "chat", team, {"messages": [{"role": "user", "content": f"SSN {SSN}"}]}, marker)
    assert_blocked(enforce, r, "chat", [SSN_POLICY], marker, SSN)
    usage = enforce.usage(team)
    assert usage["rpm"]["used"] == 1, usage
    assert usage["tokens_today"]["used"] == 0, usage
    assert usage["spend_this_month"]["usd"] == 0, usage
    # The next (clean) request is the second of the window and is charged its usage.
    r = send(enforce, "chat", team, {"messages": [{"role": "user", "content": unique()}]}, marker,
             headers={"x-fake-usage": "prompt=10,completion=20"})
    answered(r, "chat")
    assert r.headers["x-ratelimit-remaining"] == "2", dict(r.headers)
    usage = enforce.wait_usage(team, lambda u: u["tokens_today"]["used"] == 30, what="30 tokens")
    assert usage["rpm"]["used"] == 2, usage


# --------------------------------------------------------------------------- enforce: anonymize


@pytest.mark.parametrize("case", ANON_CASES, ids=[c[0] for c in ANON_CASES])
def test_enforce_anonymizes_in_place(enforce, marker, case):
    case_id, api, body, expected = case
    m = Metrics(enforce)
    r = send(enforce, api, f"gr-anon-{case_id}", body, marker)
    answered(r, api)
    assert r.headers.get(HEADER) == "anonymized", dict(r.headers)
    assert upstream_body(enforce, marker) == sent(api, expected)
    assert verdicts(m, "enforce") == {"blocked": 0, "anonymized": 1, "none": 0}


def test_enforce_anonymize_with_sdks(enforce, marker):
    oa = enforce.openai(enforce.token("gr-anon-sdk"), marker)
    raw = oa.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Ping hal@example.com re TCK-246810"}], max_tokens=5,
    )
    assert raw.headers.get(HEADER) == "anonymized"
    assert raw.parse().choices[0].message.content == TEXT
    an = enforce.anthropic(enforce.token("gr-anon-sdk"), marker)
    raw = an.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=5, system="Contact: hal@example.com",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert raw.headers.get(HEADER) == "anonymized"
    assert raw.parse().content[0].text == TEXT
    first, second = [r["body"] for r in enforce.upstream_requests(marker)]
    assert first == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Ping {EMAIL} re {ticket}"}],
                     "max_tokens": 5}
    assert second == {"model": "claude-haiku-4-5", "max_tokens": 5, "system": "Contact: {EMAIL}",
                      "messages": [{"role": "user", "content": "hello there"}]}
    for text in ("hal@example.com", "TCK-246810"):
        assert text not in tollgate_log(enforce)


def test_enforce_anonymize_streaming_chat(enforce, marker):
    """Masking and the include_usage injection both land in the one forwarded body."""
    client = enforce.openai(enforce.token("gr-anon-stream"), marker)
    msgs = [{"role": "user", "content": "Stream to ida@example.com"}]
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=msgs, stream=True) as resp:
        assert resp.headers.get(HEADER) == "anonymized"
        text = "".join(
            c.choices[0].delta.content or "" for c in resp.parse() if c.choices
        )
    assert text == TEXT
    assert upstream_body(enforce, marker) == {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Stream to {EMAIL}"}],
        "stream": True, "stream_options": {"include_usage": True},
    }


# --------------------------------------------------------------------------- scope latest / all


@pytest.mark.parametrize("case", LATEST_CASES, ids=[c[0] for c in LATEST_CASES])
def test_scope_latest_leaves_earlier_turns_alone(enforce, marker, case):
    case_id, api, body, expected = case
    r = send(enforce, api, f"gr-latest-{case_id}", body, marker)
    answered(r, api)
    assert r.headers.get(HEADER) == "anonymized", dict(r.headers)
    assert upstream_body(enforce, marker) == sent(api, expected)


def test_scope_latest_clean_latest_turn_passes_untouched(enforce, marker):
    body = {"messages": [
        {"role": "user", "content": OLD_PII},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": unique("and now something clean")},
    ]}
    m = Metrics(enforce)
    r = send(enforce, "chat", "gr-latest-clean", body, marker)
    answered(r, "chat")
    assert r.headers.get(HEADER) not in INTERVENTION_NOTES, dict(r.headers)
    assert upstream_body(enforce, marker) == sent("chat", body)
    assert verdicts(m, "enforce") == {"blocked": 0, "anonymized": 0, "none": 1}


def test_scope_latest_trailing_tool_result_is_assessed(enforce, marker):
    body = {"messages": [
        {"role": "user", "content": "Look up customer 7."},
        ANTHROPIC_TOOL_USE,
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": f"ssn {SSN}"}]}]},
    ]}
    r = send(enforce, "messages", "gr-latest-tool-block", body, marker)
    assert_blocked(enforce, r, "messages", [SSN_POLICY], marker, SSN)


@pytest.mark.parametrize("api", list(PATHS))
def test_scope_all_blocks_on_earlier_turns(enforce_all, marker, api):
    if api == "responses":
        body = {"input": [
            {"role": "user", "content": f"old: {SSN}"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "user", "content": "hello"},
        ]}
    else:
        body = {"messages": [
            {"role": "user", "content": f"old: {SSN}"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hello"},
        ]}
    r = send(enforce_all, api, f"gr-all-block-{api}", body, marker)
    assert_blocked(enforce_all, r, api, [SSN_POLICY], marker, SSN)


@pytest.mark.parametrize("case", ALL_ANON_CASES, ids=[c[0] for c in ALL_ANON_CASES])
def test_scope_all_masks_earlier_turns(enforce_all, marker, case):
    case_id, api, body, expected = case
    r = send(enforce_all, api, f"gr-all-anon-{case_id}", body, marker)
    answered(r, api)
    assert r.headers.get(HEADER) == "anonymized", dict(r.headers)
    assert upstream_body(enforce_all, marker) == sent(api, expected)


# --------------------------------------------------------------------------- cache and text units


def test_clean_text_is_assessed_once(enforce, marker):
    team = "gr-cache"
    body = {"messages": [{"role": "user", "content": unique("a perfectly clean question")}]}
    m = Metrics(enforce)
    answered(send(enforce, "chat", team, body, marker), "chat")
    assert m.deltas(UNITS, CACHE_HITS, source="INPUT") == {UNITS: 1, CACHE_HITS: 0}
    assert verdicts(m, "enforce") == {"blocked": 0, "anonymized": 0, "none": 1}

    m = Metrics(enforce)
    r = send(enforce, "chat", team, body, marker)
    answered(r, "chat")
    assert r.headers.get(HEADER) not in INTERVENTION_NOTES
    assert m.deltas(UNITS, CACHE_HITS, source="INPUT") == {UNITS: 0, CACHE_HITS: 1}, "the second time comes from the cache"

    # Per text: the system prompt seen before is not assessed again, the new question is.
    system = unique("You are a helpful assistant")
    m = Metrics(enforce)
    answered(send(enforce, "chat", team, {"messages": [
        {"role": "system", "content": system}, {"role": "user", "content": unique()}]}, marker), "chat")
    assert m.deltas(UNITS, CACHE_HITS, source="INPUT") == {UNITS: 2, CACHE_HITS: 0}
    m = Metrics(enforce)
    answered(send(enforce, "chat", team, {"messages": [
        {"role": "system", "content": system}, {"role": "user", "content": unique()}]}, marker), "chat")
    assert m.deltas(UNITS, CACHE_HITS, source="INPUT") == {UNITS: 1, CACHE_HITS: 1}
    assert len(enforce.upstream_requests(marker)) == 4


def test_text_units_are_per_thousand_characters(enforce, marker):
    long_text = (unique("long") + " ") + "lorem ipsum " * 208  # 2,500+ characters: 3 units
    assert 2000 < len(long_text) <= 3000
    m = Metrics(enforce)
    answered(send(enforce, "messages", "gr-units", {"messages": [{"role": "user", "content": long_text}]}, marker),
             "messages")
    assert m.delta(UNITS, source="INPUT") == 3


def test_masked_and_blocked_texts_are_not_cached(enforce, marker):
    team = "gr-not-cached"
    body = {"messages": [{"role": "user", "content": "Please contact jan@example.com"}]}
    m = Metrics(enforce)
    for _ in range(2):
        r = send(enforce, "chat", team, body, marker)
        answered(r, "chat")
        assert r.headers.get(HEADER) == "anonymized"
    assert m.deltas(UNITS, CACHE_HITS, source="INPUT") == {UNITS: 2, CACHE_HITS: 0}
    assert verdicts(m, "enforce")["anonymized"] == 2
    for up in enforce.upstream_requests(marker):
        assert up["body"]["messages"] == [{"role": "user", "content": "Please contact {EMAIL}"}]


def test_clean_and_masked_texts_in_one_request(enforce, marker):
    """Only the text with a finding changes; a clean text next to it is forwarded as sent."""
    clean = unique("clean part")
    body = {"system": clean, "messages": [{"role": "user", "content": "cc kim@example.com"}]}
    r = send(enforce, "messages", "gr-mixed-clean", body, marker)
    answered(r, "messages")
    assert upstream_body(enforce, marker) == sent(
        "messages", {"system": clean, "messages": [{"role": "user", "content": "cc {EMAIL}"}]})


def test_enforce_log_never_holds_matched_text(enforce):
    """After the enforce tests above (run alone, it checks little): tollgate's log, at debug level,
    names the policies that fired but holds none of the texts they matched."""
    time.sleep(0.2)
    log = tollgate_log(enforce)
    assert "guardrail intervened" in log, "the interventions should be logged"
    matched = [SSN, SSN.replace("-", ""), CARD, CARD.replace(" ", "-"), CARD.replace(" ", ""),
               "CODENAME-ORCA", "CODENAME-KITE", "CODENAME-LYNX", "alice.smith@example.com", "erin@example.com",
               "frank@example.com", "hal@example.com", "jan@example.com", "TCK-654321", "TCK-246810"]
    leaked = [t for t in matched if t in log]
    assert not leaked, f"matched text in tollgate's log: {leaked}"
    assert "falcon" not in log.lower(), "a denied phrase is in tollgate's log"


# --------------------------------------------------------------------------- observe


def test_observe_would_block_forwards_unchanged(observe, marker):
    body = {"messages": [{"role": "user", "content": f"My SSN is {SSN}"}]}
    m = Metrics(observe)
    r = send(observe, "chat", "gr-obs-block", body, marker)
    answered(r, "chat")
    assert r.headers.get(HEADER) == "would-block", dict(r.headers)
    assert upstream_body(observe, marker) == sent("chat", body)
    assert verdicts(m, "observe") == {"blocked": 1, "anonymized": 0, "none": 0}
    assert m.delta(VERDICTS, mode="enforce") == 0


def test_observe_would_anonymize_forwards_unchanged(observe, marker):
    body = {"system": [{"type": "text", "text": "Ticket TCK-555666"}],
            "messages": [{"role": "user", "content": "Write to lea@example.com"}]}
    m = Metrics(observe)
    r = send(observe, "messages", "gr-obs-anon", body, marker)
    answered(r, "messages")
    assert r.headers.get(HEADER) == "would-anonymize", dict(r.headers)
    assert upstream_body(observe, marker) == sent("messages", body)
    assert verdicts(m, "observe") == {"blocked": 0, "anonymized": 1, "none": 0}


def test_observe_clean_request(observe, marker):
    body = {"instructions": "Be brief.", "input": unique("a clean question")}
    m = Metrics(observe)
    r = send(observe, "responses", "gr-obs-clean", body, marker)
    answered(r, "responses")
    assert r.headers.get(HEADER) not in INTERVENTION_NOTES, dict(r.headers)
    assert upstream_body(observe, marker) == sent("responses", body)
    assert verdicts(m, "observe") == {"blocked": 0, "anonymized": 0, "none": 1}


def test_observe_block_outranks_anonymize(observe, marker):
    body = {"input": [{"role": "user", "content": f"mail max@example.com, card {CARD}"}]}
    r = send(observe, "responses", "gr-obs-mixed", body, marker)
    answered(r, "responses")
    assert r.headers.get(HEADER) == "would-block", dict(r.headers)
    assert upstream_body(observe, marker) == sent("responses", body)


def test_observe_with_sdks(observe, marker):
    oa = observe.openai(observe.token("gr-obs-sdk"), marker)
    raw = oa.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Project Falcon bot"},
                                       {"role": "user", "content": "hi"}])
    assert raw.headers.get(HEADER) == "would-block"
    assert raw.parse().choices[0].message.content == TEXT
    an = observe.anthropic(observe.token("gr-obs-sdk"), marker)
    raw = an.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "ping nia@example.com"}])
    assert raw.headers.get(HEADER) == "would-anonymize"
    bodies = [r["body"] for r in observe.upstream_requests(marker)]
    assert bodies[0]["messages"][0]["content"] == "Project Falcon bot"
    assert bodies[1]["messages"][0]["content"] == "ping nia@example.com"


# --------------------------------------------------------------------------- off


@pytest.mark.parametrize("api", list(PATHS))
def test_off_means_no_guardrail(off, marker, api):
    dirty = f"SSN {SSN}, card {CARD}, project falcon, CODENAME-ZZZZ, mail olga@example.com, TCK-123456"
    body = {
        "chat": {"messages": [{"role": "system", "content": dirty}, {"role": "user", "content": dirty}]},
        "messages": {"system": dirty, "messages": [{"role": "user", "content": [{"type": "text", "text": dirty}]}]},
        "responses": {"instructions": dirty, "input": dirty},
    }[api]
    r = send(off, api, "gr-off", body, marker)
    answered(r, api)
    assert HEADER not in r.headers, dict(r.headers)
    assert upstream_body(off, marker) == sent(api, body)
    text = off.tollgate_get("/metrics").text
    for name in GUARDRAIL_METRICS:
        assert metric_total(text, name) == 0, f"{name} moved with the guardrail off"


# --------------------------------------------------------------------------- backend failure


@pytest.fixture(scope="module")
def bedrock_closed(stack_factory):
    return stack_factory("guardrail-bedrock-closed", BEDROCK_TEAMS,
                         guardrail=bedrock_down(mode="enforce", fail_mode="closed"), tollgate_env=AWS_ENV)


@pytest.fixture(scope="module")
def bedrock_open(stack_factory):
    return stack_factory("guardrail-bedrock-open", BEDROCK_TEAMS,
                         guardrail=bedrock_down(mode="enforce", fail_mode="open"), tollgate_env=AWS_ENV)


@pytest.fixture(scope="module")
def bedrock_observe(stack_factory):
    return stack_factory("guardrail-bedrock-observe", BEDROCK_TEAMS,
                         guardrail=bedrock_down(mode="observe", fail_mode="closed"), tollgate_env=AWS_ENV)


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_backend_down_fail_closed_refuses_with_503(bedrock_closed, marker, api):
    body = {"messages": [{"role": "user", "content": unique()}]}
    m = Metrics(bedrock_closed)
    r = send(bedrock_closed, api, "gr-bedrock", body, marker)
    err = check_error_body(r, 503, FLAVOURS[api])
    if FLAVOURS[api] == OPENAI:
        assert (err["error"]["code"], err["error"]["type"]) == ("guardrail_unavailable", "server_error"), err
    assert "policies" not in err, err
    assert r.headers.get("x-should-retry") != "false", "a guardrail outage is worth retrying"
    assert bedrock_closed.upstream_requests(marker) == []
    assert m.delta(ERRORS, source="INPUT") == 1
    assert m.delta(VERDICTS) == 0


@pytest.mark.parametrize("stack_name", ["bedrock_open", "bedrock_observe"])
def test_backend_down_fail_open_and_observe_forward_unchanged(request, marker, stack_name):
    stack = request.getfixturevalue(stack_name)
    body = {"messages": [{"role": "user", "content": f"{unique()} mail pat@example.com"}]}
    m = Metrics(stack)
    r = send(stack, "chat", "gr-bedrock", body, marker)
    answered(r, "chat")
    assert r.headers.get(HEADER) == "unavailable", dict(r.headers)
    assert upstream_body(stack, marker) == sent("chat", body)
    assert m.delta(ERRORS, source="INPUT") == 1


def test_try_it_admin_endpoint_and_cli(enforce, tollgate_bin):
    """`POST /admin/guardrail/test` (admin scope) and `tollgate guardrail test` show the verdict of
    the configured guardrail on a text, with the policies that fired."""
    import subprocess

    from processes import tollgate_cli_env

    api = enforce.admin_api()
    r = api.post("/admin/guardrail/test", json_body={"text": f"my ssn is {SSN}"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["backend"], report["verdict"]) == ("local", "blocked")
    assert SSN_POLICY in report["policies"]
    r = api.post("/admin/guardrail/test", json_body={"text": "hello", "source": "output"})
    assert (r.json()["verdict"], r.json()["source"]) == ("none", "OUTPUT")
    assert api.post("/admin/guardrail/test", json_body={"text": "x", "source": "sideways"}).status_code == 400
    assert enforce.admin_api(token=None).post("/admin/guardrail/test", json_body={"text": "x"}).status_code == 401

    out = subprocess.run(
        [str(tollgate_bin), "guardrail", "test", f"card {CARD}", "--config", str(enforce.config_path)],
        capture_output=True, text=True, timeout=30, env=tollgate_cli_env(),
    )
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert cli["verdict"] == "blocked" and any("CREDIT_DEBIT_CARD_NUMBER" in p for p in cli["policies"])



# --------------------------------------------------------------------------- the model's answers (enforce)

BODIES = {
    "chat": {"messages": [{"role": "user", "content": "hi"}]},
    "responses": {"input": "hi"},
    "messages": {"messages": [{"role": "user", "content": "hi"}]},
}


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_enforce_replaces_a_blocked_answer_with_the_content_filter_response(enforce, marker, api):
    """The answer (non-streamed) is buffered and assessed before any of it reaches the client; a
    blocked one is replaced by the guardrail's blocked-output message, marked as filtered the way
    each API marks it, HTTP 200, and the tokens the model spent are still charged."""
    team = f"gr-out-block-{api}"
    before = enforce.usage(team)["tokens_today"]["used"]
    r = send(enforce, api, team, {**BODIES[api]}, marker, headers={"x-fake-text": f"The number is {SSN} ok"})
    assert r.status_code == 200, r.text
    assert r.headers.get(HEADER) == "blocked"
    assert SSN not in r.text
    j = r.json()
    if api == "chat":
        assert j["choices"][0]["message"]["content"] == BLOCKED_OUT
        assert j["choices"][0]["finish_reason"] == "content_filter"
    elif api == "messages":
        assert j["content"] == [{"type": "text", "text": BLOCKED_OUT}]
        assert j["stop_reason"] == "refusal"
    else:
        assert j["output"][0]["content"][0]["text"] == BLOCKED_OUT
        assert (j["status"], j["incomplete_details"]["reason"]) == ("incomplete", "content_filter")
    assert j["usage"], "usage is kept"
    wait_until(lambda: enforce.usage(team)["tokens_today"]["used"] > before, 5, what="the answer's tokens charged")


def test_enforce_masks_an_anonymized_answer_in_place(enforce, marker):
    r = send(enforce, "chat", "gr-out-anon", {**BODIES["chat"]}, marker,
             headers={"x-fake-text": "Write to jo@example.com today"})
    assert r.status_code == 200, r.text
    assert r.headers.get(HEADER) == "anonymized"
    assert r.json()["choices"][0]["message"]["content"] == "Write to {EMAIL} today"
    assert r.json()["choices"][0]["finish_reason"] == "stop"


def test_enforce_passes_a_clean_answer_untouched(enforce, marker):
    r = send(enforce, "messages", "gr-out-clean", {**BODIES["messages"]}, marker)
    answered(r, "messages")
    assert r.headers.get(HEADER) is None


def test_sdk_sees_a_filtered_answer(enforce, marker):
    client = enforce.openai(enforce.token("gr-out-sdk"), marker)
    out = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-text": f"card {CARD}"},
    )
    assert out.choices[0].finish_reason == "content_filter"
    assert out.choices[0].message.content == BLOCKED_OUT



# --------------------------------------------------------------------------- streamed answers


STREAM_TEAMS = [_team(f"gr-async-{n}") for n in ("late", "clean")]


@pytest.fixture(scope="module")
def enforce_async(stack_factory):
    g = guardrail(mode="enforce", backend="local")
    g["streaming"] = {"strategy": "async", "window_chars": 24, "overlap_chars": 8}
    return stack_factory("guardrail-async", STREAM_TEAMS, guardrail=g)


def test_buffered_stream_never_shows_blocked_text(enforce, marker):
    """Buffered strategy (default): chunks are held until their window is assessed; a blocked
    answer reaches the SDK only as the content-filter ending."""
    client = enforce.openai(enforce.token("gr-stream-chat"), marker)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-fake-text": f"here it is {SSN} done"},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert SSN not in text
    assert text == BLOCKED_OUT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"

    a = enforce.anthropic(enforce.token("gr-stream-messages"), marker)
    with a.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                           extra_headers={"x-fake-text": f"card {CARD} ok"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "refusal"
    assert "".join(b.text for b in final.content if b.type == "text") == BLOCKED_OUT


def test_buffered_stream_passes_clean_answers_whole(enforce, marker):
    client = enforce.openai(enforce.token("gr-stream-clean"), marker)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None, "the usage chunk is released too"


def test_async_stream_ends_with_a_content_filter_event(enforce_async, marker):
    """Async strategy: chunks pass at once while windows are assessed; a blocked window ends the
    stream with the content-filter event (earlier text may have been seen)."""
    client = enforce_async.openai(enforce_async.token("gr-async-late"), marker)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        # Events 50 ms apart, as a model streams: each window's verdict is back before the next.
        extra_headers={"x-fake-text": f"one two three four five six seven eight nine ten {SSN} eleven twelve "
                                      "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty",
                       "x-fake-event-pause-ms": "50"},
    ))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["content_filter"], finishes
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Cut soon after the window holding the SSN filled up, long before the answer's end.
    assert text.endswith(BLOCKED_OUT) and "twenty" not in text, text

    clean = list(enforce_async.openai(enforce_async.token("gr-async-clean"), marker).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in clean if c.choices) == TEXT



def test_observe_assesses_answers_without_touching_them(observe, marker):
    """Observe mode assesses answers too, after they passed: the client gets them unchanged and
    the verdict is counted (source OUTPUT)."""
    m = Metrics(observe)
    r = send(observe, "chat", "gr-obs-answer", {**BODIES["chat"]}, marker, headers={"x-fake-text": f"ssn {SSN}"})
    assert r.status_code == 200 and SSN in r.json()["choices"][0]["message"]["content"]
    wait_until(lambda: m.delta(VERDICTS, source="OUTPUT", verdict="blocked", mode="observe") == 1, 5,
               what="the answer's verdict counted")

    client = observe.openai(observe.token("gr-obs-stream"), marker)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-fake-text": f"card {CARD} here"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert CARD in text, "observe never changes a stream"
    wait_until(lambda: m.delta(VERDICTS, source="OUTPUT", verdict="blocked", mode="observe") == 2, 5,
               what="the stream's verdict counted")


# --------------------------------------------------------------------------- Bedrock, end to end


class FakeBedrock:
    """A local server speaking Bedrock's ApplyGuardrail REST contract
    (`POST /guardrail/{id}/version/{version}/apply`): SSNs are blocked, emails anonymized."""

    def __init__(self):
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.calls: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.calls.append((self.path, body))
                texts = [c["text"]["text"] for c in body["content"]]
                joined = " ".join(texts)
                usage = {"topicPolicyUnits": 0, "contentPolicyUnits": 0, "wordPolicyUnits": 0,
                         "sensitiveInformationPolicyUnits": len(texts), "sensitiveInformationPolicyFreeUnits": 0,
                         "contextualGroundingPolicyUnits": 0}
                if re.search(r"\d{3}-\d{2}-\d{4}", joined):
                    answer = {"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "Bedrock says no."}], "usage": usage,
                              "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [
                                  {"type": "US_SOCIAL_SECURITY_NUMBER", "match": "x", "action": "BLOCKED"}]}}]}
                elif "@" in joined:
                    masked = [re.sub(r"\S+@\S+", "{EMAIL}", t) for t in texts]
                    answer = {"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": t} for t in masked], "usage": usage,
                              "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [
                                  {"type": "EMAIL", "match": "x", "action": "ANONYMIZED"}]}}]}
                else:
                    answer = {"action": "NONE", "outputs": [], "assessments": [], "usage": usage}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def bedrock():
    fake = FakeBedrock()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def enforce_bedrock(stack_factory, bedrock):
    g = {"mode": "enforce", "backend": "bedrock",
         "bedrock": {"guardrail_id": "gr-e2e", "guardrail_version": "4", "region": "us-east-1",
                     "endpoint_url": bedrock.url, "timeout_ms": 2000}}
    return stack_factory("guardrail-bedrock", [_team("gr-bedrock-e2e")], guardrail=g, tollgate_env=AWS_ENV)


def test_bedrock_backend_blocks_and_masks_through_envoy(enforce_bedrock, bedrock, marker):
    s = enforce_bedrock
    r = send(s, "chat", "gr-bedrock-e2e", {"messages": [{"role": "user", "content": f"ssn {SSN}"}]}, marker)
    assert r.status_code == 400 and r.json()["reason"] == "Bedrock says no.", r.text
    assert s.upstream_requests(marker) == []
    path, body = bedrock.calls[-1]
    assert path == "/guardrail/gr-e2e/version/4/apply"
    assert body["source"] == "INPUT" and body["content"] == [{"text": {"text": f"ssn {SSN}"}}]

    r = send(s, "messages", "gr-bedrock-e2e", {"messages": [{"role": "user", "content": "mail jo@example.com"}]}, marker)
    assert r.status_code == 200, r.text
    assert upstream_body(s, marker)["messages"][0]["content"] == "mail {EMAIL}"
    assert any(b["source"] == "OUTPUT" for _, b in bedrock.calls), "the answer went to Bedrock too"


@pytest.fixture(scope="module")
def enforce_user_only(stack_factory):
    g = guardrail(mode="enforce", backend="local")
    g["parts"] = ["user"]
    return stack_factory("guardrail-parts", [_team("gr-parts")], guardrail=g)


def test_parts_choose_what_is_assessed(enforce_user_only, marker):
    """`parts = ["user"]`: system prompts and tool results are not sent to the guardrail."""
    s = enforce_user_only
    body = {"messages": [{"role": "system", "content": f"internal ref {SSN}"},
                         {"role": "user", "content": "hello"},
                         {"role": "tool", "tool_call_id": "t", "content": f"lookup says {SSN}"}]}
    r = send(s, "chat", "gr-parts", body, marker)
    assert r.status_code == 200, r.text
    r = send(s, "chat", "gr-parts", {"messages": [{"role": "user", "content": f"mine is {SSN}"}]}, marker)
    assert r.status_code == 400, r.text
