"""Runtime settings, read once from the environment by the entry point and passed on.

``load_settings()`` is called where a process starts using this package (``asgi.py``, or the
first LiteLLM hook in a process that does not run our ASGI app, see ``runtime.py``); every
other module receives the ``Settings`` object and never reads the environment itself.

LiteLLM starts Prisma when it sees DATABASE_URL (or builds one from DATABASE_HOST & co.),
so this package only reads names that start with LITELLM_.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from litellm_pglog.limits import DB_TIMEOUT_SECONDS


class SettingsError(ValueError):
    """A setting in the environment has a value this package cannot use."""


@dataclass(frozen=True)
class Settings:
    enabled: bool = True  # False: no middleware logging, no callback, no writer (baseline runs)
    db_url: str | None = field(default=None, repr=False)  # carries the password
    keys_file: Path = Path("/etc/litellm/api_keys.json")
    spool_dir: Path = Path("/var/lib/litellm/spool")
    queue_max: int = 10_000
    batch_size: int = 200
    # Longest wait of a partial batch: see litellm_gateway_flush_interval (role) for the trade-off.
    flush_interval: float = 1.0
    spool_max_bytes: int = 512 * 1024 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    master_key: str | None = field(default=None, repr=False)
    retry_max_seconds: float = 10.0
    # Bound on connecting and on any one database call: a PostgreSQL that hangs instead of
    # refusing is treated as down after this long (see db.CallDeadline).
    db_timeout_seconds: float = DB_TIMEOUT_SECONDS
    # Provider pass-through families served (first path segment: "openai", "anthropic"...); the
    # others are refused with 404, because they call the provider with the server's own key.
    passthrough: frozenset[str] = frozenset()
    ui_enabled: bool = False  # LiteLLM's admin UI (/ui and its login helpers)
    # /metrics on the API port: off by default, metrics belong on the monitoring listener.
    metrics_on_api_port: bool = False
    # The package's own log lines from this level up (LITELLM_LOG_LEVEL, LiteLLM's variable too).
    log_level: str = "INFO"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(environ: Mapping[str, str], default: str) -> str:
    raw = environ.get("LITELLM_LOG_LEVEL", "").strip().upper()
    if not raw:
        return default
    if raw not in LOG_LEVELS:
        raise SettingsError(f"LITELLM_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return raw


def _positive(environ: Mapping[str, str], name: str, default: int | float, kind: type) -> int | float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be greater than 0, got {raw!r}")
    return value


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in TRUE_WORDS | FALSE_WORDS:
        raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")
    return raw in TRUE_WORDS


PASSTHROUGH_NAME = re.compile(r"^[a-z0-9_.-]+$")


def _names(environ: Mapping[str, str], name: str) -> frozenset[str]:
    """A comma-separated list of lowercase names (spaces around commas allowed)."""
    items = [item.strip() for item in environ.get(name, "").split(",")]
    for item in filter(None, items):
        if not PASSTHROUGH_NAME.match(item):
            raise SettingsError(f"{name}: {item!r} is not a family name (lowercase [a-z0-9_.-]+)")
    return frozenset(filter(None, items))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: the process environment); raises SettingsError."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    retry_max = _positive(env, "LITELLM_PGLOG_RETRY_MAX_SECONDS", defaults.retry_max_seconds, float)
    return Settings(
        enabled=_flag(env, "LITELLM_PGLOG_ENABLED", defaults.enabled),
        db_url=env.get("LITELLM_DB_URL") or None,
        keys_file=Path(env.get("LITELLM_PGLOG_KEYS_FILE") or defaults.keys_file),
        spool_dir=Path(env.get("LITELLM_PGLOG_SPOOL_DIR") or defaults.spool_dir),
        queue_max=_positive(env, "LITELLM_PGLOG_QUEUE_MAX", defaults.queue_max, int),
        batch_size=_positive(env, "LITELLM_PGLOG_BATCH_SIZE", defaults.batch_size, int),
        flush_interval=_positive(env, "LITELLM_PGLOG_FLUSH_INTERVAL", defaults.flush_interval, float),
        spool_max_bytes=_positive(env, "LITELLM_PGLOG_SPOOL_MAX_BYTES", defaults.spool_max_bytes, int),
        max_body_bytes=_positive(env, "LITELLM_PGLOG_MAX_BODY_BYTES", defaults.max_body_bytes, int),
        master_key=env.get("LITELLM_MASTER_KEY") or None,
        retry_max_seconds=retry_max,
        db_timeout_seconds=_positive(
            env, "LITELLM_PGLOG_DB_TIMEOUT_SECONDS", defaults.db_timeout_seconds, float
        ),
        passthrough=_names(env, "LITELLM_PGLOG_PASSTHROUGH"),
        ui_enabled=_flag(env, "LITELLM_PGLOG_UI_ENABLED", defaults.ui_enabled),
        metrics_on_api_port=_flag(env, "LITELLM_PGLOG_METRICS_ON_API_PORT", defaults.metrics_on_api_port),
        log_level=_log_level(env, defaults.log_level),
    )
