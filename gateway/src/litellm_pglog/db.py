"""Engine construction: one small, self-healing connection pool per process.

``make_engine`` bounds what libpq bounds (connecting, statements the server runs, idle TCP
connections to a vanished host, unacknowledged data); ``CallDeadline`` bounds what libpq
cannot: a server that hangs with its connections open.
"""

from __future__ import annotations

import math
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from litellm_pglog.limits import (
    DB_TIMEOUT_SECONDS,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE_SECONDS,
    KEEPALIVE_INTERVAL_SECONDS,
    MIN_CONNECT_TIMEOUT_SECONDS,
    POOL_MAX_OVERFLOW,
    POOL_RECYCLE_SECONDS,
    POOL_SIZE,
    POOL_TIMEOUT_SECONDS,
)


def safe_url(url: str | URL | None) -> str:
    """The URL with its password masked, for messages and logs."""
    if url is None:
        return "<no URL>"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return "<unparseable URL>"


def describe_db_error(exc: BaseException, url: str | URL | None = None) -> str:
    """One line saying why PostgreSQL could not be used; never contains the password."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    text = re.sub(r"\s+", " ", lines[0]).replace("FATAL: ", "") if lines else type(orig).__name__
    return _without_password(text, url)


def _without_password(text: str, url: str | URL | None) -> str:
    try:
        password = make_url(url).password if url is not None else None
    except (ArgumentError, ValueError, TypeError):
        return text
    if password:
        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, "***")
    return text


def _psycopg2_timeouts(timeout: float, statement_timeout: float | None) -> dict[str, Any]:
    """libpq options so that an unreachable or silent server cannot block a caller for minutes."""
    seconds = max(MIN_CONNECT_TIMEOUT_SECONDS, math.ceil(timeout))
    options = {
        "connect_timeout": seconds,
        # Idle connections to a host that vanished (no RST) are found by keepalive probes...
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVE_COUNT,
        # ...busy ones (data sent, never acknowledged: packets dropped) by the TCP user timeout.
        "tcp_user_timeout": seconds * 1000,
    }
    if statement_timeout is not None:
        options["options"] = f"-c statement_timeout={math.ceil(statement_timeout * 1000)}"
    return options


def make_engine(
    url: str | URL,
    timeout: float = DB_TIMEOUT_SECONDS,
    statement_timeout: float | None = None,
    **options: Any,
) -> Engine:
    """A PostgreSQL engine with a bounded pool that drops dead connections before use.

    ``timeout`` bounds connecting and unacknowledged sends; ``statement_timeout`` (enforced by
    the server) each statement. Schema migrations leave the latter unset: they may run long.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ArgumentError(f"not a PostgreSQL URL (driver {parsed.drivername!r})")
    connect_args: dict[str, Any] = {"application_name": "litellm_pglog"}
    if parsed.get_driver_name() == "psycopg2":
        connect_args |= _psycopg2_timeouts(timeout, statement_timeout)
    if "poolclass" not in options:
        options.setdefault("pool_size", POOL_SIZE)
        options.setdefault("max_overflow", POOL_MAX_OVERFLOW)
        options.setdefault("pool_timeout", POOL_TIMEOUT_SECONDS)
        options.setdefault("pool_recycle", POOL_RECYCLE_SECONDS)
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **options)


class CallDeadline:
    """Cuts an engine's connections when a database call outlives its deadline.

    A PostgreSQL that hangs (process stopped, VM frozen, a proxy that stopped forwarding) keeps
    its TCP connections open and its kernel keeps acknowledging what we send, so neither
    keepalives nor tcp_user_timeout fire; connect_timeout covers new connections only and
    statement_timeout is enforced by the very server that hangs. libpq then waits in poll()
    forever. Shutting the sockets down from a timer thread wakes that poll() with "server closed
    the connection unexpectedly", which SQLAlchemy treats as a disconnect: the caller gets an
    error after ``seconds`` and handles it like any outage.
    """

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._connections: set[Any] = set()  # the DBAPI connections this engine holds open
        event.listen(engine, "connect", self._on_connect)
        # "close" fires before the close: holding the lock there means _cut never shuts down
        # a file descriptor the process has meanwhile reused for something else.
        event.listen(engine, "close", self._on_close)
        event.listen(engine, "close_detached", self._on_close)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        """Run the block with the deadline armed.

        One timer thread per call: the writer makes a few calls per second, each a batch.
        """
        done = threading.Event()
        timer = threading.Timer(self.seconds, self._cut, args=(done,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            with self._lock:  # a cut in progress finishes before the block's connections move on
                done.set()
            timer.cancel()

    def _cut(self, done: threading.Event) -> None:
        with self._lock:
            if done.is_set():
                return
            for connection in self._connections:
                _shutdown_socket(connection)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        with self._lock:
            self._connections.add(dbapi_connection)

    def _on_close(self, dbapi_connection: Any, *_args: Any) -> None:
        with self._lock:
            self._connections.discard(dbapi_connection)


def _shutdown_socket(dbapi_connection: Any) -> None:
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # already closed
        return
    # fromfd() duplicates the descriptor; shutdown() acts on the socket both share.
    with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock, suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # OSError: not connected any more
