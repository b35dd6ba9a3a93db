"""Whether PostgreSQL is down, when to try it again and when the spool is due for a replay.

Used by the writer thread only, so it holds no lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from litellm_pglog.limits import FIRST_RETRY_SECONDS, SPOOL_SCAN_SECONDS

log = logging.getLogger("litellm_pglog")


class OutageState:
    """Down/up transitions (logged once each), exponential retry backoff, replay schedule."""

    def __init__(self, retry_max_seconds: float, where: str, spool_directory: Path) -> None:
        self._retry_max = retry_max_seconds
        self._where = where  # the database, password masked, for the log lines
        self._spool_directory = spool_directory
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._retry_delay = FIRST_RETRY_SECONDS
        self._replay_wanted = True  # a new writer replays what earlier processes left at once
        self._next_scan = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def waiting_to_retry(self) -> bool:
        """True while down and the next attempt is not due: batches go straight to the spool."""
        return self.down and time.monotonic() < self._retry_at

    def mark_down(self, reason: str) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._retry_delay = FIRST_RETRY_SECONDS
            log.warning(
                "PostgreSQL unavailable at %s (%s); spooling log records to %s",
                self._where,
                reason,
                self._spool_directory,
            )
        else:
            self._retry_delay = min(self._retry_delay * 2, self._retry_max)
        self._retry_at = now + self._retry_delay

    def mark_up(self) -> None:
        if self._down_since is None:
            return
        downtime = time.monotonic() - self._down_since
        log.warning("PostgreSQL reachable again after %.1f s; replaying the spool", downtime)
        self._down_since = None
        self._replay_wanted = True

    def replay_due(self, has_spool_files: Callable[[], bool], spooling_now: bool) -> bool:
        """Replay after a recovery, while this writer has spooled, and on a slow periodic scan.

        ``has_spool_files`` is only called when needed: it lists a directory.
        """
        if self.down:
            return time.monotonic() >= self._retry_at and has_spool_files()
        if self._replay_wanted or spooling_now:
            return True
        if time.monotonic() < self._next_scan:
            return False
        self._next_scan = time.monotonic() + SPOOL_SCAN_SECONDS
        return has_spool_files()

    def replay_started(self) -> None:
        self._replay_wanted = False
        self._next_scan = time.monotonic() + SPOOL_SCAN_SECONDS
