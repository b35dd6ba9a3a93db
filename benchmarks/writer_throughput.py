#!/usr/bin/env python3
"""Push log records through LogWriter into PostgreSQL and print rows/s and PostgreSQL CPU per row.

Phases, each with a spool directory of its own:
  submit   the request-path cost alone: submit() (clean, journal write, enqueue) while the
           database is down, so no batch competes with the loop (stop() spools everything);
  insert   submit() as fast as possible, then flush; each request arrives as two halves
           (HTTP status, then token usage) next to each other, as in the gateway;
  split    the same, but every HTTP half first and every usage half after it: the halves of a
           request land in different batches, each row is written twice (the worst case);
  drain    the writer thread alone: every record queued before it starts, then start() and
           flush() (no submit() competing for the interpreter);
  replay   the same number of requests spooled while PostgreSQL is "down" (a port nobody
           listens on), then replayed by a new writer.

"PG CPU" is the CPU time of every process of the cluster (see pgcpu.py) per request row, so
it is only shown for a cluster on this machine: the throwaway one, or --db-url with --pg-data.

--baseline-src DIR runs the same phases first with the package source in DIR (e.g. main's
gateway/src in a second checkout), in a child process, on a fresh database of the same cluster,
and prints both side by side: before and after, same machine, same run.

Database: --db-url, else $LITELLM_DB_URL, else a throwaway cluster (tests/gateway/pgcluster.py,
fsync=off, synchronous_commit=off). The schema is upgraded to head first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import litellm_pglog  # noqa: F401 - installed in the venv, or the --baseline-src on PYTHONPATH
except ImportError:  # running from a checkout
    sys.path.insert(0, str(REPO / "gateway" / "src"))

import litellm_pglog  # noqa: E402
from litellm_pglog.db import make_engine, safe_url  # noqa: E402
from litellm_pglog.models import Request  # noqa: E402
from litellm_pglog.records import LogRecord  # noqa: E402
from litellm_pglog.schema import upgrade_schema  # noqa: E402
from litellm_pglog.settings import Settings  # noqa: E402
from litellm_pglog.writer import LogWriter  # noqa: E402
from pgcpu import ClusterCpu, throwaway_cluster  # noqa: E402
from sqlalchemy import func, make_url, select  # noqa: E402

PHASES = ("insert", "split", "drain", "replay")


@dataclasses.dataclass
class Figures:
    """What one phase measured."""

    phase: str
    rows: int
    seconds: float
    pg_cpu_seconds: float | None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def pg_cpu_ms_per_row(self) -> float | None:
        return None if self.pg_cpu_seconds is None else self.pg_cpu_seconds * 1000 / self.rows

    def line(self) -> str:
        cpu = self.pg_cpu_ms_per_row
        return (
            f"{self.phase}: {self.rows} requests ({2 * self.rows} records) in {self.seconds:.2f} s: "
            f"{self.rows_per_second:,.0f} rows/s"
            + ("" if cpu is None else f", PostgreSQL CPU {cpu:.4f} ms/row")
        )


class Meter:
    """Wall clock and cluster CPU around one phase."""

    def __init__(self, cpu: ClusterCpu | None) -> None:
        self._cpu = cpu

    def measure(self, phase: str, rows: int, work: Callable[[], None]) -> Figures:
        cpu_before = self._cpu.seconds() if self._cpu else None
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        cpu_used = self._cpu.seconds() - cpu_before if self._cpu else None
        return Figures(phase, rows, seconds, cpu_used)


def request_ids(run: str, count: int, offset: int) -> list[str]:
    """Ids like the middleware's: UUIDv7 where the package makes them (partitioned schema),
    else made-up ones. The run is recorded in api_key (see count_rows)."""
    try:
        from litellm_pglog.records import new_request_id
    except ImportError:  # a --baseline-src from before UUIDv7 request ids
        return [f"bench-{run}-{n}" for n in range(offset, offset + count)]
    return [new_request_id()[0] for _ in range(count)]


def halves(run: str, count: int, offset: int = 0, split: bool = False) -> Iterator[LogRecord]:
    """Two records per request: HTTP half then usage half, or (split) all HTTP halves first."""
    ids = request_ids(run, count, offset)
    if split:
        yield from (http_half(request_id, run) for request_id in ids)
        yield from (usage_half(request_id) for request_id in ids)
        return
    for request_id in ids:
        yield http_half(request_id, run)
        yield usage_half(request_id)


# What the middleware (HTTP exchange) and the LiteLLM callback (token usage) know of a request.
HTTP_HALF = {"route": "/v1/chat/completions", "method": "POST", "status_code": 200, "api_key": "TEST_KEY"}
USAGE_HALF = {"model": "gpt-4o-mini", "user_id": "poc-tester", "prompt_tokens": 12, "completion_tokens": 30}


def http_half(request_id: str, run: str) -> LogRecord:
    return LogRecord(request_id=request_id, latency_ms=23.0, **HTTP_HALF | {"api_key": f"bench-{run}"})


def usage_half(request_id: str) -> LogRecord:
    return LogRecord(request_id=request_id, total_tokens=42, **USAGE_HALF)


def count_rows(url: str, run: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        query = select(func.count()).where(Request.api_key == f"bench-{run}")
        count = connection.execute(query).scalar_one()
    engine.dispose()
    return count


def down(settings: Settings) -> Settings:
    """The same settings with PostgreSQL on a port nobody listens on."""
    url = make_url(settings.db_url).set(port=1).render_as_string(hide_password=False)
    return dataclasses.replace(settings, db_url=url)


def phase_settings(settings: Settings, phase: str) -> Settings:
    directory = settings.spool_dir / phase
    directory.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(settings, spool_dir=directory)


# ---- phases -----------------------------------------------------------------------------------


def submit_phase(settings: Settings, run: str, requests: int) -> None:
    records = list(halves(run, requests, offset=4 * requests))
    idle = {"flush_interval": 3600.0, "batch_size": len(records) + 1, "queue_max": len(records) + 1}
    settings = phase_settings(settings, "submit")
    writer = LogWriter(dataclasses.replace(down(settings), **idle))
    writer.start()
    started = time.perf_counter()
    for record in records:
        writer.submit(record)
    seconds = time.perf_counter() - started
    journal_bytes = sum(path.stat().st_size for path in settings.spool_dir.glob("journal-*.jsonl"))
    writer.stop(60)
    print(
        f"submit: {len(records)} records, submit() {len(records) / seconds:,.0f} records/s "
        f"({seconds / len(records) * 1e6:.1f} us each) with the writer thread idle; "
        f"journal {journal_bytes / 1e6:.1f} MB"
    )


def direct_phase(
    settings: Settings, run: str, requests: int, meter: Meter | None = None, split: bool = False
) -> Figures:
    """submit() every record, then flush(): rows/s from the first submit() to the flush."""
    phase = "split" if split else "insert"
    writer = LogWriter(phase_settings(settings, phase))
    writer.start()
    records = list(halves(run, requests, offset=requests if split else 0, split=split))

    def work() -> None:
        for record in records:
            writer.submit(record)
        if not writer.flush(600):
            print(f"{phase}: flush timed out")

    figures = (meter or Meter(None)).measure(phase, requests, work)
    writer.stop(60)
    print(figures.line())
    print(f"{phase}: stats {writer.stats()}")
    return figures


def drain_phase(settings: Settings, run: str, requests: int, meter: Meter) -> Figures:
    """The writer thread alone: every record queued before it starts, then start() and flush()."""
    records = list(halves(run, requests, offset=3 * requests))
    settings = dataclasses.replace(phase_settings(settings, "drain"), queue_max=len(records))
    writer = LogWriter(settings)
    for record in records:
        writer.submit(record)

    def work() -> None:
        writer.start()
        if not writer.flush(600):
            print("drain: flush timed out")

    figures = meter.measure("drain", requests, work)
    writer.stop(60)
    print(figures.line())
    print(f"drain: stats {writer.stats()}")
    return figures


def replay_phase(settings: Settings, run: str, requests: int, meter: Meter) -> Figures:
    settings = phase_settings(settings, "replay")
    spooling = LogWriter(down(settings))
    spooling.start()
    for record in halves(run, requests, offset=2 * requests):
        spooling.submit(record)
    spooling.stop(60)
    spool_bytes = sum(path.stat().st_size for path in settings.spool_dir.glob("pglog-*.jsonl"))
    print(f"replay: {spooling.stats()['spooled']} spooled records ({spool_bytes / 1e6:.1f} MB)")

    # A writer replays once its first wait for new records ends (flush_interval): not the
    # replay's cost, so that wait is kept short here.
    replaying = LogWriter(dataclasses.replace(settings, flush_interval=0.02))

    def work() -> None:
        replaying.start()
        while any(settings.spool_dir.glob("pglog-*.jsonl")):
            time.sleep(0.02)

    figures = meter.measure("replay", requests, work)
    replaying.stop(60)
    print(figures.line())
    print(f"replay: stats {replaying.stats()}")
    return figures


def run_phases(url: str, pg_data: Path | None, args: argparse.Namespace) -> dict[str, Figures]:
    upgrade_schema(url)
    meter = Meter(ClusterCpu(pg_data) if pg_data else None)
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
        results = {
            "insert": direct_phase(settings, run, args.requests, meter),
            "split": direct_phase(settings, run, args.requests, meter, split=True),
            "drain": drain_phase(settings, run, args.requests, meter),
            "replay": replay_phase(settings, run, args.requests, meter),
        }
    print(f"rows in requests for this run: {count_rows(url, run)} (expected {4 * args.requests})")
    return results


# ---- before / after ---------------------------------------------------------------------------


def run_baseline(source: Path, url: str, pg_data: Path, args: argparse.Namespace) -> dict[str, Figures]:
    """The same phases with the package in ``source``, in a child process; its figures."""
    command = [sys.executable, __file__, "--db-url", url, "--pg-data", str(pg_data), "--json"]
    command += ["--requests", str(args.requests), "--batch-size", str(args.batch_size)]
    command += ["--flush-interval", str(args.flush_interval), "--queue-max", str(args.queue_max)]
    environment = os.environ | {"PYTHONPATH": str(source.resolve())}
    output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
    results: dict[str, Figures] = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            figures = Figures(**json.loads(line.removeprefix("RESULT ")))
            results[figures.phase] = figures
        else:
            print(f"  [baseline] {line}")
    return results


def print_comparison(before: dict[str, Figures], after: dict[str, Figures]) -> None:
    print()
    print(f"{'phase':<8} {'rows/s before':>14} {'rows/s after':>13} {'x':>6}   PG CPU ms/row before -> after")
    for phase in PHASES:
        old, new = before[phase], after[phase]
        cpu = ""
        if old.pg_cpu_ms_per_row is not None and new.pg_cpu_ms_per_row is not None:
            cpu = f"{old.pg_cpu_ms_per_row:.4f} -> {new.pg_cpu_ms_per_row:.4f}"
        speedup = new.rows_per_second / old.rows_per_second
        print(
            f"{phase:<8} {old.rows_per_second:>14,.0f} {new.rows_per_second:>13,.0f} {speedup:>5.1f}x   {cpu}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db-url", default=os.environ.get("LITELLM_DB_URL"))
    parser.add_argument("--pg-data", type=Path, help="data directory of --db-url's cluster, for PG CPU")
    parser.add_argument(
        "--baseline-src", type=Path, help="package source to compare with (needs no --db-url)"
    )
    parser.add_argument("--requests", type=int, default=20_000, help="requests per phase (two records each)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--queue-max", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # for --baseline-src
    args = parser.parse_args()

    if args.db_url:
        print(f"database: {safe_url(args.db_url)}")
        results = run_phases(args.db_url, args.pg_data, args)
        if args.json:
            for figures in results.values():
                print("RESULT " + json.dumps(dataclasses.asdict(figures)))
        return 0
    with throwaway_cluster() as cluster:
        print(f"database: throwaway cluster (fsync=off) on port {cluster.port}")
        before = None
        if args.baseline_src:
            print(f"before: package from {args.baseline_src}")
            before = run_baseline(
                args.baseline_src, cluster.url_for(cluster.create_database()), cluster.data, args
            )
            print(f"after: package {Path(litellm_pglog.__file__).parent}")
        after = run_phases(cluster.url_for(cluster.create_database()), cluster.data, args)
        if before:
            print_comparison(before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
