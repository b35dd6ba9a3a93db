#!/usr/bin/env python3
"""CPU of the request-log writer per batch (its PostgreSQL backend, its own process) and of a
fleet of writers (PostgreSQL by process), in the deployed lab.

The writer's own code path (``DatabaseSink.write_rows``: pool pre-ping, COPY into the staging
table, the prepared merge, commit) runs on the gateway host with the gateway's venv and database
URL (read there, never printed), against the lab's PostgreSQL with everything production has:
TLS, fsync, pgAudit, a streaming standby, WAL archiving. For each batch size, the CPU time of
that one backend (/proc on the database host) and the writer's own CPU in the gateway host's
process (the rows are made first) are read before and after, and a least-squares line splits
each into a fixed cost per batch and a cost per request. From those two figures follows
what a flush interval costs per request at a given rate per writer: fixed / (rate x interval)
+ per request, which is how ``litellm_gateway_flush_interval`` was chosen. The fleet part runs
``LogWriter``s, the gateway's class, each fed at a steady rate; every request is counted back.

The probe's rows carry api_key PROBE_KEY and are deleted at the end.

    scripts/lab-batch-cost [--sizes 1,10,25,50,100,200] [--rows 2000] [--fleet-writers 30] ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labctl as lab  # noqa: E402

PROBE_KEY = "lab-batch-cost-probe"
VENV_PYTHON = "/opt/litellm/venv/bin/python"  # inventory/lab: litellm_gateway_venv
ENV_FILE = "/etc/litellm/litellm.env"  # litellm_gateway_config_dir/litellm.env
# Runs on the gateway host; prints its backend's pid, then answers one line per command on stdin:
#   "SIZE COUNT"   COUNT batches of SIZE requests (both halves, merged as the gateway's are) ->
#                  "done CPU_SECONDS" (the writer's own, rows made beforehand)
#   "fleet W RATE SECONDS FLUSH KEY"  W LogWriters started -> "ready"; after "go", RATE requests/s
#                  each for SECONDS, flushed -> "done SENT ROWS UNSETTLED SECONDS"; after "stop" the
#                  writers stop -> "done"
#   "delete"       the probe's rows deleted -> "done"
REMOTE = f"""
import shlex, shutil, sys, tempfile, time
from pathlib import Path
from sqlalchemy import text
from litellm_pglog.db import make_engine
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.records import LogRecord, new_request_id
from litellm_pglog.settings import Settings
from litellm_pglog.sink import DatabaseSink, clean_values
from litellm_pglog.writer import LogWriter
env = dict(line.rstrip("\\n").split("=", 1) for line in open({ENV_FILE!r}) if "=" in line and line[0] != "#")
url = shlex.split(env["LITELLM_DB_URL"])[0]
engine = make_engine(url, timeout=10, statement_timeout=10, pool_size=1, max_overflow=0)
sink = DatabaseSink(engine, WriterMetrics(), lambda *args: None, 10)
with engine.connect() as connection:
    print(connection.execute(text("SELECT pg_backend_pid()")).scalar(), flush=True)
HTTP = dict(route="/v1/chat/completions", method="POST", status_code=200, stream=False, latency_ms=21.5)
USAGE = dict(model="gpt-4o-mini", user_id="lab-probe", prompt_tokens=30, completion_tokens=12,
             total_tokens=42)
def halves(key):
    # What the middleware (HTTP exchange) and the LiteLLM callback (usage) submit of one request.
    request_id, _ = new_request_id()
    return LogRecord(request_id=request_id, api_key=key, **HTTP), LogRecord(request_id=request_id, **USAGE)
def batches(size, count):
    # Rows are made (and cleaned, as submit() does) first: the CPU returned is the writer's alone.
    made = [[clean_values(half) for _ in range(size) for half in halves({PROBE_KEY!r})] for _ in range(count)]
    started = time.process_time()
    for rows in made:
        sink.write_rows(rows)
    return time.process_time() - started
def fleet(writers, rate, seconds, flush, key):
    # writers LogWriters (the gateway's own class and defaults but the flush interval), each fed
    # rate requests/s, paced in 20 ms steps for seconds; the host measures between ready and done.
    spool = Path(tempfile.mkdtemp(prefix="lab-fleet-"))
    settings = [Settings(db_url=url, spool_dir=spool / str(n), flush_interval=flush) for n in range(writers)]
    fleet = [LogWriter(one) for one in settings]
    for writer in fleet:
        writer.start()
    print("ready", flush=True)
    sys.stdin.readline()
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate * writers)
        for n in range(sent, due):
            for half in halves(key):
                fleet[n % writers].submit(half)
        sent = due
        time.sleep(0.02)
    for writer in fleet:
        writer.flush(60)
    unsettled = sum(writer.stats()["dropped"] + writer.stats()["spooled"] for writer in fleet)
    took = time.monotonic() - start
    with engine.connect() as connection:
        count = text("SELECT count(*) FROM requests WHERE api_key = :key")
        rows = connection.execute(count, {{"key": key}}).scalar()
    # Still connected: backends that end inside the host's window would hide in "ended".
    print(f"done {{sent}} {{rows}} {{unsettled}} {{took:.2f}}", flush=True)
    sys.stdin.readline()
    for writer in fleet:
        writer.stop(60)
    shutil.rmtree(spool, ignore_errors=True)
while command := sys.stdin.readline().split():
    if command[0] == "delete":
        with engine.begin() as connection:
            delete = text("DELETE FROM requests WHERE api_key LIKE :key")
            connection.execute(delete, {{"key": {PROBE_KEY!r} + "%"}})
    elif command[0] == "fleet":
        fleet(int(command[1]), float(command[2]), float(command[3]), float(command[4]), command[5])
    else:
        print("done", batches(int(command[0]), int(command[1])), flush=True)
        continue
    print("done", flush=True)
"""


@dataclass(frozen=True)
class Point:
    size: int
    batches: int
    backend_ms: float  # per batch
    cluster_ms: float  # per batch, every PostgreSQL process (WAL sender, archiver, ... included)
    writer_ms: float  # per batch, the writer's own CPU in the gateway host's Python process


class RemoteWriter:
    """The probe process on the gateway host, driven line by line."""

    def __init__(self) -> None:
        argv = ["docker", "exec", "-i", lab.GATEWAY_HOST, VENV_PYTHON, "-c", REMOTE]
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.backend_pid = self._read()

    def _read(self) -> str:
        line = self._process.stdout.readline().strip()
        if not line:
            raise lab.LabError(f"the probe on {lab.GATEWAY_HOST} stopped (exit {self._process.wait()})")
        return line

    def send(self, line: str) -> None:
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def expect(self, word: str) -> list[str]:
        """The fields after ``word`` of the probe's next line."""
        answer = self._read().split()
        if answer[0] != word:
            raise lab.LabError(f"the probe answered {answer[0]!r} instead of {word!r}")
        return answer[1:]

    def command(self, line: str) -> list[str]:
        self.send(line)
        return self.expect("done")

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)


def backend_seconds(pid: str) -> float:
    stat = lab.docker_exec(lab.POSTGRES_HOST, ["cat", f"/proc/{pid}/stat"])
    fields = stat[stat.rindex(")") + 2 :].split()
    # Containers share this machine's kernel, and so its clock ticks per second.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(writer: RemoteWriter, size: int, rows: int) -> Point:
    batches = max(10, rows // size)
    backend, cluster = backend_seconds(writer.backend_pid), lab.cpu_seconds()["postgres"]
    (writer_seconds,) = writer.command(f"{size} {batches}")
    backend = backend_seconds(writer.backend_pid) - backend
    cluster = lab.cpu_seconds()["postgres"] - cluster
    per_batch = [1000 * seconds / batches for seconds in (backend, cluster, float(writer_seconds))]
    return Point(size, batches, *per_batch)


@dataclass(frozen=True)
class FleetRun:
    """Writers at a steady rate each, the gateway's LogWriter with one flush interval."""

    flush: float
    sent: int  # requests (two halves each)
    rows: int  # request rows found afterwards
    unsettled: int  # records the writers spooled or dropped instead of writing
    seconds: float
    parts: dict[str, float]  # PostgreSQL CPU seconds by part (labctl.postgres_cpu_parts)


def fleet(writer: RemoteWriter, writers: int, rate: float, seconds: float, flush: float) -> FleetRun:
    key = f"{PROBE_KEY}-fleet-{time.time_ns()}"
    writer.send(f"fleet {writers} {rate} {seconds} {flush} {key}")
    writer.expect("ready")
    before, cluster = lab.postgres_processes(), lab.cpu_seconds()["postgres"]
    writer.send("go")
    sent, rows, unsettled, took = writer.expect("done")
    after, cluster = lab.postgres_processes(), lab.cpu_seconds()["postgres"] - cluster
    writer.command("stop")
    parts = lab.postgres_cpu_parts(before, after, cluster)
    return FleetRun(flush, int(sent), int(rows), int(unsettled), float(took), parts)


def fleet_report(runs: list[FleetRun], writers: int, rate: float) -> None:
    print(f"\nfleet: {writers} writers x {rate:g} requests/s each, PostgreSQL CPU ms per logged request")
    print("| part | " + " | ".join(f"flush {run.flush:g} s" for run in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for part in dict.fromkeys(part for run in runs for part in run.parts):
        print(
            f"| {part} | "
            + " | ".join(f"{1000 * run.parts.get(part, 0) / run.sent:.4f}" for run in runs)
            + " |"
        )
    print(
        "| **all of PostgreSQL** | "
        + " | ".join(f"**{1000 * sum(run.parts.values()) / run.sent:.4f}**" for run in runs)
        + " |"
    )
    print("| requests/s | " + " | ".join(f"{run.sent / run.seconds:.0f}" for run in runs) + " |")
    print("| rows found / sent | " + " | ".join(f"{run.rows} / {run.sent}" for run in runs) + " |")
    print("| records spooled or dropped | " + " | ".join(str(run.unsettled) for run in runs) + " |")


def fit(points: list[Point], value: str) -> tuple[float, float]:
    """Least squares: ms per batch = fixed + per_request x size; returns (fixed, per_request)."""
    slope, intercept = statistics.linear_regression(
        [p.size for p in points], [getattr(p, value) for p in points]
    )
    return intercept, slope


PARTS = (
    ("backend_ms", "PostgreSQL: the writer's backend"),
    ("cluster_ms", "PostgreSQL: all of it"),
    ("writer_ms", "gateway host: the writer's Python (pool, COPY, merge, commit)"),
)


def report(points: list[Point], rates: list[float], intervals: list[float]) -> None:
    print("ms of CPU per batch (per request), by requests per batch:")
    print("| requests per batch | batches | " + " | ".join(name for _, name in PARTS) + " |")
    print("|---|---|" + "---|" * len(PARTS))
    for p in points:
        cells = " | ".join(
            f"{getattr(p, value):.3f} ({getattr(p, value) / p.size:.4f})" for value, _ in PARTS
        )
        print(f"| {p.size} | {p.batches} | {cells} |")
    for value, name in PARTS:
        fixed, per_row = fit(points, value)
        print(f"\n{name}: {fixed:.3f} ms per batch + {per_row:.4f} ms per request (least squares)")
        print("| requests/s per writer | " + " | ".join(f"flush {i:g} s" for i in intervals) + " |")
        print("|---|" + "---|" * len(intervals))
        for rate in rates:
            cells = " | ".join(f"{fixed / max(1.0, rate * i) + per_row:.3f}" for i in intervals)
            print(f"| {rate:g} | {cells} |")
    print("\n(ms of CPU per request: fixed / (rate x interval) + per request; a batch holds at least one)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,10,25,50,100,200", help="batch sizes (requests per batch)")
    parser.add_argument("--rows", type=int, default=2000, help="requests per batch size (default 2000)")
    parser.add_argument("--rates", default="25,50,100,200", help="requests/s per writer for the table")
    parser.add_argument("--intervals", default="0.5,1,2", help="flush intervals (s) for the table")
    parser.add_argument("--fleet-writers", type=int, default=30, help="writers of the fleet run (0: none)")
    parser.add_argument("--fleet-rate", type=float, default=50, help="requests/s per writer in the fleet run")
    parser.add_argument("--fleet-seconds", type=float, default=60, help="length of each fleet run")
    parser.add_argument("--fleet-flush", default="0.5,1", help="flush intervals (s) of the fleet runs")
    args = parser.parse_args()
    lab.require_deployed_lab()
    sizes = [int(size) for size in args.sizes.split(",")]
    if len(sizes) < 2 or min(sizes) < 1:
        sys.exit("--sizes needs at least two sizes of at least 1")
    writer = RemoteWriter()
    try:
        writer.command("5 20")  # warm up: the connection's staging table and prepared merges
        points = [measure(writer, size, args.rows) for size in sizes]
        runs = [
            fleet(writer, args.fleet_writers, args.fleet_rate, args.fleet_seconds, float(flush))
            for flush in args.fleet_flush.split(",")
            if args.fleet_writers > 0
        ]
        writer.command("delete")
    finally:
        writer.close()
    print(f"lab: {lab.machine_description()}")
    report(points, [float(r) for r in args.rates.split(",")], [float(i) for i in args.intervals.split(",")])
    if runs:
        fleet_report(runs, args.fleet_writers, args.fleet_rate)
    lost = [run for run in runs if run.rows != run.sent or run.unsettled]
    if lost:
        sys.exit(f"FAILED: {len(lost)} fleet run(s) did not write every request exactly once")


if __name__ == "__main__":
    main()
