"""Pure ASGI middleware that logs every HTTP exchange on the gateway port exactly as the client saw it.

Log by default, exclude by list: every HTTP request gets one ``LogRecord`` (route, method, the
status the client received, the model when a JSON body names one), except the short exclusion
list of ``routes.py`` (liveness probes, our readiness, the admin UI's static assets when the UI
is on, /metrics when served on this port). Refusals made here are logged like any answer:
provider pass-through families not enabled (404 ``passthrough_disabled``), the admin UI when
off (404 ``ui_disabled``) and /metrics (404, served on the monitoring listener). Paths are
classified once each (``RoutePolicy.classify`` is cached), so the per-request cost is a dict
lookup. Websockets carry no HTTP status and are not logged; those of a refused family are closed
before they are accepted. An exception the app lets escape before answering gets a JSON 500
from here, so that every answer carries the request's call id.

It sits outside the whole LiteLLM app, so the status it records is the one in the
``http.response.start`` the server really sent, whichever layer produced it (auth, routing,
upstream errors, our own 413/400/404). One ``LogRecord`` per request is handed to the writer
after the response finished (or the client went away); the writer never blocks.

Request bodies: read whole, up to ``Settings.max_body_bytes`` (413 beyond). Only a body the
client declares as JSON (``application/json`` or ``*+json``), or one without a content type
that starts like JSON (``{`` or ``[``), is parsed, for the model and stream flag; an invalid one
is refused with 400 ``invalid_json``. Multipart uploads (audio, files), form posts and other
bodies are forwarded untouched.

Request ids: the middleware generates a UUIDv7 per request (its creation time, the log tables'
partition key, is embedded, so every record of the request lands in the same partition) and
puts it in the request's ``x-litellm-call-id`` header, which LiteLLM adopts as
``litellm_call_id``. A client-sent
value is replaced, because LiteLLM trusts it verbatim and a reused id would merge two
requests into one log row. The callback in ``callbacks.py`` reports token usage under the
same id, and the writer merges both halves.

The middleware is handed the process's ``GatewayRuntime`` (settings, key store, writer) by the
entry point and starts and stops it in the ASGI lifespan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from litellm_pglog import fastjson
from litellm_pglog.auth import FORBIDDEN_ROUTE_MESSAGE, INVALID_KEY_MESSAGE
from litellm_pglog.health import ReadinessEndpoint
from litellm_pglog.keys import INVALID_KEY_ALIAS, Identity, presented_key
from litellm_pglog.limits import (
    CAPTURED_BODY_MAX_BYTES,
    DISCARDED_BODY_MAX_BYTES,
    ERROR_MESSAGE_MAX_CHARS,
    WRITER_STOP_TIMEOUT_SECONDS,
)
from litellm_pglog.records import LogRecord, new_request_id
from litellm_pglog.routes import (
    RouteClass,
    RoutePolicy,
    client_may_call,
    is_admin_route,
    read_surface,
    requires_key,
)
from litellm_pglog.runtime import GatewayRuntime

CALL_ID_HEADER = "x-litellm-call-id"
_CALL_ID_NAME = CALL_ID_HEADER.encode()
CLIENT_CLOSED_REQUEST = 499  # nginx's convention: the client left before any status was sent

logger = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    def __init__(self, more_body: bool) -> None:
        super().__init__("request body too large")
        self.more_body = more_body


class ClientGone(Exception):
    pass


def openai_error(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass(frozen=True)
class Refusal:
    """An answer the middleware gives instead of LiteLLM (logged like any other)."""

    status: int
    code: str
    message: str
    kind: str = "invalid_request_error"  # the OpenAI error "type"


def passthrough_refusal(path: str) -> Refusal:
    message = (
        f"Provider pass-through routes are disabled on this gateway ({path}). "
        "An operator can enable a family with LITELLM_PGLOG_PASSTHROUGH (e.g. openai,anthropic)."
    )
    return Refusal(404, "passthrough_disabled", message)


UI_REFUSAL = Refusal(
    404, "ui_disabled", "The admin UI is disabled on this gateway (LITELLM_PGLOG_UI_ENABLED=true enables it)."
)
INVALID_KEY_REFUSAL = Refusal(401, "401", INVALID_KEY_MESSAGE, "auth_error")
METRICS_REFUSAL = Refusal(
    404, "metrics_on_monitoring_listener", "Not found: metrics are served on the monitoring listener."
)


def caller_refusal(route: str, caller: Identity | None) -> Refusal | None:
    """The 401/403 ``auth.py`` would give a presented key (``caller`` None: an unknown key),
    decided before LiteLLM sees the request.

    Answered here because LiteLLM reports an auth failure to its callbacks with the key as
    presented (hashed only for "sk-" keys): its Prometheus series would publish a client's key
    in clear in the hashed_api_key label. ``auth.py`` keeps the same rules for processes
    without this middleware.
    """
    if caller is not None:
        if caller.is_master or client_may_call(route) or not is_admin_route(route):
            return None  # other routes: LiteLLM's 404, or auth.py's 403
        return Refusal(403, "403", FORBIDDEN_ROUTE_MESSAGE.format(route=route), "auth_error")
    if requires_key(route):
        return INVALID_KEY_REFUSAL
    return None


def wants_json_parse(content_type: str | None, body: bytes) -> bool:
    """Parse bodies declared as JSON, and undeclared ones that start like JSON; nothing else."""
    if content_type is None:
        return body.lstrip()[:1] in (b"{", b"[")
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


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
    # error_type is cut to its column's length by the writer; the message is cut here already
    # because the record travels through the journal and the queue.
    return kind, message[:ERROR_MESSAGE_MAX_CHARS]


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
        content_type = _first_header(message.get("headers") or (), b"content-type") or b""
        self.is_sse = content_type.lower().startswith(b"text/event-stream")

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
            if len(self.body) > CAPTURED_BODY_MAX_BYTES:
                self.overflow, self.body = True, bytearray()
        if not message.get("more_body", False):
            self.complete = True

    def _scan_sse(self, chunk: bytes) -> None:
        # Only lines that can carry usage or an error are decoded; content deltas are skipped.
        self.pending_line += chunk
        *lines, rest = self.pending_line.split(b"\n")
        self.pending_line = bytearray(rest) if len(rest) <= CAPTURED_BODY_MAX_BYTES else bytearray()
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
        return fastjson.loads(data)
    except ValueError:
        return None


class RequestLogMiddleware:
    """Routes each ASGI connection: lifespan, HTTP by its ``RouteClass``, websockets of refused
    families closed, other websockets untouched."""

    def __init__(self, app: ASGIApp, runtime: GatewayRuntime, policy: RoutePolicy | None = None) -> None:
        self.app = app
        self.runtime = runtime
        settings = runtime.settings
        self.policy = policy or RoutePolicy(read_surface(app), settings.passthrough, settings.ui_enabled)
        self.readiness = ReadinessEndpoint(runtime)
        self._metrics_app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.runtime.settings.enabled:  # LITELLM_PGLOG_ENABLED=false: the bare proxy (baseline)
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket" and self.policy.classify(scope["path"]) in REFUSED_WEBSOCKETS:
            await _refuse_websocket(receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.policy.classify(scope["path"])
        if kind is RouteClass.LOGGED:
            await LoggedExchange(self.app, self.runtime, scope).run(receive, send)
        elif kind is RouteClass.UNLOGGED:
            await self.app(scope, receive, send)
        elif kind is RouteClass.READINESS:
            await self.readiness(scope, receive, send)
        elif kind is RouteClass.METRICS and self.runtime.settings.metrics_on_api_port:
            await self._metrics()(scope, receive, send)
        else:
            refusal = _refusal(kind, scope["path"])
            await LoggedExchange(self.app, self.runtime, scope, refusal).run(receive, send)

    def _metrics(self) -> ASGIApp:
        """The monitoring exposition, built on first use (imported only when asked for)."""
        if self._metrics_app is None:
            try:
                from litellm_pglog.exposition import MetricsEndpoint
            except ImportError:
                # Without the exposition module, LiteLLM's own /metrics (its registry only).
                logger.warning("litellm_pglog: no exposition module, /metrics served by LiteLLM")
                self._metrics_app = self.app
            else:
                self._metrics_app = MetricsEndpoint(self.runtime.settings)
        return self._metrics_app

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the runtime before the app's startup, stop it before reporting the shutdown."""
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

    async def _startup(self) -> None:
        # A broken keys file or database URL must stop the start, not fail every request;
        # in a thread because the writer's start replays the spool left by a previous run.
        await asyncio.to_thread(self.runtime.start)

    async def _shutdown(self) -> None:
        try:
            await asyncio.to_thread(self.runtime.stop, WRITER_STOP_TIMEOUT_SECONDS)
        except Exception:
            logger.exception("litellm_pglog: stopping the log writer failed")


# Websockets are not logged (no HTTP status to record), but a disabled family's (e.g. the
# /vertex_ai/live pass-through) is closed before it is accepted: the server answers 403.
REFUSED_WEBSOCKETS = frozenset({RouteClass.PASSTHROUGH_DISABLED, RouteClass.UI_DISABLED})


async def _refuse_websocket(receive: Receive, send: Send) -> None:
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


def _refusal(kind: RouteClass, path: str) -> Refusal:
    if kind is RouteClass.PASSTHROUGH_DISABLED:
        return passthrough_refusal(path)
    if kind is RouteClass.UI_DISABLED:
        return UI_REFUSAL
    return METRICS_REFUSAL


class LoggedExchange:
    """One logged request: read, checked, forwarded (or refused), observed and submitted once."""

    def __init__(
        self, app: ASGIApp, runtime: GatewayRuntime, scope: Scope, refusal: Refusal | None = None
    ) -> None:
        self.app = app
        self.runtime = runtime
        request_id, created_at = new_request_id()
        self.record = LogRecord(
            request_id=request_id,
            created_at=created_at,
            route=scope["path"],
            method=scope["method"],
        )
        self.headers = RequestHeaders.read(scope["headers"])
        caller_refusal = self._identify_caller(scope)
        self.refusal = refusal or caller_refusal  # set: answered here, the app is not called
        self.observer = ResponseObserver(self.record)
        self.scope = {**scope, "headers": self.headers.forwarded(request_id)}

    async def run(self, receive: Receive, send: Send) -> None:
        record = self.record
        try:
            body = await self._read_request(receive, send)
            if body is not None and self.refusal is not None:
                payload = openai_error(self.refusal.message, self.refusal.code, self.refusal.kind)
                await self._reject(receive, send, self.refusal.status, payload, close=False)
            elif body is not None:
                await self._forward(body, receive, send)
        except Exception as exc:
            if record.status_code is not None or self.observer.client_gone:
                self._note_failure(exc)
                raise
            # The app failed before answering (LiteLLM lets some upstream errors escape): answer
            # the 500 here rather than leave it to the server, so it carries the call id too.
            logger.error("litellm_pglog: unhandled error on %s", record.route, exc_info=exc)
            message = f"Internal server error ({type(exc).__name__})."
            await self._reject(receive, send, 500, openai_error(message, "500", "internal_server_error"))
        except BaseException as exc:
            if record.status_code is None:
                # Nothing was sent yet; the server answers 500 on our behalf.
                record.status_code = CLIENT_CLOSED_REQUEST if isinstance(exc, asyncio.CancelledError) else 500
            self._note_failure(exc)
            raise
        finally:
            if not self.observer.submitted:
                self._submit()

    def _note_failure(self, exc: BaseException) -> None:
        self.record.error_type = self.record.error_type or type(exc).__name__
        self.record.error_message = self.record.error_message or str(exc)[:ERROR_MESSAGE_MAX_CHARS]

    def _identify_caller(self, scope: Scope) -> Refusal | None:
        """Fills the caller's alias and user into the record; returns the 401/403 it earns."""
        key = presented_key(self.headers.values)
        if key is None:
            return None
        try:
            identity = self.runtime.key_store.identify(key)
        except Exception:
            logger.warning("litellm_pglog: cannot identify the caller", exc_info=True)
            return None
        self.record.api_key = identity.alias if identity else INVALID_KEY_ALIAS
        self.record.user_id = identity.user_id if identity else None
        refusal = caller_refusal(scope["path"], identity)
        if refusal is not None:
            _log_refused_key(scope, refusal, identity)
        return refusal

    async def _read_request(self, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, or None when it was answered here (413, 400) or abandoned."""
        max_bytes = self.runtime.settings.max_body_bytes
        try:
            body = await _read_body(self.headers.values.get("content-length"), receive, max_bytes)
        except BodyTooLarge as exc:
            if exc.more_body and self.headers.values.get("expect", "").lower() != "100-continue":
                # (a client that sent Expect: 100-continue waits for us before sending the body)
                await _discard_rest_of_body(receive)
            message = f"Request body is larger than the gateway limit of {max_bytes} bytes."
            await self._reject(receive, send, 413, openai_error(message, "request_too_large"))
            return None
        except ClientGone:
            self.record.status_code = CLIENT_CLOSED_REQUEST
            self.record.error_type = "client_disconnected"
            return None
        if body and wants_json_parse(self.headers.values.get("content-type"), body):
            try:
                self.record.model, self.record.stream = describe_request(fastjson.loads(body))
            except ValueError as exc:
                message = f"Request body is not valid JSON: {_json_problem(exc)}."
                await self._reject(receive, send, 400, openai_error(message, "invalid_json"))
                return None
        return body

    async def _forward(self, body: bytes, receive: Receive, send: Send) -> None:
        """Call the app with the body already read, watching for the client going away."""
        body_sent = False

        async def replay_body() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def observe_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _ensure_call_id(message, self.record.request_id)
            await self._send_observed(send, message)

        async def watch_for_disconnect() -> None:
            # The body is fully read, so the server's next message is http.disconnect: when the
            # client goes away, or (uvicorn) right after the response completed.
            if (await receive())["type"] == "http.disconnect":
                self.observer.on_disconnect()

        watcher = asyncio.create_task(watch_for_disconnect())
        try:
            await self.app(self.scope, replay_body, observe_send)
        finally:
            watcher.cancel()

    async def _reject(
        self, receive: Receive, send: Send, status: int, payload: dict[str, Any], close: bool = True
    ) -> None:
        """Answer here without calling the app; observed like any answer."""
        headers = {CALL_ID_HEADER: self.record.request_id}
        if close:
            # An oversized body may not have been read to its end: do not reuse the connection.
            headers["connection"] = "close"

        async def observed_send(message: Message) -> None:
            await self._send_observed(send, message)

        await JSONResponse(payload, status_code=status, headers=headers)(self.scope, receive, observed_send)

    async def _send_observed(self, send: Send, message: Message) -> None:
        _observe(self.observer, message)
        if self.observer.complete and not self.observer.submitted:
            # Submitted before the last byte leaves, so a process killed right after answering
            # still has the record (the writer journals it on submit).
            self._submit()
        await send(message)

    def _submit(self) -> None:
        self.observer.submitted = True
        self.record.latency_ms = round((time.perf_counter() - self.observer.started) * 1000, 3)
        try:
            self.observer.finish()
            self.runtime.writer.submit(self.record)
        except Exception:
            logger.warning("litellm_pglog: could not log request %s", self.record.request_id, exc_info=True)


async def _read_body(declared: str | None, receive: Receive, max_bytes: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(more_body=True)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body") or b""
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(more_body=message.get("more_body", False))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _discard_rest_of_body(receive: Receive) -> None:
    discarded = 0
    while discarded <= DISCARDED_BODY_MAX_BYTES:
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


def _log_refused_key(scope: Scope, refusal: Refusal, identity: Identity | None) -> None:
    """The audit line of a refused key (the journal adds the time): who tried what, from where.
    Never the key: an unknown one is "unknown key", a known one its alias.
    """
    client = scope.get("client") or ("-", 0)
    who = f"key {identity.alias}" if identity else "unknown key"
    logger.warning(
        "litellm_pglog: refused %s from %s: %s %r -> %d",
        who,
        client[0],
        scope["method"],
        scope["path"],
        refusal.status,
    )


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """The few request headers the middleware reads, from one pass over the ASGI list.

    Read once per request instead of a starlette ``Headers`` per lookup (each one a scan of
    the list in Python): the header handling was a fifth of the middleware's own CPU. ASGI
    servers give header names in lower case; the first value of a name counts, as with
    ``Headers.get``.
    """

    raw: list[tuple[bytes, bytes]]
    values: dict[str, str]

    NAMES = frozenset({b"authorization", b"x-litellm-api-key", b"content-type", b"content-length", b"expect"})

    @classmethod
    def read(cls, raw: list[tuple[bytes, bytes]]) -> RequestHeaders:
        # Reversed, so that the first value of a repeated name is the one the dict keeps.
        found = {name: value for name, value in reversed(raw) if name in cls.NAMES}
        return cls(raw, {name.decode("latin-1"): value.decode("latin-1") for name, value in found.items()})

    def forwarded(self, request_id: str) -> list[tuple[bytes, bytes]]:
        """The list the app sees: our call id instead of any the client sent (LiteLLM trusts it)."""
        headers = [header for header in self.raw if header[0] != _CALL_ID_NAME]
        headers.append((_CALL_ID_NAME, request_id.encode("latin-1")))
        return headers


def _first_header(raw: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in raw if key.lower() == name), None)


def _ensure_call_id(message: Message, request_id: str) -> Message:
    """Every answer carries our id: those LiteLLM produced before adopting it (auth errors) and
    those of routes that make up their own (provider pass-through), for correlation."""
    raw = message.get("headers") or ()
    ours = request_id.encode("latin-1")
    if _first_header(raw, _CALL_ID_NAME) == ours:
        return message
    headers = [header for header in raw if header[0].lower() != _CALL_ID_NAME]
    headers.append((_CALL_ID_NAME, ours))
    return {**message, "headers": headers}


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)
