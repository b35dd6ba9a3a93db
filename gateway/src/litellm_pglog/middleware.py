"""Pure ASGI middleware that logs every OpenAI-route exchange exactly as the client saw it.

It sits outside the whole LiteLLM app, so the status it records is the one in the
``http.response.start`` the server really sent, whichever layer produced it (auth, routing,
upstream errors, our own 413/400). One ``LogRecord`` per request is handed to the writer
after the response finished (or the client went away); the writer never blocks.

Request ids: the middleware generates a uuid4 per request and puts it in the request's
``x-litellm-call-id`` header, which LiteLLM adopts as ``litellm_call_id``. A client-sent
value is replaced, because LiteLLM trusts it verbatim and a reused id would merge two
requests into one log row. The callback in ``callbacks.py`` reports token usage under the
same id, and the writer merges both halves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from litellm_pglog.keys import INVALID_KEY_ALIAS, get_key_store, presented_key
from litellm_pglog.records import LogRecord
from litellm_pglog.settings import load_settings
from litellm_pglog.writer import get_writer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The OpenAI-compatible routes whose traffic is logged; everything else (health, metrics,
# admin UI, other provider formats) passes through untouched.
LOGGED_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
        "/v1/embeddings",
        "/embeddings",
        "/v1/models",
        "/models",
    }
)
CALL_ID_HEADER = b"x-litellm-call-id"
CLIENT_CLOSED_REQUEST = 499  # nginx's convention: the client left before any status was sent
MAX_CAPTURED_BODY_BYTES = 1024 * 1024
MAX_ERROR_MESSAGE_CHARS = 2000
# How much of an oversized body is read and thrown away so that the client, still sending,
# receives the 413 instead of a connection reset; beyond this the connection is just closed.
MAX_DISCARDED_BODY_BYTES = 64 * 1024 * 1024
WRITER_STOP_TIMEOUT_SECONDS = 10.0

logger = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    def __init__(self, more_body: bool) -> None:
        super().__init__("request body too large")
        self.more_body = more_body


class ClientGone(Exception):
    pass


def openai_error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def describe_request(payload: object) -> tuple[str | None, bool | None]:
    """Model and stream flag of a request body, when it has them."""
    if not isinstance(payload, dict):
        return None, None
    model = payload.get("model")
    stream = payload.get("stream", False)  # OpenAI's default
    return (model if isinstance(model, str) else None), (stream if isinstance(stream, bool) else None)


def error_fields(payload: object, status: int) -> tuple[str | None, str | None]:
    """(error_type, error_message) of an OpenAI-style or FastAPI-style error body."""
    if not isinstance(payload, dict):
        return None, None
    error = payload.get("error", payload.get("detail"))
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        message = error.get("message")
    else:
        kind, message = None, error
    if kind is None and message is None:
        return None, None
    kind = str(kind) if kind is not None else f"http_{status}"
    message = message if isinstance(message, str) else json.dumps(message, default=str)
    return kind[:255], message[:MAX_ERROR_MESSAGE_CHARS]


def usage_fields(payload: object) -> dict[str, int]:
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return {}
    names = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {name: usage[name] for name in names if isinstance(usage.get(name), int)}


@dataclass
class ResponseObserver:
    """Collects status, usage and errors from the response messages without altering them."""

    record: LogRecord
    started: float = field(default_factory=time.perf_counter)
    submitted: bool = False
    complete: bool = False
    is_sse: bool = False
    body: bytearray = field(default_factory=bytearray)
    overflow: bool = False
    pending_line: bytearray = field(default_factory=bytearray)
    client_gone: bool = False
    status_before_gone: int | None = None

    def on_start(self, message: Message) -> None:
        self.record.status_code = message["status"]
        content_type = b""
        for name, value in message.get("headers") or ():
            if name.lower() == b"content-type":
                content_type = bytes(value).lower()
        self.is_sse = content_type.startswith(b"text/event-stream")

    def on_disconnect(self) -> None:
        if not self.complete:
            self.client_gone = True
            self.status_before_gone = self.record.status_code

    def on_body(self, message: Message) -> None:
        chunk = message.get("body") or b""
        if self.is_sse:
            self._scan_sse(chunk)
        elif not self.overflow:
            self.body += chunk
            if len(self.body) > MAX_CAPTURED_BODY_BYTES:
                self.overflow, self.body = True, bytearray()
        if not message.get("more_body", False):
            self.complete = True

    def _scan_sse(self, chunk: bytes) -> None:
        # Only lines that can carry usage or an error are decoded; content deltas are skipped.
        self.pending_line += chunk
        *lines, rest = self.pending_line.split(b"\n")
        self.pending_line = bytearray(rest) if len(rest) <= MAX_CAPTURED_BODY_BYTES else bytearray()
        for line in lines:
            if line.startswith(b"data:") and (b'"usage"' in line or b'"error"' in line):
                self._apply(_loads(line[5:]))

    def finish(self) -> None:
        if self.body and not self.overflow:
            self._apply(_loads(bytes(self.body)))
        if self.client_gone:
            # A status line sent after the client left never reached it.
            self.record.status_code = self.status_before_gone or CLIENT_CLOSED_REQUEST
            self.record.error_type = "client_disconnected"
        elif not self.complete and self.record.status_code not in (None, CLIENT_CLOSED_REQUEST):
            self.record.error_type = self.record.error_type or "response_incomplete"

    def _apply(self, payload: object) -> None:
        for name, value in usage_fields(payload).items():
            setattr(self.record, name, value)
        status = self.record.status_code or 0
        # An SSE stream can report an error after a 200 status line: keep it too.
        has_error_object = isinstance(payload, dict) and "error" in payload
        kind, message = error_fields(payload, status)
        if kind is not None and (status >= 400 or has_error_object):
            self.record.error_type, self.record.error_message = kind, message


def _loads(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return None


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        settings = load_settings()
        self.enabled = settings.enabled
        self.max_body_bytes = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled:  # LITELLM_PGLOG_ENABLED=false: the bare proxy, for baseline measurements
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].rstrip("/") in LOGGED_ROUTES:
            await self._logged_request(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- lifespan -----------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] == "lifespan.startup":
            try:
                await self._startup()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": f"litellm_pglog: {exc}"})
                return
        delivered = False

        async def replay_first() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return first
            return await receive()

        async def stop_writer_then_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._shutdown()
            await send(message)

        await self.app(scope, replay_first, stop_writer_then_send)

    @staticmethod
    async def _startup() -> None:
        get_key_store()  # a broken keys file must stop the start, not fail every request
        await asyncio.to_thread(get_writer().start)  # replays the spool left by a previous run

    @staticmethod
    async def _shutdown() -> None:
        try:
            await asyncio.to_thread(get_writer().stop, WRITER_STOP_TIMEOUT_SECONDS)
        except Exception:
            logger.exception("litellm_pglog: stopping the log writer failed")

    # -- logged requests ----------------------------------------------------------------------

    async def _logged_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = str(uuid.uuid4())
        record = LogRecord(
            request_id=request_id,
            created_at=datetime.now(UTC),
            route=scope["path"],
            method=scope["method"],
        )
        self._identify_caller(scope, record)
        observer = ResponseObserver(record)
        scope = {**scope, "headers": _with_call_id(scope["headers"], request_id)}
        try:
            await self._dispatch(scope, receive, send, observer)
        except BaseException as exc:
            if record.status_code is None:
                # Nothing was sent yet; the server answers 500 on our behalf.
                record.status_code = CLIENT_CLOSED_REQUEST if isinstance(exc, asyncio.CancelledError) else 500
            record.error_type = record.error_type or type(exc).__name__
            record.error_message = record.error_message or str(exc)[:MAX_ERROR_MESSAGE_CHARS]
            raise
        finally:
            if not observer.submitted:
                _submit(observer)

    @staticmethod
    def _identify_caller(scope: Scope, record: LogRecord) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        key = presented_key(headers)
        if key is None:
            return
        try:
            identity = get_key_store().identify(key)
        except Exception:
            logger.warning("litellm_pglog: cannot identify the caller", exc_info=True)
            return
        record.api_key = identity.alias if identity else INVALID_KEY_ALIAS
        record.user_id = identity.user_id if identity else None

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, observer: ResponseObserver) -> None:
        record = observer.record
        try:
            body = await self._read_body(scope, receive)
        except BodyTooLarge as exc:
            if exc.more_body and not _expects_continue(scope):
                await _discard_rest_of_body(receive)
            limit = self.max_body_bytes
            message = f"Request body is larger than the gateway limit of {limit} bytes."
            await self._reject(send, observer, 413, openai_error(message, "request_too_large"))
            return
        except ClientGone:
            record.status_code = CLIENT_CLOSED_REQUEST
            record.error_type = "client_disconnected"
            return
        if body:
            try:
                record.model, record.stream = describe_request(json.loads(body))
            except ValueError as exc:
                message = f"Request body is not valid JSON: {_json_problem(exc)}."
                await self._reject(send, observer, 400, openai_error(message, "invalid_json"))
                return

        body_sent = False

        async def replay_body() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def observe_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _ensure_call_id(message, record.request_id)
            await _send_observed(observer, send, message)

        async def watch_for_disconnect() -> None:
            # The body is fully read, so the server's next message is http.disconnect: when the
            # client goes away, or (uvicorn) right after the response completed.
            if (await receive())["type"] == "http.disconnect":
                observer.on_disconnect()

        watcher = asyncio.create_task(watch_for_disconnect())
        try:
            await self.app(scope, replay_body, observe_send)
        finally:
            watcher.cancel()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLarge(more_body=True)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body") or b""
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(more_body=message.get("more_body", False))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _reject(send: Send, observer: ResponseObserver, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (CALL_ID_HEADER, observer.record.request_id.encode()),
                # An oversized body may not have been read to its end: do not reuse the connection.
                (b"connection", b"close"),
            ],
        }
        for message in (start, {"type": "http.response.body", "body": data, "more_body": False}):
            await _send_observed(observer, send, message)


async def _send_observed(observer: ResponseObserver, send: Send, message: Message) -> None:
    _observe(observer, message)
    if observer.complete and not observer.submitted:
        # Submitted before the last byte leaves, so a process killed right after answering
        # still has the record (the writer journals it on submit).
        _submit(observer)
    await send(message)


def _expects_continue(scope: Scope) -> bool:
    """A client that sent Expect: 100-continue waits for us before sending the body."""
    return (_header(scope, b"expect") or "").lower() == "100-continue"


async def _discard_rest_of_body(receive: Receive) -> None:
    discarded = 0
    while discarded <= MAX_DISCARDED_BODY_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        discarded += len(message.get("body") or b"")


def _observe(observer: ResponseObserver, message: Message) -> None:
    """Feed a response message to the observer; a logging bug must never break the response."""
    try:
        if message["type"] == "http.response.start":
            observer.on_start(message)
        elif message["type"] == "http.response.body":
            observer.on_body(message)
    except Exception:
        logger.warning("litellm_pglog: could not inspect a response message", exc_info=True)


def _submit(observer: ResponseObserver) -> None:
    observer.submitted = True
    observer.record.latency_ms = round((time.perf_counter() - observer.started) * 1000, 3)
    try:
        observer.finish()
        get_writer().submit(observer.record)
    except Exception:
        logger.warning("litellm_pglog: could not log request %s", observer.record.request_id, exc_info=True)


def _with_call_id(headers: list[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name.lower() != CALL_ID_HEADER]
    return [*kept, (CALL_ID_HEADER, request_id.encode())]


def _ensure_call_id(message: Message, request_id: str) -> Message:
    """Answers LiteLLM produced before adopting the id (auth errors) get it too, for correlation."""
    headers = list(message.get("headers") or ())
    if any(name.lower() == CALL_ID_HEADER for name, _ in headers):
        return message
    return {**message, "headers": [*headers, (CALL_ID_HEADER, request_id.encode())]}


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == wanted:
            return value.decode("latin-1")
    return None


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)
