"""The database side of the writer: records made acceptable, merged and upserted.

Upserts keyed on (request_id, created_at) make replays and split records (HTTP status from the
middleware, tokens from the LiteLLM callback) converge on one row each, whatever the order of
arrival: created_at, the partition key, comes from the UUIDv7 request id (see clean_values).
A batch is merged in memory first (one row per request_id), then copied into a staging table
and merged into both tables by one statement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, String, event
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from litellm_pglog.db import CallDeadline
from litellm_pglog.limits import ERROR_MESSAGE_MAX_CHARS, INT32_MAX
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.models import Request, Response
from litellm_pglog.records import LogRecord, request_id_time

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
FIELDS = REQUEST_FIELDS + RESPONSE_FIELDS
INT_FIELDS = ("status_code", "prompt_tokens", "completion_tokens", "total_tokens")

# A record's values by column name, on their way to the staging table.
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


# Tuples, not ``int | float``: a union in isinstance() is built anew at every call.
_NUMBER_TYPES = (int, float)
_INT_SOURCE_TYPES = (int, float, str)


def _clean_int(value: object) -> int | None:
    if type(value) is int and -INT32_MAX <= value <= INT32_MAX:
        return value
    if isinstance(value, bool) or not isinstance(value, _INT_SOURCE_TYPES):
        return None
    try:
        number = int(value)
    except (ValueError, OverflowError):
        return None
    return number if -INT32_MAX <= number <= INT32_MAX else None


def _clean_float(value: object) -> float | None:
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES):
        return None
    number = float(value)
    return number if math.isfinite(number) else None  # no NaN, no infinity in a log row


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


def clean_values(record: LogRecord | dict[str, Any]) -> Row:
    """The record's values as a row PostgreSQL accepts: bounded strings, no NUL, ints in range,
    a timestamp. Raises ValueError for something that is no record (no request_id).

    A dict is a replayed line (``spool.decode_values``): its values are read the same way.
    """
    if type(record) is dict:
        if not record.get("request_id"):
            raise ValueError("a record with a request_id is required")
        get = record.get
        row: Row = {name: None if (value := get(name)) is None else clean(value) for name, clean in CLEANERS}
        row["created_at"] = _clean_timestamp(get("created_at"), row["request_id"])
        return row
    if not isinstance(record, LogRecord) or not record.request_id:
        raise ValueError("a LogRecord with a request_id is required")
    row = {
        name: None if (value := getattr(record, name)) is None else clean(value) for name, clean in CLEANERS
    }
    row["created_at"] = _clean_timestamp(record.created_at, row["request_id"])
    return row


def as_record(values: LogRecord | dict[str, Any]) -> LogRecord:
    """A LogRecord of a replayed line's values (for a rejected one: the rejected file keeps it)."""
    if isinstance(values, LogRecord):
        return values
    known = {name: values.get(name) for name in FIELDS}
    created_at = known["created_at"]
    known["created_at"] = created_at if isinstance(created_at, datetime) else None
    return LogRecord(**known)


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


# ---- the batch upsert: COPY into a staging table, one set-based merge --------------------------
#
# A batch reaches PostgreSQL as one COPY (text format, encoded here) into a temporary staging
# table of the writer's session, then ONE statement merges the staging table into both
# partitioned tables: the requests upsert RETURNs the ids the responses upsert needs. COPY is the
# cheapest way in for the server (no JSON to parse, no per-row statement, no WAL for the staging
# table); the merge keeps the upsert semantics (later non-NULL values win, created_at never
# changes). The staging table is created once per database connection (ON COMMIT DELETE ROWS:
# empty at every transaction's start) and rows are copied in the sorted order merge_rows() gives
# them, which a sequential scan of the fresh heap returns: concurrent writers lock in one order.

STAGE_TABLE = "pglog_stage"
# Whether created_at came from a UUIDv7 request id (see _partition_key): decided on the host.
KEYED_COLUMN = "keyed"
STAGE_COLUMNS = (*FIELDS, KEYED_COLUMN)


def _column_type(name: str) -> str:
    table = RESPONSES if name in RESPONSE_FIELDS else REQUESTS
    return table.c[name].type.compile(dialect=postgresql.dialect())


CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_TABLE} ("
    + ", ".join(f"{name} {_column_type(name)}" for name in FIELDS)
    + f", {KEYED_COLUMN} boolean) ON COMMIT DELETE ROWS"
)
COPY_STAGE = f"COPY {STAGE_TABLE} ({', '.join(STAGE_COLUMNS)}) FROM STDIN"


def _merge_statement(lookup: bool) -> str:
    """The one statement that merges the staging table into requests and responses.

    created_at, the partition key, is part of both conflict keys and never updated (a row cannot
    change partition in an upsert). For ids that are no UUIDv7 (records spooled by older
    releases, whose two halves carry different times) the row already stored wins, found
    through each partition's (request_id, created_at) index: only a batch holding such an id
    runs the statement with that lookup (``lookup``). The other statement's plan names no
    partition, so running it locks none it does not write to; the lookup's names them all.
    """
    request_columns = ", ".join(REQUEST_FIELDS)
    keyed_time = (
        f"CASE WHEN s.{KEYED_COLUMN} THEN s.created_at ELSE coalesce((SELECT r.created_at FROM requests r "
        "WHERE r.request_id = s.request_id ORDER BY r.created_at LIMIT 1), s.created_at) END"
        if lookup
        else "s.created_at"
    )
    selected = ", ".join(keyed_time if name == "created_at" else f"s.{name}" for name in REQUEST_FIELDS)
    request_updates = ", ".join(
        f"{name} = coalesce(excluded.{name}, requests.{name})"
        for name in REQUEST_FIELDS
        if name not in ("request_id", "created_at")
    )
    response_updates = ", ".join(
        f"{name} = coalesce(excluded.{name}, responses.{name})" for name in RESPONSE_FIELDS
    )
    response_columns = ", ".join(RESPONSE_FIELDS)
    response_values = ", ".join(f"s.{name}" for name in RESPONSE_FIELDS)
    return (
        f"WITH upserted AS (INSERT INTO requests ({request_columns}) SELECT {selected} FROM {STAGE_TABLE} s "
        f"ON CONFLICT (request_id, created_at) DO UPDATE SET {request_updates} "
        "RETURNING id, request_id, created_at) "
        f"INSERT INTO responses (request_id_fk, created_at, {response_columns}) "
        f"SELECT u.id, u.created_at, {response_values} FROM upserted u "
        f"JOIN {STAGE_TABLE} s ON s.request_id = u.request_id "
        f"ON CONFLICT (request_id_fk, created_at) DO UPDATE SET {response_updates}"
    )


# By whether the batch holds an id that is no UUIDv7 (see _merge_statement).
MERGE_STAGE = {lookup: _merge_statement(lookup) for lookup in (False, True)}
MERGE_PREPARED = {False: "pglog_merge", True: "pglog_merge_lookup"}
# COPY's text format: these four characters are written as backslash escapes.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value: object) -> str:
    if value is None:
        return "\\N"
    if type(value) is str:
        # Two scans at C speed find the common case, a value with nothing to escape.
        return value if value.isprintable() and "\\" not in value else value.translate(_COPY_ESCAPES)
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)  # int, float (finite: see _clean_float)


def is_keyed(row: Row) -> bool:
    """Whether the row's created_at comes from its UUIDv7 request id (see _clean_timestamp);
    request_id_time() remembers the ids it just read, cleaning asked it first."""
    return request_id_time(row["request_id"]) is not None


def copy_data(rows: list[Row], keyed: list[bool]) -> bytes:
    """The rows (clean, merged) in COPY's text format, in STAGE_COLUMNS order; ``keyed[i]`` is
    ``is_keyed(rows[i])``, worked out once by the caller, which also picks the merge by it."""
    lines = [
        "\t".join([*map(_copy_value, map(row.__getitem__, FIELDS)), "t" if row_keyed else "f"])
        for row, row_keyed in zip(rows, keyed, strict=True)
    ]
    lines.append("")
    return "\n".join(lines).encode()


def create_stage(dbapi_connection: Any, connection_record: Any) -> None:
    """Pool "connect" event: the staging table and the merge prepared, once per connection.

    The merge is planned once per connection instead of once per batch (its plan spans every
    partition of both tables; PostgreSQL replans by itself when partitions come and go). Should
    this fail, the connection works without: each batch then creates the staging table inside
    its own transaction (IF NOT EXISTS) and sends the merge as text, and a refused CREATE is an
    error of that batch like any other.
    """
    try:
        with contextlib.closing(dbapi_connection.cursor()) as cursor:
            cursor.execute(CREATE_STAGE)
            for lookup, name in MERGE_PREPARED.items():
                cursor.execute(f"PREPARE {name} AS {MERGE_STAGE[lookup]}")
        dbapi_connection.commit()
    except Exception:
        with contextlib.suppress(Exception):
            dbapi_connection.rollback()
        return
    connection_record.info[STAGE_TABLE] = True


def _copy_into_stage(connection: Connection, data: bytes) -> None:
    """COPY through the driver connection (psycopg2 or psycopg 3), errors wrapped like SQLAlchemy's."""
    pooled = connection.connection
    driver = pooled.driver_connection
    dbapi = connection.dialect.loaded_dbapi
    cursor = driver.cursor()
    statement = COPY_STAGE
    try:
        if not pooled.info.get(STAGE_TABLE):  # a connection made before create_stage() listened
            statement = CREATE_STAGE
            cursor.execute(CREATE_STAGE)  # rolled back with the batch, if the batch fails
            statement = COPY_STAGE
        if hasattr(cursor, "copy_expert"):  # psycopg2
            cursor.copy_expert(COPY_STAGE, io.BytesIO(data))
        else:  # psycopg 3
            with cursor.copy(COPY_STAGE) as copy:
                copy.write(data)
    except dbapi.Error as exc:
        invalidated = connection.dialect.is_disconnect(exc, driver, cursor)
        if invalidated:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, dbapi.Error, connection_invalidated=invalidated, dialect=connection.dialect
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


@dataclasses.dataclass(frozen=True)
class Batch:
    """Clean rows, and the COPY data of their merge: made ahead of the write in a replay."""

    rows: list[Row]
    requests: int  # rows after the merge: one per request_id
    data: bytes
    lookup: bool  # an id that is no UUIDv7 is among them (see _merge_statement)


def prepare_batch(rows: list[Row]) -> Batch:
    merged = merge_rows(rows)
    keyed = [is_keyed(row) for row in merged]
    return Batch(rows, len(merged), copy_data(merged, keyed), not all(keyed))


def upsert_batch(connection: Connection, batch: Batch) -> int:
    """One COPY and one statement; returns the request rows touched. Must run inside a
    transaction (the staging table empties at its commit)."""
    if batch.requests:
        _copy_into_stage(connection, batch.data)
        prepared = connection.connection.info.get(STAGE_TABLE)
        lookup = batch.lookup
        connection.exec_driver_sql(f"EXECUTE {MERGE_PREPARED[lookup]}" if prepared else MERGE_STAGE[lookup])
    return batch.requests


def upsert_rows(connection: Connection, rows: list[Row]) -> int:
    """Merge the (clean) rows and upsert them; see ``upsert_batch``."""
    return upsert_batch(connection, prepare_batch(rows))


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
        event.listen(engine, "connect", create_stage)

    def write(self, records: list[LogRecord]) -> int:
        """Clean, then write records of any origin (the spool); see ``write_rows``."""
        return self.write_rows(self.rows_of(records))

    def prepare(self, records: list[LogRecord] | list[dict[str, Any]]) -> Batch:
        """The records cleaned, merged and encoded for COPY, ready for ``write_batch``.

        Thread-safe: a replay prepares the next batch on a helper thread (see durable.read_ahead),
        so that the writer thread only waits for PostgreSQL.
        """
        return prepare_batch(self.rows_of(records))

    def rows_of(self, records: list[LogRecord] | list[dict[str, Any]]) -> list[Row]:
        """The records cleaned into rows; one that is no record at all is rejected at once."""
        rows = []
        for record in records:
            try:
                rows.append(clean_values(record))
            except ValueError as exc:  # no request_id: no row can ever hold it
                self._on_reject(as_record(record), exc)
        return rows

    def write_rows(self, rows: list[Row]) -> int:
        """How many of the rows reached PostgreSQL; the others were rejected for good.

        Raises when PostgreSQL could not be used at all: the caller keeps the records.
        """
        return self.write_batch(prepare_batch(rows))

    def write_batch(self, batch: Batch) -> int:
        """``write_rows`` of a batch made ahead (``prepare``)."""
        if not batch.rows:
            return 0
        try:
            with self._deadline(), self.engine.begin() as connection:
                merged = upsert_batch(connection, batch)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            return self._isolate(batch.rows, exc)
        self._metrics.rows_written(merged)
        return len(batch.rows)

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
