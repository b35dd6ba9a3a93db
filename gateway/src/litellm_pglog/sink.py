"""The database side of the writer: records made acceptable, merged and upserted.

Upserts keyed on request_id make replays and split records (HTTP status from the middleware,
tokens from the LiteLLM callback) converge on one row each, whatever the order of arrival.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, String, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from litellm_pglog.db import CallDeadline
from litellm_pglog.limits import ERROR_MESSAGE_MAX_CHARS, INT32_MAX
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.models import Request, Response
from litellm_pglog.records import LogRecord

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

# Told about a record PostgreSQL refused for good, with the reason.
OnReject = Callable[[LogRecord, BaseException], None]


# ---- records PostgreSQL accepts ---------------------------------------------------------------


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


def _clean_value(name: str, value: object) -> object:
    if name == "created_at":
        return _clean_timestamp(value)
    if value is None:
        return None
    if name in MAX_CHARS:
        return _clean_text(value, MAX_CHARS[name])
    if name in INT_FIELDS:
        return _clean_int(value)
    if name == "latency_ms":
        return _clean_float(value)
    if name == "stream":
        return bool(value)
    return None


def clean_record(record: LogRecord) -> LogRecord:
    """A copy that PostgreSQL accepts: bounded strings, no NUL, ints in range, a timestamp."""
    if not isinstance(record, LogRecord) or not record.request_id:
        raise ValueError("a LogRecord with a request_id is required")
    names = REQUEST_FIELDS + RESPONSE_FIELDS
    return LogRecord(**{name: _clean_value(name, getattr(record, name)) for name in names})


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


# ---- the upsert -------------------------------------------------------------------------------


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


def is_data_error(exc: BaseException) -> bool:
    """True when the records themselves are refused; anything else may heal on the server side."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False  # connection, password, missing table, privileges: keep the records, retry
    return isinstance(exc, StatementError | ValueError | TypeError)


class DatabaseSink:
    """Writes batches in one transaction each; a refused batch is retried record by record."""

    def __init__(self, engine: Engine, metrics: WriterMetrics, on_reject: OnReject, timeout: float) -> None:
        self.engine = engine
        self._metrics = metrics
        self._on_reject = on_reject
        self._deadline = CallDeadline(engine, timeout)

    def write(self, records: list[LogRecord]) -> int:
        """How many records reached PostgreSQL (the others were rejected for good).

        Raises when PostgreSQL could not be used at all: the caller keeps the records.
        """
        try:
            with self._deadline(), self.engine.begin() as connection:
                rows = write_records(connection, records)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            return self._write_one_by_one(records, exc)
        self._metrics.rows_written(rows)
        return len(records)

    def _write_one_by_one(self, records: list[LogRecord], exc: BaseException) -> int:
        if len(records) == 1:
            self._on_reject(records[0], exc)
            return 0
        return sum(self.write([record]) for record in records)
