"""Engine construction: one small, self-healing connection pool per process."""

from __future__ import annotations

import re
import threading
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError

from litellm_pglog.settings import load_settings

POOL_SIZE = 2
CONNECT_TIMEOUT_SECONDS = 5

_engine: Engine | None = None
_engine_lock = threading.Lock()


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


def make_engine(url: str | URL, **options) -> Engine:
    """A PostgreSQL engine with a bounded pool that drops dead connections before use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ArgumentError(f"not a PostgreSQL URL (driver {parsed.drivername!r})")
    connect_args = {"application_name": "litellm_pglog"}
    if parsed.get_driver_name() == "psycopg2":
        # Without these a half-open TCP connection (host gone, not refusing) blocks a writer for minutes.
        connect_args |= {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
    if "poolclass" not in options:
        options.setdefault("pool_size", POOL_SIZE)
        options.setdefault("max_overflow", 1)
        options.setdefault("pool_timeout", 10)
        options.setdefault("pool_recycle", 1800)
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **options)


def get_engine() -> Engine:
    """The process-wide engine for LITELLM_DB_URL."""
    global _engine
    with _engine_lock:
        if _engine is None:
            url = load_settings().db_url
            if url is None:
                raise ArgumentError("LITELLM_DB_URL is not set")
            _engine = make_engine(url)
        return _engine
