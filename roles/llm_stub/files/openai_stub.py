#!/usr/bin/env python3
"""OpenAI-compatible upstream stub for the lab (standard library only, Python >= 3.11).

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions (JSON or SSE stream),
POST /v1/completions, POST /v1/embeddings, POST /v1/responses (not streamed). Paths without the
/v1 prefix work too.

Usage counts are deterministic: one token per whitespace-separated word.
Error injection: model ``stub-error-NNN`` (e.g. ``stub-error-500``) or request header
``x-stub-status: NNN`` answers status NNN with an OpenAI-style error body.
Slow answers: model ``stub-slow-MS`` (e.g. ``stub-slow-2000``) waits MS milliseconds first.
The same two faults for any model name, chosen by the client through the gateway: a message
text containing ``[stub-status=NNN]`` or ``[stub-slow-ms=MS]`` (the gateway forwards messages,
not headers, so this is how one client makes the shared deployment fail for its own calls only).
Latency: ``--latency-ms`` or env STUB_LATENCY_MS (added before the first byte).
Auth: if env STUB_API_KEY is set, requests must carry ``Authorization: Bearer <STUB_API_KEY>``.
One line per request is printed to stdout (never headers or bodies).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STUB_MODEL = "stub-model"
REPLY_WORDS = ["This", "is", "a", "deterministic", "reply", "from", "the", "lab", "stub", "upstream"]
ERROR_MODEL = re.compile(r"^(?:.*/)?stub-error-(\d{3})$")
SLOW_MODEL = re.compile(r"^(?:.*/)?stub-slow-(\d{1,6})$")
STATUS_DIRECTIVE = re.compile(r"\[stub-status=(\d{3})\]")
SLOW_DIRECTIVE = re.compile(r"\[stub-slow-ms=(\d{1,6})\]")
MAX_BODY_BYTES = 64 * 1024 * 1024


def count_words(value: object) -> int:
    """Deterministic token count: words in every string inside the value."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        return sum(count_words(item) for key, item in value.items() if key in ("content", "text", "prompt"))
    return 0


def message_text(body: dict) -> str:
    """The text of the messages (chat) or the prompt (completions), for the fault directives."""
    messages = body.get("messages")
    parts = [m.get("content") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    parts.append(body.get("prompt"))
    return " ".join(part for part in parts if isinstance(part, str))


def reply_words(max_tokens: object) -> list[str]:
    if isinstance(max_tokens, int) and 0 < max_tokens < len(REPLY_WORDS):
        return REPLY_WORDS[:max_tokens]
    return REPLY_WORDS


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(status: int, message: str) -> dict[str, object]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-stub/1"
    latency_s = 0.0
    api_key_digest: bytes | None = None

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log; handle() prints our own line."""

    def log_line(self, status: int, model: str | None, stream: bool, started: float) -> None:
        elapsed_ms = (time.monotonic() - started) * 1000
        print(
            f"{self.command} {self.path} status={status} model={model} stream={stream} ms={elapsed_ms:.1f}",
            flush=True,
        )

    def send_json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def authorized(self) -> bool:
        if self.api_key_digest is None:
            return True
        header = self.headers.get("Authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.api_key_digest)

    def read_json(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would corrupt the next request
            return None
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def injected_status(self, model: str | None, text: str) -> int | None:
        header = self.headers.get("x-stub-status")
        if header and header.isdigit():
            return int(header)
        match = ERROR_MODEL.match(model or "") or STATUS_DIRECTIVE.search(text)
        return int(match.group(1)) if match else None

    def injected_delay(self, model: str | None, text: str) -> float:
        match = SLOW_MODEL.match(model or "") or SLOW_DIRECTIVE.search(text)
        return self.latency_s + (int(match.group(1)) / 1000 if match else 0)

    # -- routes -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        started = time.monotonic()
        path = self.path.split("?", 1)[0].removeprefix("/v1")
        if path == "/health":
            status, payload = 200, {"status": "ok"}
        elif not self.authorized():
            status, payload = 401, error_body(401, "Incorrect API key provided to the stub.")
        elif path == "/models":
            status = 200
            payload = {"object": "list", "data": [{"id": STUB_MODEL, "object": "model", "owned_by": "stub"}]}
        else:
            status, payload = 404, error_body(404, f"Unknown path {path}")
        self.send_json(status, payload)
        self.log_line(status, None, False, started)

    def do_POST(self) -> None:
        started = time.monotonic()
        path = self.path.split("?", 1)[0].removeprefix("/v1")
        body = self.read_json()
        model = body.get("model") if body else None
        stream = bool(body.get("stream")) if body else False
        status = self.answer_post(path, body, model if isinstance(model, str) else None, stream)
        self.log_line(status, model if isinstance(model, str) else None, stream, started)

    def answer_post(self, path: str, body: dict | None, model: str | None, stream: bool) -> int:
        if not self.authorized():
            self.send_json(401, error_body(401, "Incorrect API key provided to the stub."))
            return 401
        if body is None:
            self.send_json(400, error_body(400, "Request body is not a JSON object."))
            return 400
        text = message_text(body)
        injected = self.injected_status(model, text)
        delay = self.injected_delay(model, text)
        if delay:
            time.sleep(delay)
        if injected is not None and injected != 200:
            phrase = HTTPStatus(injected).phrase if injected in HTTPStatus._value2member_map_ else "Error"
            self.send_json(injected, error_body(injected, f"Injected stub error {injected} ({phrase})."))
            return injected
        if path == "/chat/completions":
            if stream:
                self.stream_chat(body, model)
            else:
                self.send_json(200, self.chat_completion(body, model))
            return 200
        if path == "/completions":
            self.send_json(200, self.text_completion(body, model))
            return 200
        if path == "/embeddings":
            self.send_json(200, self.embeddings(body, model))
            return 200
        if path == "/responses":
            self.send_json(200, self.response(body, model))
            return 200
        self.send_json(404, error_body(404, f"Unknown path {path}"))
        return 404

    # -- payloads -----------------------------------------------------------------------------

    @staticmethod
    def chat_completion(body: dict, model: str | None) -> dict:
        words = reply_words(body.get("max_tokens"))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model or STUB_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage(count_words(body.get("messages")), len(words)),
        }

    @staticmethod
    def text_completion(body: dict, model: str | None) -> dict:
        words = reply_words(body.get("max_tokens"))
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model or STUB_MODEL,
            "choices": [{"index": 0, "text": " ".join(words), "finish_reason": "stop", "logprobs": None}],
            "usage": usage(count_words(body.get("prompt")), len(words)),
        }

    @staticmethod
    def response(body: dict, model: str | None) -> dict:
        """OpenAI's Responses API (LiteLLM sends /v1/responses and /v1/messages here)."""
        words = reply_words(body.get("max_output_tokens"))
        prompt_tokens, completion_tokens = count_words(body.get("input")), len(words)
        text = {"type": "output_text", "text": " ".join(words), "annotations": []}
        message = {"type": "message", "id": f"msg_{uuid.uuid4().hex}", "status": "completed"}
        return {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model or STUB_MODEL,
            "output": [{**message, "role": "assistant", "content": [text]}],
            "usage": {
                "input_tokens": prompt_tokens,
                "output_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @staticmethod
    def embeddings(body: dict, model: str | None) -> dict:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt_tokens = count_words(items)
        return {
            "object": "list",
            "model": model or STUB_MODEL,
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.0, 0.5, 1.0]} for i in range(len(items))
            ],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    def stream_chat(self, body: dict, model: str | None) -> None:
        words = reply_words(body.get("max_tokens"))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model or STUB_MODEL,
        }
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(payload: object) -> None:
            self.send_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

        event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for i, word in enumerate(words):
            text = word if i == 0 else " " + word
            event({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
        event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            event({**base, "choices": [], "usage": usage(count_words(body.get("messages")), len(words))})
        self.send_chunk(b"data: [DONE]\n\n")
        self.send_chunk(b"")


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=float(os.environ.get("STUB_LATENCY_MS", "0")),
        help="delay before each POST answer (default: env STUB_LATENCY_MS or 0)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    StubHandler.latency_s = max(args.latency_ms, 0.0) / 1000
    api_key = os.environ.get("STUB_API_KEY")
    StubHandler.api_key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
    server = StubServer((args.host, args.port), StubHandler)
    print(
        f"openai-stub listening on {args.host}:{server.server_address[1]} "
        f"latency_ms={args.latency_ms:g} auth={'on' if api_key else 'off'}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
