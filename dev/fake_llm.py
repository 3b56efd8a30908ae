#!/usr/bin/env python3
"""fake_llm: a local LLM upstream that speaks the OpenAI and Anthropic wire formats.

Used by ``dev/run`` and by the end-to-end tests (``tests/e2e``) as the upstream behind Envoy.
Standard library only.

Usage::

    python dev/fake_llm.py --port 8081 [--host 127.0.0.1]

It prints ``fake_llm listening on http://HOST:PORT`` once it accepts connections.

Endpoints
=========

``POST /v1/chat/completions``
    OpenAI Chat Completions.  JSON (``object: "chat.completion"``) or, with ``"stream": true``,
    Server-Sent Events: ``data: {chat.completion.chunk}`` events whose ``choices[0].delta.content``
    carry the text piece by piece, a chunk with ``finish_reason: "stop"``, then ``data: [DONE]``.
    Only when the request has ``stream_options.include_usage: true`` is a final chunk with
    ``"choices": []`` and ``usage`` sent (every earlier chunk then carries ``"usage": null``),
    as OpenAI does.  Usage: ``{prompt_tokens, completion_tokens, total_tokens,
    prompt_tokens_details: {cached_tokens, audio_tokens}, completion_tokens_details: {...}}``.

``POST /v1/responses``
    OpenAI Responses.  JSON (``object: "response"``, ``output`` = one assistant message with an
    ``output_text`` part) or, with ``"stream": true``, SSE with ``event:`` lines:
    ``response.created``, ``response.in_progress``, ``response.output_item.added``,
    ``response.content_part.added``, ``response.output_text.delta`` ..., ``response.output_text.done``,
    ``response.content_part.done``, ``response.output_item.done``, ``response.completed`` (whose
    ``response.usage`` carries the usage).  Every event has a ``sequence_number``.
    Usage: ``{input_tokens, input_tokens_details: {cached_tokens}, output_tokens,
    output_tokens_details: {reasoning_tokens}, total_tokens}``.

``POST /v1/messages``
    Anthropic Messages.  JSON (``type: "message"``) or, with ``"stream": true``, SSE:
    ``message_start`` (``message.usage`` = input and cache fields, ``output_tokens: 1``),
    ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``) ...,
    ``content_block_stop``, ``message_delta`` (``usage.output_tokens`` = the final count),
    ``message_stop``.  Usage: ``{input_tokens, output_tokens, cache_creation_input_tokens,
    cache_read_input_tokens}``.

``POST /v1/completions``
    OpenAI legacy completions.  JSON (``object: "text_completion"``, ``choices[0].text``) or, with
    ``"stream": true``, SSE chunks whose ``choices[0].text`` carry the text, then ``data: [DONE]``;
    as for chat, a final ``"choices": []`` chunk with ``usage`` only with
    ``stream_options.include_usage: true``.  Usage: ``{prompt_tokens, completion_tokens, total_tokens}``.

``POST /v1/embeddings``
    OpenAI embeddings: one ``{"object": "embedding", "index", "embedding": [8 floats]}`` per input
    (a string or a list).  Usage: ``{prompt_tokens, total_tokens}`` (prompt = the ``prompt`` control).

``POST /v1/images/generations``
    OpenAI images: ``data`` holds ``n`` images (``b64_json`` of a few bytes, or ``url`` with
    ``revised_prompt`` for DALL-E).  ``gpt-image-1`` answers also carry ``size``, ``quality`` and
    ``usage: {input_tokens, input_tokens_details: {text_tokens, image_tokens}, output_tokens,
    total_tokens}`` (input = prompt, output = completion); DALL-E answers report no usage, as
    OpenAI's do.

``POST /v1/audio/speech``
    Text to speech: ``audio/mpeg`` bytes (no usage: speech is billed per input character).

``POST /v1/files``
    An upload (any body): a ``file`` object.

``POST /v1/messages/count_tokens``, ``POST /v1/responses/input_tokens``
    Token counts: ``{"input_tokens": prompt}`` (Responses adds ``object: "response.input_tokens"``).

``GET /v1/models``, ``GET /v1/models/{id}``
    A small OpenAI model list, and one model.

``GET`` on any other ``/v1/...`` path (files, batches, stored responses)
    A small JSON object naming the path: reads that cost nothing.

Any other request under ``/v1/`` is recorded (see introspection) and answered 404.

Test controls (request headers; they pass through Envoy)
========================================================

``x-fake-usage: prompt=10,completion=20,cached=0,cache_write=0``
    Token usage to report (these are the defaults; any key may be omitted).
    OpenAI: ``prompt_tokens`` / ``input_tokens`` = prompt + cached (cached tokens are part of the
    prompt), ``cached_tokens`` = cached, ``completion_tokens`` / ``output_tokens`` = completion.
    Anthropic: ``input_tokens`` = prompt, ``cache_read_input_tokens`` = cached,
    ``cache_creation_input_tokens`` = cache_write, ``output_tokens`` = completion.
``x-fake-status: 500``
    Answer with that status and an error body in the API's own shape (JSON, even for streams).
``x-fake-cut-after: N``
    Streams only: send the first N SSE events, then drop the connection abruptly (no terminating
    chunk, so no final usage reaches the client).
``x-fake-delay-ms: N``
    Sleep N milliseconds before answering.
``x-fake-event-pause-ms: N``
    Streams only: pause N milliseconds after each SSE event (default 5), for long-lived streams.
``x-fake-text: some text``
    The assistant text to return (default: a short fixed sentence).  It is streamed word by word.
``x-fake-images: N``
    Images: return N images whatever ``n`` asked for.
``x-fake-anthropic-delta-usage: full``
    Anthropic streams: make ``message_delta.usage`` carry the cumulative input and cache fields as
    well as ``output_tokens`` (newer Anthropic API versions do this).  Default: output_tokens only.

Introspection
=============

``GET /_fake/requests``
    JSON list of the requests received (any path but ``/_fake/...``, any method, answered or not),
    oldest first:
    ``{"method", "path", "headers" (lower-cased names; repeated headers joined with ", "),
    "body" (parsed JSON, else the raw string, else null)}``.
``DELETE /_fake/requests``
    Clears that list.
``GET /_fake/health``
    ``{"ok": true}``.

Responses are HTTP/1.1 with keep-alive: JSON bodies have a ``Content-Length``; SSE bodies use
``Transfer-Encoding: chunked`` and each event is written and flushed as its own chunk, with a tiny
pause between events so they reach the client as separate reads.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_TEXT = "Hello from the fake LLM upstream! This is a canned answer."
EVENT_PAUSE_S = 0.005

_requests_lock = threading.Lock()
_requests: list[dict] = []


def _parse_usage(header: str | None) -> dict[str, int]:
    usage = {"prompt": 10, "completion": 20, "cached": 0, "cache_write": 0}
    if header:
        for part in header.split(","):
            part = part.strip()
            if not part:
                continue
            key, _, value = part.partition("=")
            key = key.strip().lower().replace("-", "_")
            if key not in usage:
                raise ValueError(f"unknown x-fake-usage key {key!r}")
            usage[key] = int(value.strip())
    return usage


def _words(text: str) -> list[str]:
    """Split text into stream pieces that concatenate back to the text."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        current += ch
        if ch == " ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces or [""]


def _sse(data: dict | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


class _Dropped(Exception):
    """The stream was cut on purpose (x-fake-cut-after)."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-llm/1.0"
    sys_version = ""

    # Quiet by default: one line per request to stderr.
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        sys.stderr.write("fake_llm: %s %s\n" % (self.address_string(), format % args))

    # ---------------------------------------------------------------- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj, extra_headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self._events_sent = 0

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, data: bytes) -> None:
        if self._cut_after is not None and self._events_sent >= self._cut_after:
            raise _Dropped()
        self._write_chunk(data)
        self._events_sent += 1
        time.sleep(self._event_pause_s)

    def _end_sse(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop_connection(self) -> None:
        """Close abruptly: RST, no terminating chunk."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---------------------------------------------------------------- routing

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/_fake/requests":
            with _requests_lock:
                snapshot = list(_requests)
            self._send_json(200, snapshot)
            return
        if path == "/_fake/health":
            self._send_json(200, {"ok": True})
            return
        self._record(self._read_body())
        now = int(time.time())
        models = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "claude-opus-4-6"]
        if path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": now, "owned_by": "fake-llm"} for m in models
                    ],
                },
            )
        elif path.startswith("/v1/models/"):
            model = path.rsplit("/", 1)[1]
            self._send_json(200, {"id": model, "object": "model", "created": now, "owned_by": "fake-llm"})
        elif path.startswith("/v1/"):
            self._send_json(200, {"object": "fake.read", "path": path})
        else:
            self._not_found()

    def do_DELETE(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == "/_fake/requests":
            self._read_body()
            with _requests_lock:
                _requests.clear()
            self._send_json(200, {"cleared": True})
        else:
            self._record(self._read_body())
            self._not_found()

    def do_PUT(self) -> None:  # noqa: N802
        self._record(self._read_body())
        self._not_found()

    do_PATCH = do_PUT

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        handlers = {
            "/v1/chat/completions": ("openai", self._chat),
            "/v1/responses": ("openai", self._responses),
            "/v1/messages": ("anthropic", self._messages),
            "/v1/completions": ("openai", self._completions),
            "/v1/embeddings": ("openai", self._embeddings),
            "/v1/images/generations": ("openai", self._images),
            "/v1/audio/speech": ("openai", self._speech),
            "/v1/messages/count_tokens": ("anthropic", self._count_tokens),
            "/v1/responses/input_tokens": ("openai", self._input_tokens),
        }
        body = self._record(raw)
        if path == "/v1/files":
            self._send_json(200, {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(raw),
                                  "created_at": int(time.time()), "filename": "upload", "purpose": "batch"})
            return
        if path not in handlers:
            self._not_found()
            return
        flavour, handler = handlers[path]

        try:
            delay = int(self.headers.get("x-fake-delay-ms") or 0)
            pause = self.headers.get("x-fake-event-pause-ms")
            self._event_pause_s = int(pause) / 1000 if pause else EVENT_PAUSE_S
            status = int(self.headers.get("x-fake-status") or 0)
            cut = self.headers.get("x-fake-cut-after")
            self._cut_after = int(cut) if cut not in (None, "") else None
            usage = _parse_usage(self.headers.get("x-fake-usage"))
        except ValueError as e:
            self._error(flavour, 400, f"bad fake control header: {e}")
            return
        if delay > 0:
            time.sleep(delay / 1000)
        if status and status != 200:
            self._error(flavour, status, f"fake upstream error (x-fake-status: {status})")
            return
        if not isinstance(body, dict):
            self._error(flavour, 400, "request body is not a JSON object")
            return
        text = self.headers.get("x-fake-text") or DEFAULT_TEXT
        try:
            handler(body, usage, text)
        except _Dropped:
            self._drop_connection()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _record(self, raw: bytes):
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = raw.decode("utf-8", errors="replace")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        with _requests_lock:
            _requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
        return body

    def _not_found(self) -> None:
        self._send_json(404, {"error": {"message": f"no route for {self.command} {self.path}", "type": "invalid_request_error", "param": None, "code": "not_found"}})

    def _error(self, flavour: str, status: int, message: str) -> None:
        if flavour == "anthropic":
            etype = {
                400: "invalid_request_error",
                401: "authentication_error",
                403: "permission_error",
                404: "not_found_error",
                413: "request_too_large",
                429: "rate_limit_error",
                529: "overloaded_error",
            }.get(status, "api_error")
            body = {"type": "error", "error": {"type": etype, "message": message}}
            headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        else:
            etype = {
                400: "invalid_request_error",
                401: "invalid_request_error",
                403: "invalid_request_error",
                404: "invalid_request_error",
                429: "requests",
            }.get(status, "server_error")
            body = {"error": {"message": message, "type": etype, "param": None, "code": None}}
            headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
        self._send_json(status, body, headers)

    # ---------------------------------------------------------------- OpenAI chat

    def _chat(self, req: dict, u: dict, text: str) -> None:
        model = req.get("model") or "gpt-4o-mini"
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        usage = {
            "prompt_tokens": u["prompt"] + u["cached"],
            "completion_tokens": u["completion"],
            "total_tokens": u["prompt"] + u["cached"] + u["completion"],
            "prompt_tokens_details": {"cached_tokens": u["cached"], "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if not req.get("stream"):
            self._send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "service_tier": "default",
                    "system_fingerprint": "fp_fake",
                },
            )
            return

        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list, **extra) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = None
            obj.update(extra)
            return _sse(obj)

        self._start_sse()
        self._event(chunk([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None, "finish_reason": None}]))
        for piece in _words(text):
            self._event(chunk([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]))
        self._event(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
        if include_usage:
            self._event(chunk([], usage=usage))
        self._event(_sse("[DONE]"))
        self._end_sse()

    # ---------------------------------------------------------------- OpenAI legacy completions

    def _completions(self, req: dict, u: dict, text: str) -> None:
        model = req.get("model") or "gpt-3.5-turbo-instruct"
        cid = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        usage = {
            "prompt_tokens": u["prompt"],
            "completion_tokens": u["completion"],
            "total_tokens": u["prompt"] + u["completion"],
        }

        def completion(choices: list, **extra) -> dict:
            obj = {"id": cid, "object": "text_completion", "created": created, "model": model,
                   "system_fingerprint": None, "choices": choices}
            obj.update(extra)
            return obj

        if not req.get("stream"):
            self._send_json(200, completion(
                [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}], usage=usage))
            return
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self._start_sse()
        for piece in _words(text):
            extra = {"usage": None} if include_usage else {}
            self._event(_sse(completion(
                [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}], **extra)))
        extra = {"usage": None} if include_usage else {}
        self._event(_sse(completion([{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}], **extra)))
        if include_usage:
            self._event(_sse(completion([], usage=usage)))
        self._event(_sse("[DONE]"))
        self._end_sse()

    # ---------------------------------------------------------------- OpenAI embeddings, images, speech

    def _embeddings(self, req: dict, u: dict, text: str) -> None:
        inputs = req.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        self._send_json(200, {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [round(0.01 * (i + k), 4) for k in range(8)]}
                for i in range(count)
            ],
            "model": req.get("model") or "text-embedding-3-small",
            "usage": {"prompt_tokens": u["prompt"], "total_tokens": u["prompt"]},
        })

    def _images(self, req: dict, u: dict, text: str) -> None:
        model = req.get("model") or "dall-e-2"
        count = int(self.headers.get("x-fake-images") or req.get("n") or 1)
        pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
        created = int(time.time())
        if model.startswith("gpt-image"):
            self._send_json(200, {
                "created": created,
                "background": "opaque",
                "data": [{"b64_json": pixel} for _ in range(count)],
                "output_format": "png",
                "quality": req.get("quality") or "medium",
                "size": req.get("size") or "1024x1024",
                "usage": {
                    "input_tokens": u["prompt"],
                    "input_tokens_details": {"text_tokens": u["prompt"], "image_tokens": 0},
                    "output_tokens": u["completion"],
                    "total_tokens": u["prompt"] + u["completion"],
                },
            })
            return
        image = ({"b64_json": pixel} if req.get("response_format") == "b64_json"
                 else {"url": f"https://fake-llm.invalid/images/{uuid.uuid4().hex}.png"})
        data = [dict(image, revised_prompt=req.get("prompt")) if model == "dall-e-3" else dict(image)
                for _ in range(count)]
        self._send_json(200, {"created": created, "data": data})

    def _speech(self, req: dict, u: dict, text: str) -> None:
        audio = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 64
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.send_header("Content-Length", str(len(audio)))
        self.end_headers()
        self.wfile.write(audio)
        self.wfile.flush()

    def _count_tokens(self, req: dict, u: dict, text: str) -> None:
        self._send_json(200, {"input_tokens": u["prompt"]})

    def _input_tokens(self, req: dict, u: dict, text: str) -> None:
        self._send_json(200, {"object": "response.input_tokens", "input_tokens": u["prompt"]})

    # ---------------------------------------------------------------- OpenAI responses

    def _responses(self, req: dict, u: dict, text: str) -> None:
        model = req.get("model") or "gpt-4o-mini"
        rid = f"resp_{uuid.uuid4().hex}"
        mid = f"msg_{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {
            "input_tokens": u["prompt"] + u["cached"],
            "input_tokens_details": {"cached_tokens": u["cached"]},
            "output_tokens": u["completion"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u["prompt"] + u["cached"] + u["completion"],
        }

        def message(status: str, content: list) -> dict:
            return {"id": mid, "type": "message", "status": status, "role": "assistant", "content": content}

        part_done = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def response(status: str, output: list, usage_obj) -> dict:
            return {
                "id": rid,
                "object": "response",
                "created_at": created,
                "status": status,
                "background": False,
                "error": None,
                "incomplete_details": None,
                "instructions": req.get("instructions"),
                "max_output_tokens": req.get("max_output_tokens"),
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": req.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "service_tier": "default",
                "store": True,
                "temperature": 1.0,
                "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": "auto",
                "tools": [],
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": usage_obj,
                "user": None,
                "metadata": {},
            }

        if not req.get("stream"):
            self._send_json(200, response("completed", [message("completed", [part_done])], usage))
            return

        seq = 0

        def ev(kind: str, **fields) -> bytes:
            nonlocal seq
            obj = {"type": kind, "sequence_number": seq, **fields}
            seq += 1
            return _sse(obj, event=kind)

        self._start_sse()
        self._event(ev("response.created", response=response("in_progress", [], None)))
        self._event(ev("response.in_progress", response=response("in_progress", [], None)))
        self._event(ev("response.output_item.added", output_index=0, item=message("in_progress", [])))
        self._event(
            ev(
                "response.content_part.added",
                item_id=mid,
                output_index=0,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
        )
        for piece in _words(text):
            self._event(
                ev("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=piece, logprobs=[])
            )
        self._event(ev("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text, logprobs=[]))
        self._event(ev("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=part_done))
        self._event(ev("response.output_item.done", output_index=0, item=message("completed", [part_done])))
        self._event(ev("response.completed", response=response("completed", [message("completed", [part_done])], usage)))
        self._end_sse()

    # ---------------------------------------------------------------- Anthropic messages

    def _messages(self, req: dict, u: dict, text: str) -> None:
        model = req.get("model") or "claude-haiku-4-5"
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        usage = {
            "input_tokens": u["prompt"],
            "cache_creation_input_tokens": u["cache_write"],
            "cache_read_input_tokens": u["cached"],
            "output_tokens": u["completion"],
            "service_tier": "standard",
        }
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}", "anthropic-organization-id": "fake-org"}
        if not req.get("stream"):
            self._send_json(
                200,
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
                headers,
            )
            return

        start_usage = dict(usage, output_tokens=1)
        if (self.headers.get("x-fake-anthropic-delta-usage") or "").lower() == "full":
            delta_usage = {
                "input_tokens": u["prompt"],
                "cache_creation_input_tokens": u["cache_write"],
                "cache_read_input_tokens": u["cached"],
                "output_tokens": u["completion"],
            }
        else:
            delta_usage = {"output_tokens": u["completion"]}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()
        self._events_sent = 0

        self._event(
            _sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
                event="message_start",
            )
        )
        self._event(
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                event="content_block_start",
            )
        )
        self._event(_sse({"type": "ping"}, event="ping"))
        for piece in _words(text):
            self._event(
                _sse(
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                    event="content_block_delta",
                )
            )
        self._event(_sse({"type": "content_block_stop", "index": 0}, event="content_block_stop"))
        self._event(
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": delta_usage,
                },
                event="message_delta",
            )
        )
        self._event(_sse({"type": "message_stop"}, event="message_stop"))
        self._end_sse()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic upstream for tollgate tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    server = Server((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    print(f"fake_llm listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
