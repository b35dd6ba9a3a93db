#!/usr/bin/env python3
"""Figures for the partitioned log tables (issue 11); printed, nothing is asserted.

1. migration: a 0002 database with --rows requests (and as many responses) upgraded in place
   to head; the upgrade runs in one transaction that holds both tables locked from its first
   statement to its commit, so its duration is the lock time writers see.
2. retention: one day of --rows requests + responses removed (a) by the maintenance job's
   partition drop, (b) by "DELETE ... WHERE created_at < ..." of the same rows reloaded:
   time and WAL bytes (pg_current_wal_lsn before/after) of each.
3. writer: benchmarks/writer_throughput.py's phases on the 0002 schema (main's package source,
   exported with git archive) and on this package's partitioned schema, same cluster, same run.

Runs on a throwaway cluster (tests/gateway/pgcluster.py, fsync=off: WAL is still written and
counted, only not flushed).

Seen on the team's 2-core machine (shared, noisy), 2026-11-27, 1 million rows:
  migration 0002 -> 0003 in place: 4.0-4.4 s (tables locked for that long)
  drop one day: partition drop 0.16-0.17 s, 0.02 MB WAL; DELETE 24.8-25.9 s, 112 MB WAL
  writer rows/s 0002 -> partitioned: insert 9,561 -> 10,115, split 9,968 -> 8,189,
  drain 26,502 -> 16,183, replay 9,276 -> 7,623; PostgreSQL CPU per row about 1.5-2x,
  almost all of it the two-column link's check against the partitioned requests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from alembic import command  # noqa: E402
from litellm_pglog.db import make_engine  # noqa: E402
from litellm_pglog.partitions import Partition, Policy, day_start, drop_partition, partition_name, run  # noqa: E402
from litellm_pglog.schema import _config, upgrade_schema  # noqa: E402
from pgcpu import throwaway_cluster  # noqa: E402
from psycopg2 import sql  # noqa: E402
from sqlalchemy import Connection, text  # noqa: E402
from writer_throughput import print_comparison, run_baseline, run_phases  # noqa: E402

LOAD_REQUESTS = (
    "INSERT INTO requests (request_id, created_at, route, method, model, status_code, api_key) "
    "SELECT 'bench-' || g, :start + g * (interval '86399 seconds' / :rows), '/v1/chat/completions', "
    "'POST', 'gpt-4o-mini', 200, 'TEST_KEY' FROM generate_series(1, :rows) g"
)
LOAD_RESPONSES = (
    "INSERT INTO responses (request_id_fk, created_at, latency_ms, prompt_tokens, total_tokens) "
    "SELECT id, created_at, 23.0, 12, 42 FROM requests WHERE created_at >= :start"
)


def load_day(connection: Connection, start: datetime, rows: int) -> None:
    params = {"start": start, "rows": rows}
    connection.execute(text(LOAD_REQUESTS), params)
    connection.execute(text(LOAD_RESPONSES), params)


def wal_lsn(connection: Connection) -> str:
    return connection.execute(text("SELECT pg_current_wal_lsn()")).scalar_one()


def measure(url: str, work: Callable[[Connection], None]) -> tuple[float, int]:
    """Seconds and WAL bytes of work() in a transaction of its own (commit included)."""
    engine = make_engine(url)
    with engine.connect() as connection:
        before = wal_lsn(connection)
        connection.commit()
        started = time.perf_counter()
        with connection.begin():
            work(connection)
        seconds = time.perf_counter() - started
        after = wal_lsn(connection)
        wal = connection.execute(
            text("SELECT pg_wal_lsn_diff(:a, :b)"), {"a": after, "b": before}
        ).scalar_one()
        connection.commit()
    engine.dispose()
    return seconds, int(wal)


def migration_figures(url: str, rows: int) -> None:
    engine = make_engine(url)
    started = time.perf_counter()
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0002")
        load_day(connection, day_start(datetime.now(UTC).date() - timedelta(days=1)), rows)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE requests")
        connection.exec_driver_sql("VACUUM ANALYZE responses")
    loaded = time.perf_counter() - started
    print(f"migration: loaded {rows:,} requests + responses into a 0002 database in {loaded:.1f} s")
    started = time.perf_counter()
    status = upgrade_schema(url)
    seconds = time.perf_counter() - started
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM requests")).scalar_one()
    engine.dispose()
    print(
        f"migration: {status.current} -> {status.head} in place in {seconds:.2f} s = the time requests and "
        f"responses stay locked (one transaction); {count:,} rows after"
    )


def retention_figures(url: str, rows: int, checkpoint: Callable[[], None]) -> None:
    upgrade_schema(url)
    today = datetime.now(UTC).date()
    day = today + timedelta(days=3)  # a partition the upgrade created
    engine = make_engine(url)

    def reload() -> None:
        started = time.perf_counter()
        with engine.begin() as connection:
            load_day(connection, day_start(day), rows)
        checkpoint()  # both measurements start after one: same full-page-image conditions
        loaded = time.perf_counter() - started
        print(f"retention: loaded {rows:,} requests + responses for {day} in {loaded:.1f} s")

    def drop(connection: Connection) -> None:
        for parent in ("responses", "requests"):
            name = partition_name(parent, day_start(day))
            drop_partition(
                connection, parent, Partition(name, None, day_start(day + timedelta(days=1))), True
            )

    def delete(connection: Connection) -> None:
        until = {"until": day_start(day + timedelta(days=1))}
        connection.execute(text("DELETE FROM responses WHERE created_at < :until"), until)
        connection.execute(text("DELETE FROM requests WHERE created_at < :until"), until)

    reload()
    drop_seconds, drop_wal = measure(url, drop)
    run(url, Policy(), today)  # the job recreates the day's partitions
    reload()
    delete_seconds, delete_wal = measure(url, delete)
    engine.dispose()
    print(f"retention: one day of {rows:,} rows (+ responses):")
    print(f"  partition drop (detach + drop): {drop_seconds:8.3f} s  WAL {drop_wal / 1e6:10.3f} MB")
    print(f"  DELETE ... WHERE created_at <:  {delete_seconds:8.3f} s  WAL {delete_wal / 1e6:10.3f} MB")
    print(f"  (the DELETE leaves {rows:,} dead tuples per table for VACUUM; the drop leaves none)")


def main_source() -> Path:
    """The package source of branch main (the 0002 schema), exported without touching a checkout."""
    target = Path(tempfile.mkdtemp(prefix="pglog-main-src-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "main", "gateway/src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "gateway" / "src"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the migrated / dropped day")
    parser.add_argument("--requests", type=int, default=10_000, help="writer benchmark: requests per phase")
    parser.add_argument("--skip-writer", action="store_true")
    args = parser.parse_args()
    with throwaway_cluster() as cluster:
        print(f"database: throwaway cluster (fsync=off) on port {cluster.port}")
        migration_figures(cluster.url_for(cluster.create_database()), args.rows)
        checkpoint = lambda: cluster._admin(sql.SQL("CHECKPOINT"))  # noqa: E731 - superuser only
        retention_figures(cluster.url_for(cluster.create_database()), args.rows, checkpoint)
        if args.skip_writer:
            return 0
        writer_args = argparse.Namespace(
            requests=args.requests, batch_size=200, flush_interval=0.5, queue_max=10_000
        )
        print("writer: before = 0002 schema (main's package), after = partitioned schema (this package)")
        before = run_baseline(
            main_source(), cluster.url_for(cluster.create_database()), cluster.data, writer_args
        )
        after = run_phases(cluster.url_for(cluster.create_database()), cluster.data, writer_args)
        print_comparison(before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
