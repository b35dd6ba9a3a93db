"""Partition maintenance of the log tables: create ahead, drop behind (litellm-pglog-maintain).

``requests`` and ``responses`` are range-partitioned on created_at (revision 0003) and always
have the same partitions: one per interval (default one UTC day, named ``requests_p20261127``
after the first day), a DEFAULT partition that takes rows of any time no partition covers
(clock skew, replays of old spooled records), and after an in-place upgrade ``*_legacy``,
which holds every row older than the upgrade.

A run, in one transaction under an advisory lock (a concurrent run waits for it, then finds
nothing left to do):
1. creates the partitions that cover today .. today + premake days, in the gaps no partition
   covers yet, each new responses partition linked to its requests twin; rows the DEFAULT
   partition holds for such a range are moved into the new partition in the same transaction
   (PostgreSQL refuses to create it otherwise);
2. drops the partitions whose whole range is older than the retention (upper bound at or
   before the start of today - retention days), the legacy one included once it qualifies:
   responses first, then requests (each responses partition holds the link to the requests
   partition of the same range, see ``link_statement``);
3. deletes the DEFAULT partitions' rows older than the retention.
Retention 0 keeps everything. A second run changes nothing.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, text

from litellm_pglog.schema import SchemaError, connect, run_command

PROG = "litellm-pglog-maintain"
# Partitions are created and dropped for both tables alike; responses reference requests.
PARENTS = ("requests", "responses")
EPOCH = date(1970, 1, 1)  # intervals of several days are aligned on multiples from here
# Serialises runs of several gateways; differs from schema.ADVISORY_LOCK_KEY on purpose.
ADVISORY_LOCK_KEY = 0x6C6D6E74
# DDL on the parents waits at most this long for a lock (e.g. behind a long report query):
# the run fails with one line and the next timer run retries, instead of queueing writers.
LOCK_TIMEOUT = "10s"
BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")

DEFAULT_PREMAKE_DAYS = 7
DEFAULT_RETENTION_DAYS = 90
DEFAULT_INTERVAL_DAYS = 1
ENV_PREMAKE = "LITELLM_PGLOG_PREMAKE_DAYS"
ENV_RETENTION = "LITELLM_PGLOG_RETENTION_DAYS"
ENV_INTERVAL = "LITELLM_PGLOG_PARTITION_DAYS"


@dataclass(frozen=True)
class Policy:
    premake_days: int = DEFAULT_PREMAKE_DAYS
    retention_days: int = DEFAULT_RETENTION_DAYS  # 0: keep forever
    interval_days: int = DEFAULT_INTERVAL_DAYS


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: MINVALUE (the legacy partition)
    upper: datetime | None  # None: the DEFAULT partition


@dataclass(frozen=True)
class Span:
    lower: datetime
    upper: datetime

    def __str__(self) -> str:
        return f"[{self.lower:%Y-%m-%d %H:%M}, {self.upper:%Y-%m-%d %H:%M}) UTC"


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def partition_name(parent: str, lower: datetime) -> str:
    return f"{parent}_p{lower:%Y%m%d}"


def wanted_spans(today: date, policy: Policy) -> list[Span]:
    """The aligned intervals that together cover today .. today + premake days."""
    step = max(policy.interval_days, 1)
    first = EPOCH + timedelta(days=(today - EPOCH).days // step * step)
    spans = []
    start = first
    while start <= today + timedelta(days=policy.premake_days):
        spans.append(Span(day_start(start), day_start(start + timedelta(days=step))))
        start += timedelta(days=step)
    return spans


def free_parts(span: Span, taken: list[Partition]) -> Iterator[Span]:
    """The pieces of span no ranged partition covers (the legacy one ends mid-interval)."""
    lower = span.lower
    ranged = sorted((p for p in taken if p.upper is not None), key=lambda p: p.upper or span.upper)
    for part in ranged:
        part_lower = part.lower or datetime.min.replace(tzinfo=UTC)
        if part.upper is None or part.upper <= lower or part_lower >= span.upper:
            continue
        if part_lower > lower:
            yield Span(lower, part_lower)
        lower = max(lower, part.upper)
    if lower < span.upper:
        yield Span(lower, span.upper)


# ---- reading the catalog ----------------------------------------------------------------------


def _bound(value: str) -> datetime | None:
    return None if value == "MINVALUE" else datetime.fromisoformat(value.strip("'"))


def partitions_of(connection: Connection, parent: str) -> list[Partition]:
    """The partitions of parent with their bounds (the session's TimeZone must be UTC)."""
    rows = connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:parent AS regclass) "
            "ORDER BY c.relname"
        ),
        {"parent": parent},
    )
    found = []
    for name, bound in rows:
        match = BOUND.fullmatch(bound)
        if match is None:  # FOR VALUES DEFAULT
            found.append(Partition(name, None, None))
        else:
            found.append(Partition(name, _bound(match[1]), _bound(match[2])))
    return found


def _count(connection: Connection, table: str, where: str, params: dict[str, datetime]) -> int:
    return connection.execute(text(f'SELECT count(*) FROM "{table}" WHERE {where}'), params).scalar_one()


# ---- the actions ------------------------------------------------------------------------------


IN_SPAN = "created_at >= :lower AND created_at < :upper"


def _stash_default_rows(connection: Connection, span: Span) -> None:
    """Moves the DEFAULT partitions' rows of span to temporary tables, responses first (the
    link would otherwise delete them with their requests)."""
    for parent in reversed(PARENTS):
        stash = f"pglog_moved_{parent}"
        connection.execute(text(f"CREATE TEMPORARY TABLE {stash} (LIKE {parent})"))
        connection.execute(
            text(
                f"WITH moved AS (DELETE FROM {parent}_default WHERE {IN_SPAN} RETURNING *) "
                f"INSERT INTO {stash} SELECT * FROM moved"
            ),
            {"lower": span.lower, "upper": span.upper},
        )


def _restore_stashed_rows(connection: Connection) -> None:
    for parent in PARENTS:  # requests first: the responses reference them
        stash = f"pglog_moved_{parent}"
        connection.execute(text(f"INSERT INTO {parent} SELECT * FROM {stash}"))
        connection.execute(text(f"DROP TABLE {stash}"))


def create_span(connection: Connection, span: Span, apply: bool) -> list[str]:
    """Creates the partitions of span for both tables, moving DEFAULT rows into them."""
    params = {"lower": span.lower, "upper": span.upper}
    waiting = {parent: _count(connection, f"{parent}_default", IN_SPAN, params) for parent in PARENTS}
    verb = "created" if apply else "would create"
    lines = []
    for parent in PARENTS:
        moved = f", moving {waiting[parent]} row(s) from {parent}_default" if waiting[parent] else ""
        lines.append(f"{verb} {partition_name(parent, span.lower)} {span}{moved}")
    if not apply:
        return lines
    if any(waiting.values()):
        _stash_default_rows(connection, span)
    for parent in PARENTS:
        connection.execute(
            text(
                f'CREATE TABLE "{partition_name(parent, span.lower)}" PARTITION OF {parent} '
                f"FOR VALUES FROM ('{span.lower.isoformat()}') TO ('{span.upper.isoformat()}')"
            )
        )
    responses, requests = (partition_name(parent, span.lower) for parent in ("responses", "requests"))
    connection.execute(text(link_statement(responses, requests)))
    if any(waiting.values()):
        _restore_stashed_rows(connection)
    return lines


def link_statement(responses_partition: str, requests_partition: str) -> str:
    """The link of a responses partition to the requests partition of the same range.

    Both tables are partitioned alike and the link contains the partition key, so this makes
    the promise of a link between the parents, which PostgreSQL checks far more slowly (see
    migration 0004, which links the partitions that existed before).
    """
    return (
        f'ALTER TABLE "{responses_partition}" ADD CONSTRAINT "fk_{responses_partition}_requests" '
        f'FOREIGN KEY (request_id_fk, created_at) REFERENCES "{requests_partition}" (id, created_at) '
        "ON DELETE CASCADE"
    )


def drop_partition(connection: Connection, parent: str, partition: Partition, apply: bool) -> str:
    if apply:  # responses first (see maintain): a requests partition is then referenced no more
        connection.execute(text(f'DROP TABLE "{partition.name}"'))
    until = f"{partition.upper:%Y-%m-%d %H:%M}" if partition.upper else "?"
    return f"{'dropped' if apply else 'would drop'} {partition.name} (rows before {until} UTC)"


def purge_default(connection: Connection, parent: str, cutoff: datetime, apply: bool) -> str | None:
    table = f"{parent}_default"
    params = {"cutoff": cutoff}
    if apply:
        deleted = connection.execute(text(f"DELETE FROM {table} WHERE created_at < :cutoff"), params).rowcount
    else:
        deleted = _count(connection, table, "created_at < :cutoff", params)
    if not deleted:
        return None
    verb = "deleted" if apply else "would delete"
    return f"{verb} {deleted} row(s) older than {cutoff:%Y-%m-%d} from {table}"


# ---- one run ----------------------------------------------------------------------------------


def _expired(partitions: list[Partition], cutoff: datetime) -> list[Partition]:
    return [p for p in partitions if p.upper is not None and p.upper <= cutoff]


def maintain(connection: Connection, policy: Policy, today: date, apply: bool = True) -> list[str]:
    """One line per action taken (or, apply=False, that would be taken); empty: nothing to do.

    Runs in the caller's transaction; ``today`` is a parameter so tests can move the clock.
    """
    connection.execute(text("SET LOCAL TimeZone = 'UTC'"))  # bounds read back in UTC
    if apply:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    existing = {parent: partitions_of(connection, parent) for parent in PARENTS}
    taken = existing["requests"] + existing["responses"]
    lines: list[str] = []
    for span in wanted_spans(today, policy):
        for part in free_parts(span, taken):
            lines += create_span(connection, part, apply)
    if policy.retention_days > 0:
        cutoff = day_start(today - timedelta(days=policy.retention_days))
        for parent in reversed(PARENTS):  # responses first, see the module's docstring
            lines += [
                drop_partition(connection, parent, p, apply) for p in _expired(existing[parent], cutoff)
            ]
        for parent in reversed(PARENTS):
            line = purge_default(connection, parent, cutoff, apply)
            lines += [line] if line else []
    return lines


def run(url: str, policy: Policy, today: date | None = None, apply: bool = True) -> list[str]:
    """maintain() in a transaction of its own on the database at url."""
    with connect(url) as connection, connection.begin():
        return maintain(connection, policy, today or datetime.now(UTC).date(), apply)


# ---- the console script -----------------------------------------------------------------------


def _days(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _env_days(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return _days(value)
    except ValueError:
        raise SchemaError(f"{name}={value!r} is not a number of days >= 0") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Create the log tables' partitions ahead and drop those older than the retention "
        "(database: LITELLM_DB_URL).",
    )
    parser.add_argument("--check", action="store_true", help="only print what a run would do")
    parser.add_argument(
        "--premake-days",
        type=_days,
        help=f"days ahead to cover (${ENV_PREMAKE}, default {DEFAULT_PREMAKE_DAYS})",
    )
    parser.add_argument(
        "--retention-days",
        type=_days,
        help=f"days of rows to keep, 0 keeps all (${ENV_RETENTION}, default {DEFAULT_RETENTION_DAYS})",
    )
    parser.add_argument(
        "--interval-days",
        type=_days,
        help=f"days per new partition (${ENV_INTERVAL}, default {DEFAULT_INTERVAL_DAYS})",
    )
    return parser.parse_args(argv)


def policy_from(args: argparse.Namespace) -> Policy:
    """Options win over the environment, which wins over the defaults."""

    def pick(option: int | None, env: str, default: int) -> int:
        return option if option is not None else _env_days(env, default)

    policy = Policy(
        premake_days=pick(args.premake_days, ENV_PREMAKE, DEFAULT_PREMAKE_DAYS),
        retention_days=pick(args.retention_days, ENV_RETENTION, DEFAULT_RETENTION_DAYS),
        interval_days=pick(args.interval_days, ENV_INTERVAL, DEFAULT_INTERVAL_DAYS),
    )
    if policy.interval_days < 1:
        raise SchemaError("the partition interval must be at least 1 day")
    return policy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def action(url: str) -> list[str]:
        policy = policy_from(args)
        nothing = f"nothing to do (premake {policy.premake_days} days, retention {policy.retention_days})"
        return run(url, policy, apply=not args.check) or [nothing]

    return run_command(PROG, action)
