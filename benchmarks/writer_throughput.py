#!/usr/bin/env python3
"""Push N log records through LogWriter into PostgreSQL and print the rates.

Phases: (1) submit: the request-path cost alone, submit() (clean, journal write, enqueue) with
the writer thread idle (no batch is due before the loop ends), then stop() writes everything.
(2) direct: submit() as fast as possible, then flush; each request arrives as two halves
(HTTP status, then token usage), like in the gateway. (3) replay: the same number of requests
spooled while PostgreSQL is "down" (a port nobody listens on), then replayed by a new writer.

Database: --db-url, else $LITELLM_DB_URL, else a throwaway cluster (tests/gateway/pgcluster.py).
The schema is upgraded to head first. Rows get request ids starting with "bench-<run>-".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    import litellm_pglog  # noqa: F401 - installed in the venv
except ImportError:  # running from a checkout
    sys.path.insert(0, str(REPO / "gateway" / "src"))

from litellm_pglog.db import make_engine, safe_url  # noqa: E402
from litellm_pglog.models import Request  # noqa: E402
from litellm_pglog.records import LogRecord  # noqa: E402
from litellm_pglog.schema import upgrade_schema  # noqa: E402
from litellm_pglog.settings import Settings  # noqa: E402
from litellm_pglog.writer import LogWriter  # noqa: E402
from sqlalchemy import func, make_url, select  # noqa: E402


def halves(run: str, count: int, offset: int = 0):
    for n in range(offset, offset + count):
        request_id = f"bench-{run}-{n}"
        yield LogRecord(
            request_id=request_id,
            route="/v1/chat/completions",
            method="POST",
            status_code=200,
            api_key="TEST_KEY",
            latency_ms=23.0,
        )
        yield LogRecord(
            request_id=request_id,
            model="gpt-4o-mini",
            user_id="poc-tester",
            prompt_tokens=12,
            completion_tokens=30,
            total_tokens=42,
        )


def count_rows(url: str, run: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        query = select(func.count()).where(Request.request_id.startswith(f"bench-{run}-"))
        count = connection.execute(query).scalar_one()
    engine.dispose()
    return count


def submit_phase(settings: Settings, run: str, requests: int) -> None:
    records = list(halves(run, requests, offset=2 * requests))
    idle = {"flush_interval": 3600.0, "batch_size": len(records) + 1, "queue_max": len(records) + 1}
    writer = LogWriter(dataclasses.replace(settings, **idle))
    writer.start()
    started = time.perf_counter()
    for record in records:
        writer.submit(record)
    submitted = time.perf_counter()
    journal_bytes = sum(path.stat().st_size for path in settings.spool_dir.glob("journal-*.jsonl"))
    writer.stop(600)
    print(
        f"submit: {len(records)} records, submit() {len(records) / (submitted - started):,.0f} records/s "
        f"({(submitted - started) / len(records) * 1e6:.1f} us each) with the writer thread idle; "
        f"journal {journal_bytes / 1e6:.1f} MB"
    )
    print(f"submit: stats {writer.stats()}")


def direct_phase(settings: Settings, run: str, requests: int) -> None:
    writer = LogWriter(settings)
    writer.start()
    started = time.perf_counter()
    for record in halves(run, requests):
        writer.submit(record)
    submitted = time.perf_counter()
    flushed = writer.flush(600)
    finished = time.perf_counter()
    writer.stop(60)
    report("direct", requests, started, submitted, finished, flushed, writer.stats())


def replay_phase(settings: Settings, run: str, requests: int) -> None:
    down_url = make_url(settings.db_url).set(port=1).render_as_string(hide_password=False)
    spooling = LogWriter(dataclasses.replace(settings, db_url=down_url))
    spooling.start()
    for record in halves(run, requests, offset=requests):
        spooling.submit(record)
    spooling.stop(60)
    spool_bytes = sum(path.stat().st_size for path in settings.spool_dir.glob("pglog-*.jsonl"))

    replaying = LogWriter(settings)
    started = time.perf_counter()
    replaying.start()
    while any(settings.spool_dir.glob("pglog-*.jsonl")):
        time.sleep(0.05)
    finished = time.perf_counter()
    replaying.stop(60)
    print(f"replay: {spooling.stats()['spooled']} spooled records ({spool_bytes / 1e6:.1f} MB)")
    report("replay", requests, started, started, finished, True, replaying.stats())


def report(phase, requests, started, submitted, finished, flushed, stats) -> None:
    records = 2 * requests
    submit_rate = records / (submitted - started) if submitted > started else float("inf")
    print(
        f"{phase}: {requests} requests ({records} records) in {finished - started:.2f} s: "
        f"{requests / (finished - started):,.0f} rows/s, {records / (finished - started):,.0f} records/s"
        + (f"; submit() {submit_rate:,.0f} records/s" if phase == "direct" else "")
        + ("" if flushed else " [flush timed out]")
    )
    print(f"{phase}: stats {stats}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db-url", default=os.environ.get("LITELLM_DB_URL"))
    parser.add_argument("--requests", type=int, default=20_000, help="requests per phase (two records each)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--queue-max", type=int, default=10_000)
    parser.add_argument("--skip-replay", action="store_true")
    args = parser.parse_args()

    cluster = None
    url = args.db_url
    if not url:
        sys.path.insert(0, str(REPO / "tests" / "gateway"))
        from pgcluster import PgCluster

        cluster = PgCluster().create()
        url = cluster.url
        print("database: throwaway cluster (fsync=off)")
    try:
        print(f"database: {safe_url(url)}")
        upgrade_schema(url)
        run = uuid.uuid4().hex[:8]
        with tempfile.TemporaryDirectory(prefix="pglog-bench-") as spool:
            settings = Settings(
                db_url=url,
                spool_dir=Path(spool),
                batch_size=args.batch_size,
                flush_interval=args.flush_interval,
                queue_max=args.queue_max,
            )
            submit_phase(settings, run, args.requests)
            direct_phase(settings, run, args.requests)
            if not args.skip_replay:
                replay_phase(settings, run, args.requests)
        expected = args.requests * (2 if args.skip_replay else 3)
        print(f"rows in requests for this run: {count_rows(url, run)} (expected {expected})")
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
