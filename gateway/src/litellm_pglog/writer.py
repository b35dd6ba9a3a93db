"""Background batch writer: LogRecords -> PostgreSQL, with a durable spool while it is unreachable.

Request handlers call ``submit()``, which appends the record to the journal (one write, see
``spool.Journal``: what a killed process held in memory is replayed by the next one) and to a
bounded in-memory queue. A daemon thread upserts the queue in batches, one transaction per
batch. When PostgreSQL is down, refuses or hangs, batches go to the spool (fsync per batch) and
are replayed once it answers again, or by the next process that starts.

``LogWriter`` only wires the parts together and runs the thread:

- ``batching.BatchQueue``: the queue, batch assembly and the flush watermark;
- ``sink.DatabaseSink``: cleaning, merging and upserting records (one COPY into a staging
  table and one prepared merge statement per batch),
  isolating a refused record;
- ``durable.DurableStore``: the journal, the spool, rejected records and loud drops;
- ``outage.OutageState``: down/up, retry backoff and when to replay the spool;
- ``metrics.WriterMetrics``: the counts behind ``stats()`` and the Prometheus series;
- ``halves.UsageHalves``: the usage callback's records that repeat what a record of the same
  request already holds, counted and not submitted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from litellm_pglog.batching import BatchQueue, Queued
from litellm_pglog.db import describe_db_error, make_engine, safe_url
from litellm_pglog.durable import DurableStore
from litellm_pglog.halves import UsageHalves
from litellm_pglog.limits import BACKLOG_BATCH_SIZE, FIRST_RETRY_SECONDS
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.outage import OutageState
from litellm_pglog.records import LogRecord
from litellm_pglog.settings import Settings, SettingsError
from litellm_pglog.sink import Batch, DatabaseSink, clean_values
from litellm_pglog.spool import SPOOL_GLOB, encode_row

log = logging.getLogger("litellm_pglog")


@dataclass(frozen=True)
class WriterState:
    """What a readiness probe needs to know about one writer (see ``health.py``)."""

    running: bool  # the writer thread is alive and accepting records
    database_down: bool  # the last write or replay attempt failed
    queued: int  # records in memory, waiting for the database
    spooled_records: int  # records this writer put in the spool since it started
    spool_bytes: int  # spool files waiting for a replay (all workers'), journals not included
    dropped_records: int  # records this writer lost since it started


class LogWriter:
    """Batches records into PostgreSQL from a daemon thread; see the module docstring."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self._owns_engine = engine is None
        if engine is None:
            if not settings.db_url:
                raise SettingsError("LITELLM_DB_URL is not set")
            timeout = settings.db_timeout_seconds
            engine = make_engine(settings.db_url, timeout=timeout, statement_timeout=timeout)
        self._settings = settings
        self._metrics = WriterMetrics()
        self._queue = BatchQueue(
            settings.queue_max, settings.batch_size, settings.flush_interval, BACKLOG_BATCH_SIZE
        )
        self._store = DurableStore(settings.spool_dir, settings.spool_max_bytes, self._metrics)
        self._sink = DatabaseSink(engine, self._metrics, self._store.reject, settings.db_timeout_seconds)
        self._outage = OutageState(settings.retry_max_seconds, safe_url(engine.url), settings.spool_dir)
        self._thread: threading.Thread | None = None
        self._replay_batch_size = max(settings.batch_size, BACKLOG_BATCH_SIZE)
        self._usage = UsageHalves()

    # ---- API used by request handlers -------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._store.spool.refresh_size()
        self._thread = threading.Thread(target=self._run, name="litellm-pglog-writer", daemon=True)
        self._thread.start()

    def submit(self, record: LogRecord) -> None:
        """Journal and queue a record; never blocks on the database and never raises."""
        self._metrics.count("submitted")
        try:
            if self._usage.repeats(record):  # the request's record holds this usage already
                self._metrics.count("merged")
                return
            row = clean_values(record)  # cleaned once, encoded once: the line serves journal and spool
            line = encode_row(row)
        except Exception as exc:  # a logging add-on must not fail the request
            self._store.drop(1, f"unusable record ({exc})")
            return
        # When stopping, the record goes to the spool and its fsync at once: no journal needed.
        stopping = self._queue.closed
        journal_file = None if stopping else self._store.journal_line(line)
        if self._queue.put(row, line, journal_file):
            self._usage.remember(record)
            return
        # Queue full (PostgreSQL slower than the traffic) or stopping: straight to the spool,
        # fsynced when the writer thread seals the file for replay, by flush(), at once when stopping.
        self._store.spool_lines([line], sync=stopping)
        self._store.settle([journal_file])

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is in PostgreSQL or in the (fsynced) spool."""
        if not self._queue.wait_settled(timeout):
            return False
        self._store.spool.sync()
        return True

    def stop(self, timeout: float) -> None:
        """Flush, then stop; whatever did not reach PostgreSQL in time is left in the spool."""
        deadline = time.monotonic() + timeout
        self._queue.close()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread is None or self._thread.is_alive():
            # The thread is stuck on the database (or never ran): spool what it still holds.
            self._spool_left(self._queue.drain())
        self._store.close()
        if self._owns_engine and not (self._thread and self._thread.is_alive()):
            self._sink.engine.dispose()
        self._metrics.queue_depth(0)

    def stats(self) -> dict[str, int]:
        return {**self._metrics.snapshot(), "queue_depth": len(self._queue)}

    def state(self) -> WriterState:
        """Read from request handlers: lists the spool directory, reads the rest from memory."""
        counts = self._metrics.snapshot()
        thread = self._thread
        return WriterState(
            running=thread is not None and thread.is_alive() and not self._queue.closed,
            database_down=self._outage.down,  # one attribute read: safe from another thread
            queued=len(self._queue),
            spooled_records=counts["spooled"],
            spool_bytes=_size_of(self._store.directory.glob(SPOOL_GLOB)),
            dropped_records=counts["dropped"],
        )

    # ---- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception:  # a dead writer thread would silently stop all logging
                log.exception("log writer: unexpected error, continuing")
                time.sleep(FIRST_RETRY_SECONDS)

    def _step(self) -> bool:
        """One round: write (or spool) a batch, then replay the spool when due; False when done."""
        batch = self._queue.next_batch()
        self._metrics.queue_depth(len(self._queue))
        if batch:
            try:
                self._handle(batch)
            finally:
                self._store.settle(queued.journal_file for queued in batch)
                self._queue.settle(batch)
        elif self._queue.closed:
            return False
        self._store.journal.rotate()
        spooling_now = self._store.spool.active_path is not None
        if not self._queue.closed and self._outage.replay_due(self._store.spool.has_files, spooling_now):
            self._replay_spool()
        return True

    def _handle(self, batch: list[Queued]) -> None:
        if self._outage.waiting_to_retry():
            self._store.spool_lines([queued.line for queued in batch], sync=True)
            return
        try:
            written = self._sink.write_rows([queued.row for queued in batch])  # submit() cleaned them
        except Exception as exc:  # every failure keeps the records
            self._mark_down(exc)
            self._store.spool_lines([queued.line for queued in batch], sync=True)
            return
        self._metrics.count("written", written)
        self._outage.mark_up()

    def _replay_spool(self) -> None:
        self._outage.replay_started()
        for claimed in self._store.claim_files():
            try:
                self._store.replay(claimed, self._replay_batch_size, self._sink.prepare, self._replay_batch)
            except Exception as exc:  # the file stays for the next attempt
                self._mark_down(exc)
                return
            self._outage.mark_up()
        self._store.spool.refresh_size()

    def _replay_batch(self, batch: Batch) -> None:
        self._metrics.count("replayed", self._sink.write_batch(batch))

    def _mark_down(self, exc: BaseException) -> None:
        self._metrics.count("db_errors")
        self._outage.mark_down(describe_db_error(exc, self._sink.engine.url))

    def _spool_left(self, left: list[Queued]) -> None:
        self._store.spool_lines([queued.line for queued in left], sync=True)
        self._store.settle(queued.journal_file for queued in left)


def _size_of(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # replayed and deleted meanwhile
            continue
    return total
