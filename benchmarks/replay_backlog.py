#!/usr/bin/env python3
"""Replay a big spool backlog (1 million records by default) into a throwaway PostgreSQL.

The backlog is written by the package's own spool code (``Spool.append`` + ``encode_line``),
in files of --file-records records, as writers that lived through a long outage leave it:
each request as two records (HTTP half, usage half). A new LogWriter then replays it; the
figures are wall time from its start until the last spool file is gone, rows/s, records/s
and the PostgreSQL CPU per request row (every process of the cluster, see pgcpu.py).

Before/after: run it once more with the old package first on the path, e.g.
    PYTHONPATH=/path/to/main/gateway/src python benchmarks/replay_backlog.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import litellm_pglog  # noqa: F401 - installed in the venv, or the old package on PYTHONPATH
except ImportError:  # running from a checkout
    sys.path.insert(0, str(REPO / "gateway" / "src"))

import litellm_pglog  # noqa: E402
from litellm_pglog.schema import upgrade_schema  # noqa: E402
from litellm_pglog.settings import Settings  # noqa: E402
from litellm_pglog.spool import SPOOL_GLOB, Spool, encode_line  # noqa: E402
from litellm_pglog.writer import LogWriter  # noqa: E402
from pgcpu import ClusterCpu, throwaway_cluster  # noqa: E402
from writer_throughput import count_rows, halves  # noqa: E402


def write_backlog(directory: Path, run: str, records: int, file_records: int) -> int:
    """Spool files holding ``records`` records (two per request); returns their size in bytes."""
    spool = Spool(directory, max_bytes=2**62)
    requests_per_file = file_records // 2
    for offset in range(0, records // 2, requests_per_file):
        count = min(requests_per_file, records // 2 - offset)
        spool.append([encode_line(record) for record in halves(run, count, offset)], sync=False)
        spool.seal()  # one file per writer that spooled: the next append starts a new one
    return sum(path.stat().st_size for path in directory.glob(SPOOL_GLOB))


def replay(settings: Settings, cpu: ClusterCpu) -> tuple[float, float, dict[str, int]]:
    """Seconds from a new writer's start until the spool is empty, PostgreSQL CPU seconds, stats.

    The CPU is read before stop(): a backend that just exited is not yet in its parent's count.
    """
    writer = LogWriter(settings)
    cpu_before = cpu.seconds()
    started = time.perf_counter()
    writer.start()
    while any(settings.spool_dir.glob(SPOOL_GLOB)):
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    cpu_seconds = cpu.seconds() - cpu_before
    writer.stop(60)
    return seconds, cpu_seconds, writer.stats()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--records", type=int, default=1_000_000, help="records in the backlog (2 per request)"
    )
    parser.add_argument("--file-records", type=int, default=100_000, help="records per spool file")
    args = parser.parse_args()

    print(f"package: {Path(litellm_pglog.__file__).parent}")
    run = "backlog"
    with throwaway_cluster() as cluster, tempfile.TemporaryDirectory(prefix="pglog-backlog-") as spool:
        url = cluster.url
        upgrade_schema(url)
        started = time.perf_counter()
        size = write_backlog(Path(spool), run, args.records, args.file_records)
        print(
            f"backlog: {args.records:,} records ({args.records // 2:,} requests), {size / 1e6:.0f} MB "
            f"in {len(list(Path(spool).glob(SPOOL_GLOB)))} spool files, written in "
            f"{time.perf_counter() - started:.1f} s"
        )
        seconds, cpu_seconds, stats = replay(
            Settings(db_url=url, spool_dir=Path(spool)), ClusterCpu(cluster.data)
        )
        cpu_ms_per_row = cpu_seconds * 1000 / (args.records // 2)
        rows = count_rows(url, run)
        print(
            f"replay: {seconds:.1f} s elapsed, {rows / seconds:,.0f} rows/s, {args.records / seconds:,.0f} "
            f"records/s, PostgreSQL CPU {cpu_ms_per_row:.4f} ms/row"
        )
        print(f"replay: stats {stats}")
        print(f"rows in requests: {rows:,} (expected {args.records // 2:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
