#!/usr/bin/env python3
"""Runbook Part 5 at scale against the deployed lab gateway, database logging ON and OFF.

For each mode (ON = as deployed; OFF = LITELLM_PGLOG_ENABLED=false through a systemd drop-in) the
gateway is restarted, warmed up, then measured twice:

1. the runbook's ``ab`` command at scale (default 10,000 requests, concurrency 50, no keep-alive):
   requests/s, p50/p95/p99, errors, and the rows that reached ``requests`` in the run's time window;
2. a sequential latency probe (concurrency 1, keep-alive, sub-millisecond clock): the per-request
   cost of logging, which the queueing delay at concurrency 50 (p50 ~ 50 / throughput) hides.

Prints the ON/OFF throughput ratio and the added p50 of both, writes results/load-<time>.md,
.json and a latency PNG. Figures only; nothing is asserted. Run it through scripts/lab-load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import labctl as lab
import report
from loadgen import LoadGenerator

WARMUP_REQUESTS = 200
WINDOW_GAP_SECONDS = 2.0


@dataclass
class AbRun:
    requests: int
    complete: int
    failed: int
    non_2xx: int
    seconds: float
    rate: float
    p50: float
    p95: float
    p99: float
    started: float
    ended: float
    latencies_ms: list[float] = field(repr=False)
    rows: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.failed + self.non_2xx


@dataclass
class Probe:
    requests: int
    errors: int
    p50: float
    p95: float
    p99: float
    latencies_ms: list[float] = field(repr=False)


def run_ab(requests: int, concurrency: int, workdir: Path) -> AbRun:
    payload = workdir / "test_payload.json"
    payload.write_text(json.dumps(lab.chat_payload(), indent=2))
    gnuplot = workdir / "ab.tsv"
    # ab only takes headers as arguments: the lab's TEST_KEY is visible in this machine's `ps`
    # for the duration of the run (lab-generated key; the lab hosts never see it in a command line).
    command = [
        "ab", "-q", "-n", str(requests), "-c", str(concurrency), "-s", "60",
        "-T", "application/json", "-H", f"Authorization: Bearer {lab.test_key()}",
        "-p", str(payload), "-g", str(gnuplot), f"{lab.GATEWAY_URL}{lab.CHAT_PATH}",
    ]  # fmt: skip
    started = time.time()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    ended = time.time()

    def number(label: str, default: str | None = None) -> float:
        match = re.search(rf"^{re.escape(label)}:?\s+([0-9.]+)", out, re.MULTILINE)
        if match is None and default is None:
            raise RuntimeError(f"ab output has no {label!r}:\n{out}")
        return float(match.group(1) if match else default)

    latencies = [float(line.split("\t")[4]) for line in gnuplot.read_text().splitlines()[1:] if line.strip()]
    return AbRun(
        requests=requests,
        complete=int(number("Complete requests")),
        failed=int(number("Failed requests")),
        non_2xx=int(number("Non-2xx responses", "0")),
        seconds=number("Time taken for tests"),
        rate=number("Requests per second"),
        p50=number("  50%"),
        p95=number("  95%"),
        p99=number("  99%"),
        started=started,
        ended=ended,
        latencies_ms=latencies,
    )


async def drive(concurrency: int, total: int, keepalive: bool = True) -> list:
    generator = LoadGenerator(
        lab.GATEWAY_URL, lab.test_key(), lab.chat_payload(), concurrency, total=total, keepalive=keepalive
    )
    return await generator.run()


def probe(total: int) -> Probe:
    samples = asyncio.run(drive(1, total))
    latencies = [s.latency_ms for s in samples if s.status == 200]
    return Probe(
        requests=len(samples),
        errors=len(samples) - len(latencies),
        p50=lab.percentile(latencies, 0.50),
        p95=lab.percentile(latencies, 0.95),
        p99=lab.percentile(latencies, 0.99),
        latencies_ms=latencies,
    )


def measure(mode: str, args: argparse.Namespace, workdir: Path) -> tuple[AbRun, Probe]:
    print(f"\n== logging {mode}: warm-up {WARMUP_REQUESTS} requests", flush=True)
    asyncio.run(drive(10, WARMUP_REQUESTS))
    time.sleep(WINDOW_GAP_SECONDS)  # keeps warm-up rows out of the ab run's time window
    print(f"== logging {mode}: ab -n {args.requests} -c {args.concurrency}", flush=True)
    cpu_before = lab.cpu_seconds()
    ab = run_ab(args.requests, args.concurrency, workdir)
    cpu_after = lab.cpu_seconds()
    ab.cpu_seconds = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    cpu = ", ".join(f"{name} {1000 * used / ab.complete:.2f}" for name, used in ab.cpu_seconds.items())
    print(
        f"   {ab.rate:.1f} requests/s, p50 {ab.p50:.0f} ms, p95 {ab.p95:.0f} ms, p99 {ab.p99:.0f} ms, "
        f"errors {ab.errors} (failed {ab.failed}, non-2xx {ab.non_2xx}); CPU ms/request: {cpu}",
        flush=True,
    )
    time.sleep(WINDOW_GAP_SECONDS)
    print(f"== logging {mode}: latency probe, {args.probe_requests} sequential requests", flush=True)
    latency = probe(args.probe_requests)
    print(f"   p50 {latency.p50:.2f} ms, p95 {latency.p95:.2f} ms, errors {latency.errors}", flush=True)
    return ab, latency


def switch_to(mode: str) -> None:
    """A fresh gateway process in the wanted mode (ON = as deployed)."""
    if mode == "OFF":
        lab.apply_gateway_env({"LITELLM_PGLOG_ENABLED": "false"})
    elif not lab.restore():
        lab.restart_gateway()


def run(args: argparse.Namespace) -> dict[str, list[tuple[AbRun, Probe]]]:
    runs: dict[str, list[tuple[AbRun, Probe]]] = {"ON": [], "OFF": []}
    with tempfile.TemporaryDirectory(prefix="lab-load-") as tmp:
        try:
            for round_number in range(1, args.rounds + 1):
                for mode in runs:
                    print(f"\n=== round {round_number}/{args.rounds}, logging {mode}", flush=True)
                    switch_to(mode)
                    runs[mode].append(measure(mode, args, Path(tmp)))
        finally:
            lab.restore()
    print("\n== counting rows logged in each ab run's time window (waiting for the writer)", flush=True)
    for mode, measured in runs.items():
        for ab, _ in measured:
            expected = ab.complete if mode == "ON" else 0
            ab.rows = lab.wait_for_window_rows(ab.started, ab.ended, expected, timeout=90 if expected else 5)
    return runs


@dataclass
class ModeSummary:
    """All rounds of one mode pooled."""

    requests: int
    errors: int
    rate: float
    p50: float
    p95: float
    p99: float
    rows: int
    distinct: int
    probe_p50: float
    probe_p95: float
    cpu_ms_per_request: dict[str, float]

    @classmethod
    def of(cls, measured: list[tuple[AbRun, Probe]]) -> ModeSummary:
        runs = [ab for ab, _ in measured]
        latencies = [value for ab in runs for value in ab.latencies_ms]
        probe_latencies = [value for _, p in measured for value in p.latencies_ms]
        complete = sum(ab.complete for ab in runs)
        return cls(
            requests=complete,
            errors=sum(ab.errors for ab in runs),
            rate=complete / sum(ab.seconds for ab in runs),
            p50=lab.percentile(latencies, 0.50),
            p95=lab.percentile(latencies, 0.95),
            p99=lab.percentile(latencies, 0.99),
            rows=sum(ab.rows["rows"] for ab in runs),
            distinct=sum(ab.rows["distinct"] for ab in runs),
            probe_p50=lab.percentile(probe_latencies, 0.50),
            probe_p95=lab.percentile(probe_latencies, 0.95),
            cpu_ms_per_request={
                name: 1000 * sum(ab.cpu_seconds[name] for ab in runs) / complete
                for name in runs[0].cpu_seconds
            },
        )


def summarize(args: argparse.Namespace, runs: dict[str, list[tuple[AbRun, Probe]]]) -> tuple[str, dict]:
    modes = {mode: ModeSummary.of(measured) for mode, measured in runs.items()}
    on, off = modes["ON"], modes["OFF"]
    ratio = on.rate / off.rate
    added_ab = on.p50 - off.p50
    added_probe = on.probe_p50 - off.probe_p50
    header = [
        "logging", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "rows logged",
        "distinct ids", "c=1 p50 ms", "c=1 p95 ms", "CPU ms/req gateway", "CPU ms/req PostgreSQL",
    ]  # fmt: skip
    rows = [
        [mode, m.requests, f"{m.rate:.1f}", f"{m.p50:.0f}", f"{m.p95:.0f}", f"{m.p99:.0f}", m.errors,
         m.rows, m.distinct, f"{m.probe_p50:.2f}", f"{m.probe_p95:.2f}",
         f"{m.cpu_ms_per_request['gateway']:.2f}", f"{m.cpu_ms_per_request['postgres']:.2f}"]
        for mode, m in modes.items()
    ]  # fmt: skip
    round_rows = [
        [number + 1, mode, f"{ab.rate:.1f}", f"{ab.p50:.0f}", f"{p.p50:.2f}", ab.rows["rows"], ab.errors]
        for mode, measured in runs.items()
        for number, (ab, p) in enumerate(measured)
    ]
    lost = on.requests - on.rows
    markdown = "\n\n".join(
        [
            "# Lab load test: runbook Part 5 at scale, logging ON vs OFF",
            f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {lab.machine_description()}; "
            f"gateway {lab.GATEWAY_URL} ({lab.gateway_workers()} uvicorn workers), "
            f"model {lab.MODEL} on the lab stub; "
            f"{args.rounds} round(s) of ON then OFF, each on a freshly restarted gateway after "
            f"{WARMUP_REQUESTS} warm-up requests.",
            f"Per mode and round: `ab -n {args.requests} -c {args.concurrency} -T application/json"
            f" -H 'Authorization: Bearer TEST_KEY' -p test_payload.json {lab.GATEWAY_URL}{lab.CHAT_PATH}`"
            f" (the runbook's command at scale), then {args.probe_requests} sequential requests"
            " (concurrency 1, keep-alive, sub-ms clock) for the per-request cost of logging. CPU ms/req: "
            "CPU time of the service's cgroup during the ab run divided by its requests.",
            report.table(header, rows),
            report.table(
                ["round", "logging", "req/s", "p50 ms", "c=1 p50 ms", "rows logged", "errors"], round_rows
            ),
            report.table(
                ["figure", "value"],
                [
                    ["throughput ratio ON/OFF (ab, c=50)", f"{ratio:.3f}"],
                    ["added p50 at c=50 (ab, queueing included)", f"{added_ab:+.0f} ms"],
                    ["added p50 at c=1 (per-request cost of logging)", f"{added_probe:+.2f} ms"],
                    ["rows logged vs requests sent (ON)", f"{on.rows} / {on.requests}"],
                    ["lost rows (ON)", lost],
                    ["duplicated rows (ON)", on.rows - on.distinct],
                    ["rows logged with logging OFF (expected 0)", off.rows],
                ],
            ),
            f"![latency](load-{args.stamp}.png)",
        ]
    )
    data = {
        "args": vars(args),
        "machine": lab.machine_description(),
        "ratio": ratio,
        "added_p50_ab_ms": added_ab,
        "added_p50_c1_ms": added_probe,
        "lost": lost,
        "modes": {mode: asdict(m) for mode, m in modes.items()},
        "rounds": {
            mode: [
                {"ab": {k: v for k, v in asdict(ab).items() if k != "latencies_ms"},
                 "probe": {k: v for k, v in asdict(p).items() if k != "latencies_ms"}}
                for ab, p in measured
            ]
            for mode, measured in runs.items()
        },
    }  # fmt: skip
    return markdown, data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="ab -n (default 10000)")
    parser.add_argument("--concurrency", type=int, default=50, help="ab -c (default 50)")
    parser.add_argument("--probe-requests", type=int, default=1000, help="sequential latency probe size")
    parser.add_argument("--rounds", type=int, default=2, help="ON/OFF rounds (default 2)")
    args = parser.parse_args()
    args.stamp = report.stamp()
    lab.require_deployed_lab()
    runs = run(args)
    markdown, data = summarize(args, runs)
    png = report.latency_cdf_plot(
        lab.RESULTS / f"load-{args.stamp}.png",
        f"Lab gateway latency, logging ON vs OFF ({lab.machine_description()})",
        [
            (
                f"ab -n {args.requests} -c {args.concurrency}",
                {m: [v for ab, _ in r for v in ab.latencies_ms] for m, r in runs.items()},
            ),
            (
                "sequential probe, concurrency 1",
                {m: [v for _, p in r for v in p.latencies_ms] for m, r in runs.items()},
            ),
        ],
    )
    path = report.write(f"load-{args.stamp}", markdown, data)
    print("\n" + markdown.split("\n\n", 3)[3])
    print(f"\nreport: {path}\nplot:   {png}")


if __name__ == "__main__":
    main()
