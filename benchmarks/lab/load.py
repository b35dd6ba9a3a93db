#!/usr/bin/env python3
"""Runbook Part 5 at scale against the deployed lab gateway, database logging ON and OFF.

For each worker count (default ``--workers-list 1,vcpus``: one uvicorn worker, and one per vCPU
of the gateway host as its ``nproc`` says; the duplicate is skipped when that is 1) and each of
``--rounds`` rounds (default 5), the gateway is restarted in each mode (ON = logging as deployed,
OFF = LITELLM_PGLOG_ENABLED=false), both through a systemd drop-in that also sets the worker
count (the deployed unit's ExecStart with only its --workers value replaced). ON/OFF order
alternates per round (ON first in odd rounds) so that drift cancels. Each mode is warmed up,
then measured twice:

1. the runbook's ``ab`` command at scale (default 4,000 requests, concurrency 50, no keep-alive):
   requests/s, p50/p95/p99, errors, the CPU time of the gateway and PostgreSQL cgroups, and the
   rows that reached ``requests`` in the run's time window (ON: expected = requests, 0 lost/dup);
2. a sequential latency probe (concurrency 1, keep-alive, sub-millisecond clock): the per-request
   cost of logging, which the queueing delay at concurrency 50 (p50 ~ 50 / throughput) hides.

Per worker count: the ON/OFF throughput ratio (per round: ON req/s / OFF req/s of that round)
min/median/max, the added p50 at concurrency 1, gateway and PostgreSQL CPU ms/request ON and OFF
(medians) and what logging adds to each (per round: ON minus OFF of that round, min/median/max),
PostgreSQL's split by process. Writes results/load-<time>.md, .json and a
latency PNG. Figures only; nothing is asserted. Run it through scripts/lab-load.

Then ``--twin-rounds`` (default 6) at the largest worker count: both lab gateways loaded at the
same time, one ON and one OFF, swapped every round (``twin.py``): ON and OFF under the same
machine state, which the sequential rounds cannot give on a shared VM.

Duration, estimated (not timed) on the 2-vCPU lab with the defaults: per mode and round a restart
(10-20 s), warm-up and gaps (~6 s), ab (4,000 requests: ~32 s at 1 worker, ~20 s at 2) and the
probe (1,000 sequential requests, ~10-15 s): ~60 s, x 2 modes x 5 rounds x 2 worker counts
= about 20 minutes; a twin round restarts both gateways (~30 s) and runs ab for 30 s: ~75 s,
x 6 = about 8 minutes; plus up to a few minutes waiting for rows at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import labctl as lab
import report
import twin
from ab import AbRun, run_ab
from report import spread, spread_text


@dataclass
class Probe:
    requests: int
    errors: int
    p50: float
    p95: float
    p99: float
    latencies_ms: list[float] = field(repr=False)


def probe(total: int) -> Probe:
    samples = asyncio.run(lab.drive(1, total))
    latencies = [s.latency_ms for s in samples if s.status == 200]
    return Probe(
        requests=len(samples),
        errors=len(samples) - len(latencies),
        p50=lab.percentile(latencies, 0.50),
        p95=lab.percentile(latencies, 0.95),
        p99=lab.percentile(latencies, 0.99),
        latencies_ms=latencies,
    )


def measure(label: str, args: argparse.Namespace, workdir: Path) -> tuple[AbRun, Probe]:
    print(f"== {label}: warm-up {lab.WARMUP_REQUESTS} requests", flush=True)
    asyncio.run(lab.drive(10, lab.WARMUP_REQUESTS))
    time.sleep(lab.WINDOW_GAP_SECONDS)  # keeps warm-up rows out of the ab run's time window
    print(f"== {label}: ab -n {args.requests} -c {args.concurrency}", flush=True)
    cpu_before, processes_before = lab.cpu_seconds(), lab.postgres_processes()
    ab = run_ab(args.requests, args.concurrency, workdir)
    cpu_after, processes_after = lab.cpu_seconds(), lab.postgres_processes()
    ab.cpu_seconds = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    ab.postgres_parts = lab.postgres_cpu_parts(processes_before, processes_after, ab.cpu_seconds["postgres"])
    cpu = ", ".join(f"{name} {1000 * used / ab.complete:.2f}" for name, used in ab.cpu_seconds.items())
    parts = ", ".join(f"{name} {1000 * used / ab.complete:.3f}" for name, used in ab.postgres_parts.items())
    print(
        f"   {ab.rate:.1f} requests/s, p50 {ab.p50:.0f} ms, p95 {ab.p95:.0f} ms, p99 {ab.p99:.0f} ms, "
        f"errors {ab.errors} (failed {ab.failed}, non-2xx {ab.non_2xx}); CPU ms/request: {cpu}",
        flush=True,
    )
    print(f"   PostgreSQL CPU ms/request by part: {parts}", flush=True)
    time.sleep(lab.WINDOW_GAP_SECONDS)
    print(f"== {label}: latency probe, {args.probe_requests} sequential requests", flush=True)
    latency = probe(args.probe_requests)
    print(f"   p50 {latency.p50:.2f} ms, p95 {latency.p95:.2f} ms, errors {latency.errors}", flush=True)
    return ab, latency


@dataclass
class Measured:
    """One mode of one round at one worker count."""

    workers: int
    round: int
    mode: str
    ab: AbRun
    probe: Probe

    def cpu_ms(self, name: str) -> float:
        """CPU ms per completed ab request of one service (gateway, postgres, stub)."""
        return 1000 * self.ab.cpu_seconds[name] / self.ab.complete if self.ab.complete else float("nan")

    @property
    def lost(self) -> int:
        return self.ab.complete - self.ab.rows.get("distinct", 0) if self.mode == "ON" else 0

    @property
    def duplicated(self) -> int:
        return self.ab.rows.get("rows", 0) - self.ab.rows.get("distinct", 0)

    def record(self) -> dict:
        """JSON form, without the raw latencies."""

        def strip(obj: object) -> dict:
            return {k: v for k, v in asdict(obj).items() if k != "latencies_ms"}

        return {"workers": self.workers, "round": self.round, "mode": self.mode,
                "ab": strip(self.ab), "probe": strip(self.probe),
                "lost": self.lost, "duplicated": self.duplicated}  # fmt: skip


def worker_counts(spec: str, vcpus: int) -> list[int]:
    """``--workers-list`` ("1,vcpus") as distinct counts in order; "vcpus" is the gateway's nproc."""
    counts: list[int] = []
    for item in spec.split(","):
        count = vcpus if item.strip() == "vcpus" else int(item)
        if not 1 <= count <= lab.MAX_WORKERS:
            raise ValueError(f"worker count out of range: {item!r}")
        if count not in counts:
            counts.append(count)
    return counts


def mode_order(round_number: int) -> tuple[str, str]:
    """ON first in odd rounds, OFF first in even ones: drift cancels over the rounds."""
    return ("ON", "OFF") if round_number % 2 else ("OFF", "ON")


def switch_to(mode: str, workers: int) -> None:
    """A fresh gateway process in the wanted mode (ON = logging as deployed) and worker count."""
    lab.apply_gateway_env({"LITELLM_PGLOG_ENABLED": "false"} if mode == "OFF" else {}, workers)


def run(args: argparse.Namespace) -> tuple[list[Measured], list[twin.TwinRound]]:
    measured: list[Measured] = []
    twins: list[twin.TwinRound] = []
    with tempfile.TemporaryDirectory(prefix="lab-load-") as tmp:
        try:
            for workers in args.worker_counts:
                for number in range(1, args.rounds + 1):
                    for mode in mode_order(number):
                        label = f"workers {workers}, round {number}/{args.rounds}, logging {mode}"
                        print(f"\n=== {label}", flush=True)
                        switch_to(mode, workers)
                        measured.append(Measured(workers, number, mode, *measure(label, args, Path(tmp))))
            if args.twin_rounds:
                twins = twin.run_twins(args, max(args.worker_counts), Path(tmp))
        finally:
            lab.restore()
    count_rows(measured)
    twin.count_rows(twins, args.twin_control)
    return measured, twins


def count_rows(measured: list[Measured]) -> None:
    print("\n== counting rows logged in each ab run's time window (waiting for the writer)", flush=True)
    for m in measured:
        expected = m.ab.complete if m.mode == "ON" else 0
        m.ab.rows = lab.wait_for_window_rows(
            m.ab.started, m.ab.ended, expected, timeout=90 if expected else 5
        )


def per_round(
    measured: list[Measured], value: Callable[[Measured], float], combine: Callable[[float, float], float]
) -> dict[int, float]:
    """Per round: combine(ON's value, OFF's value) of that same round (one worker count). Pairs
    of one round ran minutes apart, so drift of the shared machine cancels better than between
    the medians of all ON and all OFF rounds."""
    values = {(m.round, m.mode): value(m) for m in measured}
    rounds = sorted({m.round for m in measured})
    return {
        n: combine(values[(n, "ON")], values[(n, "OFF")])
        for n in rounds
        if (n, "ON") in values and (n, "OFF") in values
    }


def round_ratios(measured: list[Measured]) -> dict[int, float]:
    """Per round: ON req/s / OFF req/s of that same round."""
    return per_round(measured, lambda m: m.ab.rate, operator.truediv)


def added_cpu(measured: list[Measured], service: str) -> tuple[float, float, float]:
    """min, median, max over the rounds of CPU ms/request ON minus OFF of that round."""
    return spread(list(per_round(measured, lambda m: m.cpu_ms(service), operator.sub).values()))


@dataclass
class ConfigSummary:
    """All rounds of one worker count."""

    workers: int
    rounds: int
    ratio_min: float
    ratio_median: float
    ratio_max: float
    rate_on: float
    rate_off: float
    probe_p50_on: float
    probe_p50_off: float
    gateway_cpu_on: float
    gateway_cpu_off: float
    gateway_added: tuple[float, float, float]  # per round ON - OFF: min, median, max
    postgres_cpu_on: float
    postgres_cpu_off: float
    postgres_added: tuple[float, float, float]
    postgres_parts_on: dict[str, float]  # ms/request by part, median of rounds
    postgres_parts_off: dict[str, float]
    requests_on: int
    rows_on: int
    lost_on: int
    duplicated_on: int
    rows_off: int
    errors_on: int
    errors_off: int

    @property
    def added_p50_c1(self) -> float:
        return self.probe_p50_on - self.probe_p50_off

    @classmethod
    def of(cls, workers: int, measured: list[Measured]) -> ConfigSummary:
        on = [m for m in measured if m.mode == "ON"]
        off = [m for m in measured if m.mode == "OFF"]
        ratio = spread(list(round_ratios(measured).values()))
        return cls(
            workers=workers,
            rounds=len(on),
            ratio_min=ratio[0],
            ratio_median=ratio[1],
            ratio_max=ratio[2],
            rate_on=statistics.median(m.ab.rate for m in on),
            rate_off=statistics.median(m.ab.rate for m in off),
            probe_p50_on=lab.percentile([v for m in on for v in m.probe.latencies_ms], 0.50),
            probe_p50_off=lab.percentile([v for m in off for v in m.probe.latencies_ms], 0.50),
            gateway_cpu_on=statistics.median(m.cpu_ms("gateway") for m in on),
            gateway_cpu_off=statistics.median(m.cpu_ms("gateway") for m in off),
            gateway_added=added_cpu(measured, "gateway"),
            postgres_cpu_on=statistics.median(m.cpu_ms("postgres") for m in on),
            postgres_cpu_off=statistics.median(m.cpu_ms("postgres") for m in off),
            postgres_added=added_cpu(measured, "postgres"),
            postgres_parts_on=median_parts(on),
            postgres_parts_off=median_parts(off),
            requests_on=sum(m.ab.complete for m in on),
            rows_on=sum(m.ab.rows["rows"] for m in on),
            lost_on=sum(m.lost for m in on),
            duplicated_on=sum(m.duplicated for m in on),
            rows_off=sum(m.ab.rows["rows"] for m in off),
            errors_on=sum(m.ab.errors for m in on),
            errors_off=sum(m.ab.errors for m in off),
        )

    def part_rows(self) -> list[list[str]]:
        """PostgreSQL's CPU per request by part, ON and OFF (with logging off: the background)."""
        off = self.postgres_parts_off
        return [
            [f"of which {part}, ON / OFF", f"{value:.3f} / {off.get(part, 0.0):.3f}"]
            for part, value in self.postgres_parts_on.items()
        ]

    def table(self) -> str:
        return report.table(
            ["figure", "value"],
            [
                ["throughput ratio ON/OFF per round, min / median / max",
                 f"{self.ratio_min:.3f} / {self.ratio_median:.3f} / {self.ratio_max:.3f}"],
                ["req/s ON / OFF (median of rounds, ab c=50)", f"{self.rate_on:.1f} / {self.rate_off:.1f}"],
                ["added p50 at c=1 (sequential probe, rounds pooled)",
                 f"{self.added_p50_c1:+.2f} ms ({self.probe_p50_on:.2f} vs {self.probe_p50_off:.2f})"],
                ["gateway CPU ms/request ON / OFF (median)",
                 f"{self.gateway_cpu_on:.2f} / {self.gateway_cpu_off:.2f}"],
                ["gateway CPU ms/request added by logging (per round ON - OFF), min / median / max",
                 spread_text(self.gateway_added)],
                ["PostgreSQL CPU ms/request ON / OFF (median)",
                 f"{self.postgres_cpu_on:.3f} / {self.postgres_cpu_off:.3f}"],
                ["PostgreSQL CPU ms/request added by logging (per round ON - OFF), min / median / max",
                 spread_text(self.postgres_added, "+.3f")],
                *self.part_rows(),
                ["rows logged vs requests sent (ON, all rounds)", f"{self.rows_on} / {self.requests_on}"],
                ["lost / duplicated rows (ON)", f"{self.lost_on} / {self.duplicated_on}"],
                ["rows logged with logging OFF (expected 0)", self.rows_off],
                ["errors ON / OFF", f"{self.errors_on} / {self.errors_off}"],
            ],
        )  # fmt: skip


def median_parts(measured: list[Measured]) -> dict[str, float]:
    """PostgreSQL CPU ms/request by part (labctl.POSTGRES_PARTS), each the median of the rounds."""
    names = dict.fromkeys(part for m in measured for part in m.ab.postgres_parts)
    return {
        part: statistics.median(
            1000 * m.ab.postgres_parts.get(part, 0.0) / max(m.ab.complete, 1) for m in measured
        )
        for part in names
    }


ROUND_HEADER = [
    "workers", "round", "logging", "req/s", "ratio ON/OFF", "p50 ms", "c=1 p50 ms",
    "CPU ms/req gateway", "CPU ms/req PostgreSQL", "rows logged", "lost", "dup", "errors",
]  # fmt: skip


def round_rows(measured: list[Measured]) -> list[list[object]]:
    """One row per mode and round, in the order they ran; the ratio is that round's ON/OFF."""
    ratios = {w: round_ratios([m for m in measured if m.workers == w]) for w in {m.workers for m in measured}}
    return [round_row(m, ratios[m.workers].get(m.round, float("nan"))) for m in measured]


def round_row(m: Measured, ratio: float) -> list[object]:
    return [m.workers, m.round, m.mode, f"{m.ab.rate:.1f}", f"{ratio:.3f}", f"{m.ab.p50:.0f}",
            f"{m.probe.p50:.2f}", f"{m.cpu_ms('gateway'):.2f}", f"{m.cpu_ms('postgres'):.2f}",
            m.ab.rows["rows"], m.lost, m.duplicated, m.ab.errors]  # fmt: skip


def summarize(
    args: argparse.Namespace, measured: list[Measured], twins: list[twin.TwinRound]
) -> tuple[str, dict]:
    by_workers = {w: [m for m in measured if m.workers == w] for w in args.worker_counts}
    summaries = [ConfigSummary.of(w, mine) for w, mine in by_workers.items() if mine]
    sections = [f"## {s.workers} uvicorn worker(s)\n\n{s.table()}" for s in summaries]
    if twins:
        sections.append(twin.section(args, twins[0].workers, twins))
    markdown = "\n\n".join(
        [
            "# Lab load test: runbook Part 5 at scale, logging ON vs OFF",
            f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {lab.machine_description()}; "
            f"gateway {lab.GATEWAY_URL} (host nproc {args.vcpus}, deployed with {args.deployed_workers} "
            f"uvicorn workers), model {lab.MODEL} on the lab stub; per worker count {args.rounds} round(s), "
            "ON/OFF order alternating per round (ON first in odd rounds), each mode on a freshly "
            f"restarted gateway after {lab.WARMUP_REQUESTS} warm-up requests.",
            f"Per mode and round: `ab -n {args.requests} -c {args.concurrency} -T application/json"
            f" -H 'Authorization: Bearer TEST_KEY' -p test_payload.json {lab.GATEWAY_URL}{lab.CHAT_PATH}`"
            f" (the runbook's command at scale), then {args.probe_requests} sequential requests"
            " (concurrency 1, keep-alive, sub-ms clock) for the per-request cost of logging. CPU ms/req: "
            "CPU time of the service's cgroup during the ab run divided by its requests.",
            *sections,
            *(["## Rounds\n\n" + report.table(ROUND_HEADER, round_rows(measured))] if measured else []),
            f"![latency](load-{args.stamp}.png)",
        ]
    )
    data = {
        "args": vars(args),
        "machine": lab.machine_description(),
        "summaries": [{**asdict(s), "added_p50_c1_ms": s.added_p50_c1} for s in summaries],
        "rounds": [m.record() for m in measured],
        "twin_rounds": [t.record() for t in twins],
    }
    return markdown, data


def latency_panels(
    args: argparse.Namespace, measured: list[Measured], twins: list[twin.TwinRound]
) -> list[tuple[str, dict[str, list[float]]]]:
    """Per worker count: the ab latencies and the probe latencies, ON vs OFF (rounds pooled);
    then the twin rounds' ab latencies."""
    panels = []
    for workers in args.worker_counts:
        mine = [m for m in measured if m.workers == workers]
        if not mine:  # --rounds 0: twin rounds only
            continue
        for title, attr in ((f"ab -n {args.requests} -c {args.concurrency}", "ab"), ("probe, c=1", "probe")):
            series = {mode: [v for m in mine if m.mode == mode for v in getattr(m, attr).latencies_ms]
                      for mode in ("ON", "OFF")}  # fmt: skip
            panels.append((f"{workers} worker(s): {title}", series))
    if twins:
        series = {
            "ON": [v for t in twins for v in t.on.latencies_ms],
            "OFF": [v for t in twins for v in t.off.latencies_ms],
        }
        panels.append((f"twin rounds, {twins[0].workers} worker(s) each: ab -t {args.twin_seconds}", series))
    return panels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4_000, help="ab -n (default 4000)")
    parser.add_argument("--concurrency", type=int, default=50, help="ab -c (default 50)")
    parser.add_argument("--probe-requests", type=int, default=1000, help="sequential latency probe size")
    parser.add_argument("--rounds", type=int, default=5, help="ON/OFF rounds per worker count (default 5)")
    parser.add_argument(
        "--twin-rounds",
        type=int,
        default=6,
        help="rounds with both gateways loaded at once, one ON and one OFF, at the largest worker count"
        " (default 6; 0 skips them)",
    )
    parser.add_argument("--twin-seconds", type=int, default=30, help="ab -t of a twin round (default 30)")
    parser.add_argument(
        "--twin-control",
        action="store_true",
        help="twin rounds with logging OFF on both sides: the spread the twin figures have without logging",
    )
    parser.add_argument(
        "--workers-list",
        default="1,vcpus",
        help='uvicorn worker counts, "vcpus" = gateway nproc (default 1,vcpus)',
    )
    args = parser.parse_args()
    args.stamp = report.stamp()
    lab.require_deployed_lab()
    args.vcpus, args.deployed_workers = lab.gateway_vcpus(), lab.gateway_workers()
    args.worker_counts = worker_counts(args.workers_list, args.vcpus)
    measured, twins = run(args)
    markdown, data = summarize(args, measured, twins)
    png = report.latency_cdf_plot(
        lab.RESULTS / f"load-{args.stamp}.png",
        f"Lab gateway latency, logging ON vs OFF ({lab.machine_description()})",
        latency_panels(args, measured, twins),
    )
    path = report.write(f"load-{args.stamp}", markdown, data)
    print("\n" + markdown.split("\n\n", 3)[3])
    print(f"\nreport: {path}\nplot:   {png}")


if __name__ == "__main__":
    main()
