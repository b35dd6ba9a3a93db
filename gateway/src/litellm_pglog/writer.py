"""Background batch writer: LogRecords -> PostgreSQL, with a durable spool while it is unreachable.

Request handlers call ``submit()``, which appends the record to the journal (one write, see
``spool.Journal``: what a killed process held in memory is replayed by the next one) and to a
bounded in-memory queue. A daemon thread upserts the queue in batches, one transaction per
batch. When PostgreSQL is down or refuses, batches go to the spool (fsync per batch) and are
replayed once it answers again, or by the next process that starts. Upserts keyed on request_id
make replays and split records (HTTP status from the middleware, tokens from the LiteLLM
callback) converge on one row each.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, String, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from litellm_pglog.db import describe_db_error, make_engine, safe_url
from litellm_pglog.models import Request, Response
from litellm_pglog.records import LogRecord
from litellm_pglog.settings import Settings, SettingsError, load_settings
from litellm_pglog.spool import Journal, JournalFile, Spool, encode_line

log = logging.getLogger("litellm_pglog")

ERROR_MESSAGE_MAX_CHARS = 2000
INT32_MAX = 2**31 - 1
FIRST_RETRY_SECONDS = 0.5
# Spool files of workers that exited are picked up by whichever worker looks next.
SPOOL_SCAN_SECONDS = 30.0

REQUESTS = Request.__table__
RESPONSES = Response.__table__
RESPONSE_FIELDS = ("latency_ms", "prompt_tokens", "completion_tokens", "total_tokens")
REQUEST_FIELDS = tuple(
    f.name for f in dataclasses.fields(LogRecord) if f.name not in RESPONSE_FIELDS and f.name in REQUESTS.c
)
MAX_CHARS = {
    column.name: column.type.length
    for column in REQUESTS.c
    if isinstance(column.type, String) and column.type.length
} | {"error_message": ERROR_MESSAGE_MAX_CHARS}
INT_FIELDS = ("status_code", "prompt_tokens", "completion_tokens", "total_tokens")

# A queued record: its sequence number, the record, the journal file holding its copy.
Queued = tuple[int, LogRecord, JournalFile | None]


class _Metrics:
    """Prometheus series, created once per process (several writers may exist, e.g. in tests)."""

    def __init__(self) -> None:
        try:
            from prometheus_client import Counter, Gauge
        except ImportError:  # metrics are best effort
            self.written = self.spooled = self.dropped = self.queue_depth = None
            return
        self.written = self._get_or_create(Counter, "pglog_rows_written", "Request rows upserted")
        self.spooled = self._get_or_create(Counter, "pglog_records_spooled", "Records written to the spool")
        self.dropped = self._get_or_create(Counter, "pglog_records_dropped", "Records lost: spool full")
        self.queue_depth = self._get_or_create(Gauge, "pglog_queue_depth", "Records waiting in memory")

    @staticmethod
    def _get_or_create(kind, name: str, documentation: str):
        try:
            return kind(name, documentation)
        except ValueError:  # already registered, e.g. module re-imported under another name
            from prometheus_client import REGISTRY

            return REGISTRY._names_to_collectors.get(name)  # no public lookup exists

    def add(self, metric, amount: int) -> None:
        if metric is not None and amount:
            metric.inc(amount)

    def set_queue_depth(self, depth: int) -> None:
        if self.queue_depth is not None:
            self.queue_depth.set(depth)


METRICS = _Metrics()


def _clean_text(value: object, limit: int | None) -> str:
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit]
    # PostgreSQL text cannot hold NUL, and UTF-8 cannot hold lone surrogates.
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _clean_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = int(value)
    except (ValueError, OverflowError):
        return None
    return number if -INT32_MAX <= number <= INT32_MAX else None


def _clean_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _clean_timestamp(value: object) -> datetime:
    if not isinstance(value, datetime):
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.astimezone()


def clean_record(record: LogRecord) -> LogRecord:
    """A copy that PostgreSQL accepts: bounded strings, no NUL, ints in range, a timestamp."""
    if not isinstance(record, LogRecord) or not record.request_id:
        raise ValueError("a LogRecord with a request_id is required")
    values = {}
    for name in REQUEST_FIELDS + RESPONSE_FIELDS:
        value = getattr(record, name)
        if name == "created_at":
            values[name] = _clean_timestamp(value)
        elif value is None:
            values[name] = None
        elif name in MAX_CHARS:
            values[name] = _clean_text(value, MAX_CHARS[name])
        elif name in INT_FIELDS:
            values[name] = _clean_int(value)
        elif name == "latency_ms":
            values[name] = _clean_float(value)
        elif name == "stream":
            values[name] = bool(value)
    return LogRecord(**values)


def merge_records(records: list[LogRecord]) -> list[LogRecord]:
    """One record per request_id: later non-NULL values win, the earliest timestamp stays.

    Sorted by request_id so that concurrent writers lock rows in the same order (no deadlocks).
    """
    merged: dict[str, LogRecord] = {}
    for record in records:
        known = merged.get(record.request_id)
        if known is None:
            merged[record.request_id] = record
            continue
        updates = {
            f.name: getattr(record, f.name)
            for f in dataclasses.fields(LogRecord)
            if getattr(record, f.name) is not None
        }
        updates["created_at"] = min(known.created_at, record.created_at)
        merged[record.request_id] = dataclasses.replace(known, **updates)
    return [merged[key] for key in sorted(merged)]


def _upsert_requests():
    statement = insert(REQUESTS)
    merged = {
        name: func.coalesce(statement.excluded[name], REQUESTS.c[name])
        for name in REQUEST_FIELDS
        if name not in ("request_id", "created_at")
    }
    merged["created_at"] = func.least(REQUESTS.c.created_at, statement.excluded.created_at)
    return statement.on_conflict_do_update(index_elements=[REQUESTS.c.request_id], set_=merged).returning(
        REQUESTS.c.id, REQUESTS.c.request_id
    )


def _upsert_responses():
    statement = insert(RESPONSES)
    merged = {name: func.coalesce(statement.excluded[name], RESPONSES.c[name]) for name in RESPONSE_FIELDS}
    return statement.on_conflict_do_update(index_elements=[RESPONSES.c.request_id_fk], set_=merged)


UPSERT_REQUESTS = _upsert_requests()
UPSERT_RESPONSES = _upsert_responses()


def write_records(connection: Connection, records: list[LogRecord]) -> int:
    """Upsert the records and their responses rows; returns the number of request rows touched."""
    merged = merge_records([clean_record(record) for record in records])
    request_rows = [{name: getattr(r, name) for name in REQUEST_FIELDS} for r in merged]
    ids = {request_id: pk for pk, request_id in connection.execute(UPSERT_REQUESTS, request_rows)}
    response_rows = [
        {"request_id_fk": ids[r.request_id], "created_at": r.created_at}
        | {name: getattr(r, name) for name in RESPONSE_FIELDS}
        for r in merged
    ]
    connection.execute(UPSERT_RESPONSES, response_rows)
    return len(merged)


def _is_data_error(exc: BaseException) -> bool:
    """True when the records themselves are refused; anything else may heal on the server side."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False  # connection, password, missing table, privileges: keep the records, retry
    return isinstance(exc, StatementError | ValueError | TypeError)


class LogWriter:
    """Batches records into PostgreSQL from a daemon thread; see the module docstring."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self._owns_engine = engine is None
        if engine is None:
            if not settings.db_url:
                raise SettingsError("LITELLM_DB_URL is not set")
            engine = make_engine(settings.db_url)
        self._settings = settings
        self._engine = engine
        self._spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self._journal = Journal(settings.spool_dir)
        self._journal_failing = False
        self._queue: deque[Queued] = deque()
        self._cond = threading.Condition()
        self._counts = dict.fromkeys(
            ("submitted", "written", "spooled", "replayed", "dropped", "rejected", "db_errors"), 0
        )
        self._last_queued = 0
        self._settled = 0
        self._flush_waiters = 0
        self._inflight: list[Queued] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._retry_delay = FIRST_RETRY_SECONDS
        self._replay_wanted = True
        self._next_scan = 0.0

    # ---- API used by request handlers -------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._spool.refresh_size()
        self._thread = threading.Thread(target=self._run, name="litellm-pglog-writer", daemon=True)
        self._thread.start()

    def submit(self, record: LogRecord) -> None:
        """Journal and queue a record; never blocks on the database and never raises."""
        try:
            cleaned = clean_record(record)
        except Exception as exc:  # a logging add-on must not fail the request
            self._count("submitted")
            self._drop(1, f"unusable record ({exc})")
            return
        # When stopping, the record goes to the spool and its fsync at once: no journal needed.
        journal_file = None if self._stopping else self._journal_record(cleaned)
        with self._cond:
            self._counts["submitted"] += 1
            if len(self._queue) < self._settings.queue_max and not self._stopping:
                self._last_queued += 1
                self._queue.append((self._last_queued, cleaned, journal_file))
                if len(self._queue) >= self._settings.batch_size:
                    self._cond.notify_all()
                return
        # Queue full (PostgreSQL slower than the traffic) or stopping: straight to the spool,
        # fsynced when the writer thread seals the file for replay, by flush(), at once when stopping.
        self._spool_records([cleaned], sync=self._stopping)
        self._journal.settle([journal_file])

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is in PostgreSQL or in the (fsynced) spool."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._last_queued
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                while self._settled < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flush_waiters -= 1
        self._spool.sync()
        return True

    def stop(self, timeout: float) -> None:
        """Flush, then stop; whatever did not reach PostgreSQL in time is left in the spool."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread is None or self._thread.is_alive():
            # The thread is stuck on the database (or never ran): spool what it still holds.
            # Should it finish its batch after all, the upsert makes the second copy harmless.
            with self._cond:
                left = self._inflight + list(self._queue)
                self._queue.clear()
                self._settled = self._last_queued
                self._cond.notify_all()
            self._spool_records([record for _, record, _ in left], sync=True)
            self._journal.settle(journal_file for _, _, journal_file in left)
        self._spool.seal()
        self._journal.close()
        if self._owns_engine and not (self._thread and self._thread.is_alive()):
            self._engine.dispose()
        METRICS.set_queue_depth(0)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {**self._counts, "queue_depth": len(self._queue)}

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
        batch = self._next_batch()
        if batch:
            try:
                self._handle([record for _, record, _ in batch])
            finally:
                self._settle(batch)
        elif self._stopping:
            return False
        self._journal.rotate()
        if not self._stopping and self._replay_due():
            self._replay_spool()
        return True

    def _next_batch(self) -> list[Queued]:
        with self._cond:
            filling = len(self._queue) < self._settings.batch_size and not self._flush_waiters
            if not self._stopping and (not self._queue or filling):
                self._cond.wait(self._settings.flush_interval)
            size = min(self._settings.batch_size, len(self._queue))
            self._inflight = [self._queue.popleft() for _ in range(size)]
            METRICS.set_queue_depth(len(self._queue))
            return self._inflight

    def _settle(self, batch: list[Queued]) -> None:
        self._journal.settle(journal_file for _, _, journal_file in batch)
        with self._cond:
            self._settled = max(self._settled, batch[-1][0])
            self._inflight = []
            self._cond.notify_all()

    def _handle(self, records: list[LogRecord]) -> None:
        if self._down_since is not None and time.monotonic() < self._retry_at:
            self._spool_records(records, sync=True)
            return
        try:
            written = self._write(records)
        except Exception as exc:  # every failure keeps the records
            self._mark_down(exc)
            self._spool_records(records, sync=True)
            return
        self._count("written", written)
        self._mark_up()

    def _write(self, records: list[LogRecord]) -> int:
        """One transaction for the batch; a refused batch is retried record by record.

        Returns how many records reached PostgreSQL (the others were rejected for good).
        """
        try:
            with self._engine.begin() as connection:
                rows = write_records(connection, records)
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            if len(records) == 1:
                self._reject(records[0], exc)
                return 0
            return sum(self._write([record]) for record in records)
        METRICS.add(METRICS.written, rows)
        return len(records)

    def _reject(self, record: LogRecord, exc: BaseException) -> None:
        line = json.dumps({"error": describe_db_error(exc), "record": record.to_json_dict()}).encode() + b"\n"
        self._spool.reject(line)
        self._count("rejected")
        log.error(
            "PostgreSQL refused the log record for request %s (%s); kept in %s",
            record.request_id,
            describe_db_error(exc),
            self._spool.directory,
        )

    def _replay_due(self) -> bool:
        if self._down_since is not None:
            return time.monotonic() >= self._retry_at and self._spool.has_files()
        if self._replay_wanted or self._spool.active_path is not None:
            return True
        if time.monotonic() < self._next_scan:
            return False
        self._next_scan = time.monotonic() + SPOOL_SCAN_SECONDS
        return self._spool.has_files()

    def _replay_spool(self) -> None:
        self._replay_wanted = False
        self._next_scan = time.monotonic() + SPOOL_SCAN_SECONDS
        self._spool.seal()
        for claimed in self._spool.claim_files():
            try:
                for batch in claimed.batches(self._settings.batch_size, self._on_bad_line):
                    self._count("replayed", self._write(batch))
            except Exception as exc:  # the file stays for the next attempt
                claimed.release()
                self._mark_down(exc)
                return
            claimed.remove()
            log.info("replayed spool file %s", claimed.path.name)
            self._mark_up()
        self._spool.refresh_size()

    def _on_bad_line(self, number: int, reason: str) -> None:
        self._drop(1, f"unreadable spool line {number} ({reason})")

    def _mark_down(self, exc: BaseException) -> None:
        self._count("db_errors")
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._retry_delay = FIRST_RETRY_SECONDS
            log.warning(
                "PostgreSQL unavailable at %s (%s); spooling log records to %s",
                safe_url(self._engine.url),
                describe_db_error(exc, self._engine.url),
                self._spool.directory,
            )
        else:
            self._retry_delay = min(self._retry_delay * 2, self._settings.retry_max_seconds)
        self._retry_at = now + self._retry_delay

    def _mark_up(self) -> None:
        if self._down_since is None:
            return
        downtime = time.monotonic() - self._down_since
        log.warning("PostgreSQL reachable again after %.1f s; replaying the spool", downtime)
        self._down_since = None
        self._replay_wanted = True

    # ---- bookkeeping ------------------------------------------------------------------------

    def _journal_record(self, record: LogRecord) -> JournalFile | None:
        try:
            journal_file = self._journal.append(encode_line(record))
        except Exception as exc:  # e.g. disk full: the record is still queued, only a crash loses it
            if not self._journal_failing:
                self._journal_failing = True
                log.error("cannot write the journal in %s: %s", self._journal.directory, exc)
            return None
        if self._journal_failing:
            self._journal_failing = False
            log.warning("writing the journal in %s again", self._journal.directory)
        return journal_file

    def _spool_records(self, records: list[LogRecord], sync: bool) -> None:
        if not records:
            return
        try:
            stored = self._spool.append([encode_line(r) for r in records], sync=sync)
        except OSError as exc:
            stored = 0
            log.error("cannot write the spool in %s: %s", self._spool.directory, exc)
        self._count("spooled", stored)
        METRICS.add(METRICS.spooled, stored)
        if stored < len(records):
            self._drop(len(records) - stored, f"spool full ({self._spool.max_bytes} bytes)")

    def _drop(self, amount: int, reason: str) -> None:
        self._count("dropped", amount)
        METRICS.add(METRICS.dropped, amount)
        log.error("LOG RECORDS LOST: dropped %d record(s): %s", amount, reason)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._cond:
            self._counts[name] += amount


_writer: LogWriter | None = None
_writer_lock = threading.Lock()


def get_writer() -> LogWriter:
    """The started writer of this process, created from the environment on first use."""
    global _writer
    with _writer_lock:
        if _writer is None:
            writer = LogWriter(load_settings())
            writer.start()
            atexit.register(writer.stop, 5.0)
            _writer = writer
            log.info("log writer started (pid %d)", os.getpid())
        return _writer
