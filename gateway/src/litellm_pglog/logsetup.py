"""The package's own log lines (logger ``litellm_pglog`` and its children) on stderr.

Without a handler of its own, Python's last-resort handler printed only WARNING and above, so the
INFO lines an operator looks for (log writer started, spooling, spool replayed, startup heap
frozen) never reached the journal. The entry point installs one handler, at LITELLM_LOG_LEVEL.

Under systemd (JOURNAL_STREAM set: stderr is the journal) every line starts with its syslog
priority, ``<4>`` for a warning, which journald turns into the entry's priority: then
``journalctl -u litellm-gateway -p warning`` lists the gateway's problems alone. Records still
propagate to the root logger (it has no handler in the proxy; tests' ``caplog`` sits there).
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGE_LOGGER = "litellm_pglog"

# logging's levels -> syslog priorities (sd-daemon(3) prefixes)
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>message``: journald stores the priority and strips the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


class PackageHandler(logging.StreamHandler):
    """The handler ``configure_logging`` installs, recognised on a second call."""


def configure_logging(level: str, *, journal: bool | None = None) -> logging.Logger:
    """Send the package's records at ``level`` and above to stderr; idempotent."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(level)
    if not any(isinstance(handler, PackageHandler) for handler in logger.handlers):
        handler = PackageHandler(sys.stderr)
        use_journal = bool(os.environ.get("JOURNAL_STREAM")) if journal is None else journal
        handler.setFormatter(JournalFormatter() if use_journal else logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger
