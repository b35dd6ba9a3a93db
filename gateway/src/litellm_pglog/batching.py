"""The in-memory queue between request handlers and the writer thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from litellm_pglog.spool import JournalFile


@dataclass(frozen=True, slots=True)
class Queued:
    """A queued record (cleaned, as a row), its place in the queue, its JSON line and the
    journal file holding that line."""

    sequence: int
    row: dict[str, Any]
    line: bytes
    journal_file: JournalFile | None


class BatchQueue:
    """A bounded queue read in batches, with a settle watermark for ``wait_settled()``.

    Every record put is eventually settled by the writer thread (written, spooled, rejected or
    dropped). Records settle in queue order, so one number, the highest settled sequence,
    tells a flush whether everything queued before it is done.

    A queue at least half full is a backlog: it is drained in batches of up to
    ``backlog_batch_size`` (one COPY and one merge each) before it overflows into the spool.
    """

    def __init__(
        self, max_size: int, batch_size: int, flush_interval: float, backlog_batch_size: int = 0
    ) -> None:
        self._max_size = max_size
        self._batch_size = batch_size
        self._backlog_batch_size = max(batch_size, backlog_batch_size)
        self._flush_interval = flush_interval
        self._queue: deque[Queued] = deque()
        self._cond = threading.Condition()
        self._last_queued = 0
        self._settled = 0
        self._flush_waiters = 0
        self._inflight: list[Queued] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def put(self, row: dict[str, Any], line: bytes, journal_file: JournalFile | None) -> bool:
        """Queue the row; False when the queue is full or closed (the caller keeps it)."""
        with self._cond:
            if len(self._queue) >= self._max_size or self._closed:
                return False
            self._last_queued += 1
            self._queue.append(Queued(self._last_queued, row, line, journal_file))
            if len(self._queue) >= self._batch_size:
                self._cond.notify_all()
            return True

    def next_batch(self) -> list[Queued]:
        """Up to batch_size records (more from a backlog), once a batch is full, a flush waits or
        the interval passed.

        The batch stays in flight (see ``drain()``) until ``settle()``.
        """
        with self._cond:
            filling = len(self._queue) < self._batch_size and not self._flush_waiters
            if not self._closed and (not self._queue or filling):
                self._cond.wait(self._flush_interval)
            backlog = len(self._queue) * 2 >= self._max_size
            size = min(self._backlog_batch_size if backlog else self._batch_size, len(self._queue))
            self._inflight = [self._queue.popleft() for _ in range(size)]
            return self._inflight

    def settle(self, batch: list[Queued]) -> None:
        with self._cond:
            self._settled = max(self._settled, batch[-1].sequence)
            self._inflight = []
            self._cond.notify_all()

    def wait_settled(self, timeout: float) -> bool:
        """Wait until every record queued so far is settled; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._last_queued
            self._flush_waiters += 1
            self._cond.notify_all()  # a filling batch is due now
            try:
                while self._settled < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flush_waiters -= 1
        return True

    def close(self) -> None:
        """Refuse new records and wake the writer thread to write what is left."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[Queued]:
        """Take every record still held, the batch in flight included, and count them settled.

        For a writer thread stuck on the database: should it finish its batch after all, the
        upsert makes the second copy harmless.
        """
        with self._cond:
            left = self._inflight + list(self._queue)
            self._queue.clear()
            self._settled = self._last_queued
            self._cond.notify_all()
            return left
