"""The objects one gateway process runs on: its settings, key store and log writer.

The entry point builds a ``GatewayRuntime`` from ``load_settings()`` and passes it to the ASGI
middleware; the middleware starts it in the lifespan startup and stops it at shutdown.

Why a process-wide accessor (``install()`` / ``current()``) exists at all: LiteLLM imports our
hooks by dotted name from its config (``general_settings.custom_auth:
litellm_pglog.auth.user_api_key_auth``, ``litellm_settings.callbacks:
litellm_pglog.callbacks.usage_logger``) and calls them with its own arguments, so nothing can
hand them the runtime the entry point built. ``asgi.py`` installs its runtime when it is
imported, before LiteLLM loads its config; the hooks look it up when called. A process whose
entry point is not ours (the plain ``litellm.proxy.proxy_server:app``, the benchmark's baseline,
which still uses our custom_auth) gets a runtime built from the environment on first use:
that first hook call is then its entry point.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from functools import cached_property

from litellm_pglog.keys import LiveKeyStore, load_key_store
from litellm_pglog.limits import WRITER_EXIT_TIMEOUT_SECONDS
from litellm_pglog.settings import Settings, load_settings
from litellm_pglog.writer import LogWriter

log = logging.getLogger("litellm_pglog")


class GatewayRuntime:
    """Settings plus the key store and the started writer built from them, each built once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._writer: LogWriter | None = None

    @cached_property
    def key_store(self) -> LiveKeyStore:
        """Loaded on first use (raises KeyFileError with a one-line message), then follows the file."""
        return load_key_store(self.settings.keys_file, self.settings.master_key)

    @property
    def writer(self) -> LogWriter:
        """The started writer, created on first use (logging must be enabled)."""
        with self._lock:
            if self._writer is None:
                writer = LogWriter(self.settings)
                writer.start()  # replays the spool left by a previous run
                # For processes without our lifespan (hooks used without our ASGI app); after
                # the lifespan's stop() this second stop finds nothing left to do.
                atexit.register(writer.stop, WRITER_EXIT_TIMEOUT_SECONDS)
                self._writer = writer
                log.info("log writer started (pid %d)", os.getpid())
            return self._writer

    def start(self) -> None:
        """Fail now on a broken keys file or database URL rather than on every request."""
        self.key_store  # noqa: B018 - loads it
        self.writer  # noqa: B018 - creates and starts it

    def stop(self, timeout: float) -> None:
        with self._lock:
            writer = self._writer
        if writer is not None:
            writer.stop(timeout)


_current: GatewayRuntime | None = None
_current_lock = threading.Lock()


def install(runtime: GatewayRuntime) -> GatewayRuntime:
    """Make ``runtime`` the one LiteLLM's hooks use in this process."""
    global _current
    with _current_lock:
        _current = runtime
    return runtime


def current() -> GatewayRuntime:
    """The installed runtime; built from the environment if no entry point installed one."""
    global _current
    with _current_lock:
        if _current is None:
            _current = GatewayRuntime(load_settings())
        return _current


def get_writer() -> LogWriter:
    """The started writer of this process."""
    return current().writer
