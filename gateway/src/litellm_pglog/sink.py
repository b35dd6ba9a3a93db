"""The database side of the writer: records made acceptable, merged and upserted.

Upserts keyed on (request_id, created_at) make replays and split records (HTTP status from the
middleware, tokens from the LiteLLM callback) converge on one row each, whatever the order of
arrival: created_at, the partition key, comes from the UUIDv7 request id (see clean_values).
A batch is merged in memory first (one row per request_id), then written by one statement.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    Text,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import JSON, Insert, insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.sql.selectable import CTE

from litellm_pglog import fastjson
from litellm_pglog.db import CallDeadline
from litellm_pglog.limits import ERROR_MESSAGE_MAX_CHARS, INT32_MAX
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.models import Request, Response
from litellm_pglog.records import LogRecord, request_id_time

REQUESTS = Request.__table__
RESPONSES = Response.__table__
RESPONSE_FIELDS = ("latency_ms", "prompt_tokens", "completion_tokens", "total_tokens")
# The text form of a UUIDv7 that records.request_id_time() reads a time from.
UUID7_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
REQUEST_FIELDS = tuple(
    f.name for f in dataclasses.fields(LogRecord) if f.name not in RESPONSE_FIELDS and f.name in REQUESTS.c
)
MAX_CHARS = {
    column.name: column.type.length
    for column in REQUESTS.c
    if isinstance(column.type, String) and column.type.length
} | {"error_message": ERROR_MESSAGE_MAX_CHARS}
FIELDS = REQUEST_FIELDS + RESPONSE_FIELDS
INT_FIELDS = ("status_code", "prompt_tokens", "completion_tokens", "total_tokens")

# A record's values by column name, on their way to one statement's JSON parameter.
Row = dict[str, Any]
# Told about a record PostgreSQL refused for good, with the reason.
OnReject = Callable[[LogRecord, BaseException], None]


# ---- records PostgreSQL accepts ---------------------------------------------------------------


def _clean_text(value: object, limit: int) -> str:
    if type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the common case, checked at C speed: nothing to change
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit]
    # PostgreSQL text cannot hold NUL, and UTF-8 cannot hold lone surrogates.
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _clean_int(value: object) -> int | None:
    if type(value) is int and -INT32_MAX <= value <= INT32_MAX:
        return value
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
    number = float(value)
    return number if math.isfinite(number) else None  # the batch is JSON: no NaN, no infinity


def _clean_timestamp(value: object, request_id: str) -> datetime:
    """The row's created_at, the tables' partition key and part of their conflict key.

    A UUIDv7 request id (the middleware's) decides it: every record of the request, the
    callback's without a timestamp included, must agree on it or they would become two rows.
    Other ids (records spooled by older releases, made-up ids) keep their own time, or now.
    """
    embedded = request_id_time(request_id)
    if embedded is not None:
        return embedded
    if not isinstance(value, datetime):
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.astimezone()


def _cleaner(name: str) -> Callable[[object], object]:
    """How one field is made acceptable; None values stay None (created_at excepted)."""
    if name in MAX_CHARS:
        return functools.partial(_clean_text, limit=MAX_CHARS[name])
    if name in INT_FIELDS:
        return _clean_int
    if name == "latency_ms":
        return _clean_float
    if name == "stream":
        return bool
    return lambda _value: None


# Looked up once here rather than per value: every record is cleaned on its way in.
CLEANERS = tuple((name, _cleaner(name)) for name in FIELDS if name != "created_at")


def clean_values(record: LogRecord) -> Row:
    """The record's values as a row PostgreSQL accepts: bounded strings, no NUL, ints in range,
    a timestamp. Raises ValueError for something that is no record (no request_id).
    """
    if not isinstance(record, LogRecord) or not record.request_id:
        raise ValueError("a LogRecord with a request_id is required")
    row: Row = {
        name: None if (value := getattr(record, name)) is None else clean(value) for name, clean in CLEANERS
    }
    row["created_at"] = _clean_timestamp(record.created_at, row["request_id"])
    return row


def clean_record(record: LogRecord) -> LogRecord:
    """A copy that PostgreSQL accepts (see ``clean_values``)."""
    return LogRecord(**clean_values(record))


def as_row(record: LogRecord) -> Row:
    """The values of a record clean_record() made, as a row."""
    return {name: getattr(record, name) for name in FIELDS}


def merge_rows(rows: list[Row]) -> list[Row]:
    """One row per request_id: later non-NULL values win, the earliest timestamp stays.

    (Records of a UUIDv7 request id all carry its embedded time; the earliest-wins rule only
    matters for other ids, whose records of one batch then still make one row.)

    Sorted by request_id so that concurrent writers lock rows in the same order (no deadlocks).
    The rows passed in stay as they are (a refused batch is halved as it came): a request's
    first row is copied once its second one arrives.
    """
    merged: dict[str, Row] = {}
    copied: set[str] = set()
    for row in rows:
        request_id = row["request_id"]
        known = merged.setdefault(request_id, row)
        if known is row:
            continue
        if request_id not in copied:
            known = merged[request_id] = dict(known)
            copied.add(request_id)
        earliest = min(known["created_at"], row["created_at"])
        known.update((name, value) for name, value in row.items() if value is not None)
        known["created_at"] = earliest
    return [merged[key] for key in sorted(merged)]


# ---- the batch upsert -------------------------------------------------------------------------
#
# One statement per batch, whatever its size: the batch travels as ONE json parameter, unpacked
# on the server by json_to_recordset into typed columns (the types of the schema, so a value the
# table would refuse is refused here, as a DataError). The requests upsert RETURNs the ids the
# responses upsert needs, in the same statement. Compared with a row-by-row executemany this
# saves a round trip, a parse and a plan per row; compared with COPY into a staging table it
# needs no extra database object, no raw DBAPI cursor and keeps SQLAlchemy's error handling
# (disconnects, DataError vs OperationalError) intact. json_to_recordset yields the array in
# order, so rows are locked in the sorted order merge_rows() gives them.


def _batch_rows() -> CTE:
    columns = [column(name, REQUESTS.c[name].type) for name in REQUEST_FIELDS]
    columns += [column(name, RESPONSES.c[name].type) for name in RESPONSE_FIELDS]
    records = func.json_to_recordset(cast(bindparam("batch", type_=Text), JSON)).table_valued(*columns)
    batch = select(records.render_derived(name="record", with_types=True)).cte("batch")
    others = [batch.c[name] for name in FIELDS if name != "created_at"]
    return select(*others, _partition_key(batch).label("created_at")).cte("keyed")


def _partition_key(batch: CTE) -> ColumnElement[datetime]:
    """The created_at a batch row is stored under (the partition key, part of the upsert key).

    A UUIDv7 id fixed it already (clean_values). For other ids (records spooled by older
    releases, whose two halves carry different times) the row already stored wins, found
    through each partition's (request_id, created_at) index: without it a later half would
    become a second row. Only those rare rows pay for the lookup (CASE evaluates it lazily).
    """
    stored = (
        select(REQUESTS.c.created_at)
        .where(REQUESTS.c.request_id == batch.c.request_id)
        .order_by(REQUESTS.c.created_at)
        .limit(1)
        .scalar_subquery()
    )
    is_uuid7 = batch.c.request_id.op("~")(literal_column(f"'{UUID7_PATTERN}'"))
    return case((is_uuid7, batch.c.created_at), else_=func.coalesce(stored, batch.c.created_at))


def _upsert_requests(batch: CTE) -> CTE:
    statement = insert(REQUESTS).from_select(REQUEST_FIELDS, select(*(batch.c[n] for n in REQUEST_FIELDS)))
    merged = {
        name: func.coalesce(statement.excluded[name], REQUESTS.c[name])
        for name in REQUEST_FIELDS
        if name not in ("request_id", "created_at")
    }
    # created_at is the partition key: part of the conflict key, so never updated (a row cannot
    # change partition in an upsert). Records agree on it through the UUIDv7 request id.
    upsert = statement.on_conflict_do_update(
        index_elements=[REQUESTS.c.request_id, REQUESTS.c.created_at], set_=merged
    )
    return upsert.returning(REQUESTS.c.id, REQUESTS.c.request_id).cte("upserted")


def _upsert_batch() -> Insert:
    batch = _batch_rows()
    upserted = _upsert_requests(batch)
    rows = select(upserted.c.id, batch.c.created_at, *(batch.c[name] for name in RESPONSE_FIELDS))
    rows = rows.join_from(upserted, batch, upserted.c.request_id == batch.c.request_id)
    statement = insert(RESPONSES).from_select(["request_id_fk", "created_at", *RESPONSE_FIELDS], rows)
    merged = {name: func.coalesce(statement.excluded[name], RESPONSES.c[name]) for name in RESPONSE_FIELDS}
    return statement.on_conflict_do_update(
        index_elements=[RESPONSES.c.request_id_fk, RESPONSES.c.created_at], set_=merged
    )


UPSERT_BATCH = _upsert_batch()


def upsert_rows(connection: Connection, rows: list[Row]) -> int:
    """Merge the (clean) rows and upsert them, one statement; returns the request rows touched."""
    merged = merge_rows(rows)
    if merged:
        # Cleaned text is valid UTF-8 without NUL: nothing json_to_recordset would refuse.
        connection.execute(UPSERT_BATCH, {"batch": fastjson.dumps_rows(merged)})
    return len(merged)


def write_records(connection: Connection, records: list[LogRecord]) -> int:
    """Upsert the records and their responses rows; returns the number of request rows touched."""
    return upsert_rows(connection, [clean_values(record) for record in records])


def is_data_error(exc: BaseException) -> bool:
    """True when the records themselves are refused; anything else may heal on the server side."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False  # connection, password, missing table, privileges: keep the records, retry
    return isinstance(exc, StatementError | ValueError | TypeError)


class DatabaseSink:
    """Writes batches in one transaction each; a refused batch is halved until the culprit is found."""

    def __init__(self, engine: Engine, metrics: WriterMetrics, on_reject: OnReject, timeout: float) -> None:
        self.engine = engine
        self._metrics = metrics
        self._on_reject = on_reject
        self._deadline = CallDeadline(engine, timeout)

    def write(self, records: list[LogRecord]) -> int:
        """Clean, then write records of any origin (the spool); see ``write_rows``."""
        return self.write_rows(self.rows_of(records))

    def rows_of(self, records: list[LogRecord]) -> list[Row]:
        """The records cleaned into rows; one that is no record at all is rejected at once.

        Thread-safe: a replay cleans the next batch on a helper thread (see durable.read_ahead).
        """
        rows = []
        for record in records:
            try:
                rows.append(clean_values(record))
            except ValueError as exc:  # no request_id: no row can ever hold it
                self._on_reject(record, exc)
        return rows

    def write_clean(self, records: list[LogRecord]) -> int:
        """Write records clean_record() made (submit() did); see ``write_rows``."""
        return self.write_rows([as_row(record) for record in records])

    def write_rows(self, rows: list[Row]) -> int:
        """How many of the rows reached PostgreSQL; the others were rejected for good.

        Raises when PostgreSQL could not be used at all: the caller keeps the records.
        """
        if not rows:
            return 0
        try:
            with self._deadline(), self.engine.begin() as connection:
                merged = upsert_rows(connection, rows)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            return self._isolate(rows, exc)
        self._metrics.rows_written(merged)
        return len(rows)

    def _isolate(self, rows: list[Row], exc: BaseException) -> int:
        """Find the refused row(s) by halving the batch: log2(n) rounds, not n statements.

        The halves keep their order, so later values still win when a request's records are
        split between them: the upsert merges them like records of separate batches.
        """
        if len(rows) == 1:
            self._on_reject(LogRecord(**rows[0]), exc)
            return 0
        middle = len(rows) // 2
        return self.write_rows(rows[:middle]) + self.write_rows(rows[middle:])
