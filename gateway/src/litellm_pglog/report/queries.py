"""The report's aggregates, computed by PostgreSQL with SQLAlchemy Core on the one schema (models).

Every query filters on ``requests.created_at`` ranges: the log tables are partitioned by it, and
a range lets PostgreSQL skip the partitions outside the window. Responses are joined by
``request_id_fk`` (no assumption about the primary keys' shape) within the window's start.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Select, func, literal, select

from litellm_pglog.models import Request, Response
from litellm_pglog.report.window import Window

REQUESTS = Request.__table__
RESPONSES = Response.__table__
NONE_LABEL = "(none)"  # requests without a key alias (rejected before auth) or without a model
ALL_LABEL = "all"
ERROR_STATUS = 400  # a status the client saw as an error: 4xx and 5xx


@dataclass
class GroupUsage:
    """One API key alias, one model, or everything (``ALL_LABEL``)."""

    name: str
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    by_status: dict[int | None, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def per_hour(self, window: Window) -> float:
        return self.requests / window.hours


@dataclass(frozen=True)
class HourBucket:
    hour: datetime  # start of the hour, UTC
    requests: int
    errors: int


@dataclass
class Usage:
    window: Window
    total: GroupUsage
    by_key: list[GroupUsage]
    by_model: list[GroupUsage]
    hourly: list[HourBucket]


def _in_window(window: Window) -> ColumnElement[bool]:
    return (REQUESTS.c.created_at >= window.start) & (REQUESTS.c.created_at < window.end)


def _logged(window: Window) -> Select:
    """Requests with their response (if any): the FROM clause of every query.

    A response is never older than its request (the same created_at once the tables are
    partitioned; at least the request's before), so ``responses.created_at >= start`` loses no
    response and lets PostgreSQL skip the responses' older partitions too.
    """
    joined = REQUESTS.outerjoin(
        RESPONSES,
        (RESPONSES.c.request_id_fk == REQUESTS.c.id) & (RESPONSES.c.created_at >= window.start),
    )
    return select().select_from(joined)


def _label(column: ColumnElement) -> ColumnElement[str]:
    return func.coalesce(column, NONE_LABEL)


def _is_error() -> ColumnElement[bool]:
    return REQUESTS.c.status_code >= ERROR_STATUS


def _stats(connection: Connection, window: Window, name: ColumnElement[str] | None) -> list[GroupUsage]:
    """Aggregates per value of ``name``; ``None``: one row over the whole window."""
    latency = RESPONSES.c.latency_ms
    query = (
        _logged(window)
        .add_columns(
            (name if name is not None else literal(ALL_LABEL)).label("name"),
            func.count().label("requests"),
            func.count().filter(_is_error()).label("errors"),
            func.percentile_cont(0.5).within_group(latency).label("p50_ms"),
            func.percentile_cont(0.95).within_group(latency).label("p95_ms"),
            func.coalesce(func.sum(RESPONSES.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(RESPONSES.c.completion_tokens), 0).label("completion_tokens"),
        )
        .where(_in_window(window))
    )
    if name is not None:  # PostgreSQL refuses a constant in GROUP BY: the total has none
        query = query.group_by(name).order_by(func.count().desc(), name)
    return [GroupUsage(**row._asdict()) for row in connection.execute(query)]


def _status_counts(
    connection: Connection, window: Window, name: ColumnElement[str]
) -> dict[str, dict[int | None, int]]:
    status = REQUESTS.c.status_code
    query = (
        _logged(window)
        .add_columns(name.label("name"), status, func.count().label("count"))
        .where(_in_window(window))
        .group_by(name, status)
        .order_by(name, status)
    )
    counts: dict[str, dict[int | None, int]] = {}
    for row in connection.execute(query):
        counts.setdefault(row.name, {})[row.status_code] = row.count
    return counts


def _grouped(connection: Connection, window: Window, name: ColumnElement[str]) -> list[GroupUsage]:
    groups = _stats(connection, window, name)
    statuses = _status_counts(connection, window, name)
    for group in groups:
        group.by_status = statuses.get(group.name, {})
    return groups


def _hourly(connection: Connection, window: Window) -> list[HourBucket]:
    # date_trunc with a time zone argument: buckets are UTC hours whatever the session's TimeZone.
    hour = func.date_trunc("hour", REQUESTS.c.created_at, "UTC")
    query = (
        select(hour.label("hour"), func.count().label("requests"), func.count().filter(_is_error()))
        .where(_in_window(window))
        .group_by(hour)
    )
    found = {row[0]: (row[1], row[2]) for row in connection.execute(query)}
    return [HourBucket(start, *found.get(start, (0, 0))) for start in hours_of(window)]


def hours_of(window: Window) -> Iterable[datetime]:
    """Every UTC hour the window touches, so that quiet hours show as zero, not as gaps."""
    start = window.start.replace(minute=0, second=0, microsecond=0)
    while start < window.end:
        yield start
        start += timedelta(hours=1)


def collect_usage(connection: Connection, window: Window) -> Usage:
    # An aggregate without GROUP BY always returns one row (count 0 on an empty window).
    (total,) = _stats(connection, window, None)
    by_key = _grouped(connection, window, _label(REQUESTS.c.api_key))
    # Every request has exactly one key label: the total's statuses are the sum over the keys.
    total.by_status = dict(sum((Counter(group.by_status) for group in by_key), Counter()))
    return Usage(
        window=window,
        total=total,
        by_key=by_key,
        by_model=_grouped(connection, window, _label(REQUESTS.c.model)),
        hourly=_hourly(connection, window),
    )
