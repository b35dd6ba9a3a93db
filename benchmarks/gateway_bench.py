#!/usr/bin/env python3
"""Cost of request logging: the real proxy with logging ON vs OFF, same stub upstream, same PostgreSQL.

ON  = ``litellm_pglog.asgi:app`` (middleware + usage callback + writer).
OFF = ``litellm.proxy.proxy_server:app`` with the same config minus our callback (custom_auth stays,
      so both runs authenticate the same way).
Both proxies run at the same time and are measured in alternating rounds (OFF, ON, OFF, ON, ...),
so background load on the machine hits both alike. Prints requests/s, p50 and p95 per run (all
rounds pooled), the ON/OFF ratio (pooled, and min/median/max of the rounds), the added p50, the
proxy's CPU per request (its process and workers, from /proc) and the writer's own rate from
benchmarks/writer_throughput.py. Figures only; nothing is asserted.

--baseline-src DIR adds a third proxy, "ON before", running the package source in DIR (e.g.
main's gateway/src): before and after in the same rounds.

Run from the repository root:
    PYTHONPATH=gateway/src python benchmarks/gateway_bench.py --requests 300 --rounds 3 --concurrency 8
The load generator shares the CPU with the proxies, the stub and PostgreSQL: compare ratios, not
absolute numbers, between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "gateway"), str(REPO / "benchmarks")]
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

from litellm_pglog.schema import upgrade_schema  # noqa: E402
from litellm_pglog.settings import Settings  # noqa: E402
from pgcluster import PgCluster  # noqa: E402 - test helpers, found through the path above
from proxy_harness import PLAIN_LITELLM_APP, PROXY_APP, Gateway, LogReader, Stub, chat_body  # noqa: E402
from writer_throughput import direct_phase  # noqa: E402 - the data layer's writer benchmark


@dataclass
class RunResult:
    label: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    cpu_seconds: float = 0.0
    round_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds * 1000 / self.requests

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(base_url: str, key: str, total: int, concurrency: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                index = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=chat_body(f"benchmark {index}"))
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (the uvicorn workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_SECOND


def measure_alternately(gateways: dict[str, Gateway], args: argparse.Namespace) -> dict[str, RunResult]:
    for gateway in gateways.values():
        asyncio.run(drive(gateway.base_url, gateway.keys.test_key, args.warmup, args.concurrency))
    results = {label: RunResult(label, 0, 0, 0.0, []) for label in gateways}
    for round_number in range(1, args.rounds + 1):
        order = list(gateways.items())
        if round_number % 2 == 0:
            order.reverse()  # alternate who goes first
        for label, gateway in order:
            cpu_before = process_tree_cpu(gateway.process.pid)
            seconds, latencies, errors = asyncio.run(
                drive(gateway.base_url, gateway.keys.test_key, args.requests, args.concurrency)
            )
            result = results[label]
            result.cpu_seconds += process_tree_cpu(gateway.process.pid) - cpu_before
            result.requests += args.requests
            result.errors += errors
            result.seconds += seconds
            result.latencies_ms += latencies
            result.round_rates.append(args.requests / seconds)
            print(f"round {round_number} {label:<16} {args.requests / seconds:7.1f} req/s", flush=True)
    return results


def print_report(results: dict[str, RunResult], logged_rows: int, expected_rows: int) -> None:
    print()
    header = (
        f"{'run':<16}{'requests':>10}{'errors':>8}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'CPU ms/req':>12}"
    )
    print(header)
    for result in results.values():
        print(
            f"{result.label:<16}{result.requests:>10}{result.errors:>8}{result.rate:>10.1f}"
            f"{result.percentile(0.5):>10.1f}{result.percentile(0.95):>10.1f}{result.cpu_ms_per_request:>12.2f}"
        )
    off = results["logging OFF"]
    for label, on in results.items():
        if label == off.label:
            continue
        ratios = sorted(a / b for a, b in zip(on.round_rates, off.round_rates, strict=True))
        print()
        print(f"{label}:")
        print(f"  throughput ON/OFF pooled {on.rate / off.rate:.3f}; rounds min / median / max "
              f"{ratios[0]:.3f} / {statistics.median(ratios):.3f} / {ratios[-1]:.3f}")  # fmt: skip
        print(f"  added CPU per request:  {on.cpu_ms_per_request - off.cpu_ms_per_request:+.2f} ms")
        print(f"  added p50:              {on.percentile(0.5) - off.percentile(0.5):+.1f} ms")
        print(f"  added p95:              {on.percentile(0.95) - off.percentile(0.95):+.1f} ms")
    print(f"rows logged (all ON proxies): {logged_rows} of {expected_rows} requests")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per round and proxy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per proxy")
    parser.add_argument("--stub-latency-ms", type=float, default=0)
    parser.add_argument("--writer-requests", type=int, default=10_000)
    parser.add_argument("--baseline-src", type=Path, help="package source for a third proxy, 'ON before'")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    cluster = PgCluster().create()
    stub = Stub(workdir, latency_ms=args.stub_latency_ms).start()
    gateways: dict[str, Gateway] = {}
    try:
        db_url = cluster.url_for(cluster.create_database())
        upgrade_schema(db_url)
        proxies = [("logging OFF", PLAIN_LITELLM_APP, {}), ("logging ON", PROXY_APP, {})]
        if args.baseline_src:
            source = str(args.baseline_src.resolve())
            proxies.append(("ON before", PROXY_APP, {"PYTHONPATH": source}))
        for label, app, env in proxies:
            directory = workdir / label.replace(" ", "-")
            gateway = Gateway(directory, stub, db_url, app=app, workers=args.workers, extra_env=env)
            gateways[label] = gateway.start()
        print(
            f"{args.rounds} rounds x {args.requests} requests per proxy at concurrency {args.concurrency}, "
            f"{args.workers} worker(s), stub latency {args.stub_latency_ms:g} ms; work dir {workdir}"
        )
        results = measure_alternately(gateways, args)
        for gateway in gateways.values():
            gateway.stop()  # SIGTERM: the ON proxies flush their writers
        reader = LogReader(db_url)
        logged_rows = reader.count()
        reader.dispose()
        logging_proxies = len(gateways) - 1
        print_report(results, logged_rows, logging_proxies * (args.rounds * args.requests + args.warmup))
        print()
        writer_db = cluster.url_for(cluster.create_database())
        upgrade_schema(writer_db)
        direct_phase(
            Settings(db_url=writer_db, spool_dir=workdir / "writer-spool"), "gw", args.writer_requests
        )
    finally:
        for gateway in gateways.values():
            gateway.stop()
        stub.stop()
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
