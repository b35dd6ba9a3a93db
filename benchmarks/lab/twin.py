"""Twin rounds: logging ON on one lab gateway and OFF on the other, under the same load at once.

The sequential rounds of ``load.py`` compare ON and OFF a minute apart, on a shared 2-vCPU machine
whose speed drifts by more than logging costs: rounds of the same code spread by +-8 %. Here the
lab's two gateway hosts (same image, same deployment, same worker count) take the same ``ab``
load at the same time (a time limit, so both runs overlap for their whole length), one with
logging ON and one OFF, swapping every round. Whatever slows the machine slows both; each
gateway's CPU per request comes from its own cgroup over the same interval.

Per round: ON req/s / OFF req/s and ON - OFF gateway CPU ms/request. The hosts swap every round,
so each pair of rounds (1-2, 3-4, ...) cancels a difference between the two hosts: a pair's
figure is the geometric mean of its two ratios and the mean of its two CPU differences.

Both gateways compete for the same cores, each container cgroup with the same weight, so each
gets about half of the CPU the machine has left: the throughput ratio is then about the inverse
ratio of their CPU per request.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import labctl as lab
import report
from ab import AbCommand, AbRun, run_together
from report import spread, spread_text

OFF_ENV = {"LITELLM_PGLOG_ENABLED": "false"}
# Each side sends with its own key, so that the rows of a time window tell the gateways apart:
# the ON gateway's are TEST_KEY's, and any row of POC_VALIDATION_KEY would be the OFF one's.
ON_KEY, OFF_KEY = ("test_key", "TEST_KEY"), ("poc_validation_key", "POC_VALIDATION_KEY")


@dataclass
class TwinRound:
    workers: int
    round: int
    on_host: str
    off_host: str
    on: AbRun
    off: AbRun
    postgres_seconds: float

    @property
    def ratio(self) -> float:
        return self.on.rate / self.off.rate

    @staticmethod
    def cpu_ms(run: AbRun) -> float:
        return 1000 * run.cpu_seconds["gateway"] / run.complete if run.complete else math.nan

    @property
    def added_ms(self) -> float:
        return self.cpu_ms(self.on) - self.cpu_ms(self.off)

    @property
    def postgres_ms(self) -> float:
        """PostgreSQL's CPU per request of the ON gateway (the OFF one writes nothing)."""
        return 1000 * self.postgres_seconds / self.on.complete if self.on.complete else math.nan

    def line(self) -> str:
        return (
            f"   ON {self.on_host} {self.on.rate:.1f} req/s, {self.cpu_ms(self.on):.2f} ms CPU/req; "
            f"OFF {self.off_host} {self.off.rate:.1f} req/s, {self.cpu_ms(self.off):.2f} ms CPU/req; "
            f"ratio {self.ratio:.3f}, added {self.added_ms:+.3f} ms; "
            f"PostgreSQL {self.postgres_ms:.3f} ms/req; "
            f"errors {self.on.errors}/{self.off.errors}"
        )

    def record(self) -> dict:
        def strip(run: AbRun) -> dict:
            return {k: v for k, v in asdict(run).items() if k != "latencies_ms"}

        return {"workers": self.workers, "round": self.round, "on_host": self.on_host,
                "off_host": self.off_host, "on": strip(self.on), "off": strip(self.off),
                "ratio": self.ratio, "added_ms": self.added_ms, "postgres_ms": self.postgres_ms}  # fmt: skip


def hosts_for(round_number: int) -> tuple[str, str]:
    """(ON host, OFF host): the first gateway is ON in odd rounds, the second in even ones."""
    first, second = lab.GATEWAY_HOSTS[:2]
    return (first, second) if round_number % 2 else (second, first)


async def _warm_up(urls: list[str]) -> None:
    await asyncio.gather(*(lab.drive(10, lab.WARMUP_REQUESTS, url=url) for url in urls))


def postgres_cpu_seconds() -> float:
    return lab.cgroup_cpu_seconds(*lab.CPU_CGROUPS["postgres"])


def run_round(workers: int, number: int, args, workdir: Path) -> TwinRound:
    on_host, off_host = hosts_for(number)
    print(f"\n=== twin round {number}/{args.twin_rounds}, workers {workers}: ON {on_host}, OFF {off_host}")
    # --twin-control: both sides OFF, what the figures vary by when logging cannot make a difference.
    on_env = OFF_ENV if args.twin_control else {}
    # Both restarted at once: a gateway restarted a few seconds later still spends CPU on its start
    # during the measurement (the control run, restarting one after the other, measured the
    # first-restarted side 0.2-0.6 ms per request cheaper in every round).
    with ThreadPoolExecutor(max_workers=2) as pool:
        restarts = [
            pool.submit(lab.apply_gateway_env, env, workers, host=host)
            for env, host in ((on_env, on_host), (OFF_ENV, off_host))
        ]
        for restart in restarts:
            restart.result()
    urls = [lab.gateway_url(on_host), lab.gateway_url(off_host)]
    asyncio.run(_warm_up(urls))
    time.sleep(lab.WINDOW_GAP_SECONDS)
    hosts = (on_host, off_host)
    before = {host: lab.gateway_cpu_seconds(host) for host in hosts}
    postgres_before = postgres_cpu_seconds()
    commands = [
        AbCommand(workdir, 0, args.concurrency, url, args.twin_seconds, key_file)
        for url, (key_file, _) in zip(urls, (ON_KEY, OFF_KEY), strict=True)
    ]
    on, off = run_together(commands)
    postgres_used = postgres_cpu_seconds() - postgres_before
    for run, host in ((on, on_host), (off, off_host)):
        run.cpu_seconds = {"gateway": lab.gateway_cpu_seconds(host) - before[host]}
    twin = TwinRound(workers, number, on_host, off_host, on, off, postgres_used)
    print(twin.line(), flush=True)
    time.sleep(lab.WINDOW_GAP_SECONDS)
    return twin


def run_twins(args, workers: int, workdir: Path) -> list[TwinRound]:
    return [run_round(workers, number, args, workdir) for number in range(1, args.twin_rounds + 1)]


def count_rows(twins: list[TwinRound], control: bool = False) -> None:
    for twin in twins:
        expected = 0 if control else twin.on.complete
        twin.on.rows = lab.wait_for_window_rows(twin.on.started, twin.on.ended, expected, timeout=90)
        twin.off.rows = lab.rows_between(twin.off.started, twin.off.ended, OFF_KEY[1])


def pairs(twins: list[TwinRound]) -> list[tuple[TwinRound, TwinRound]]:
    """Rounds 1-2, 3-4, ...: each host ON once and OFF once."""
    return [(twins[i], twins[i + 1]) for i in range(0, len(twins) - 1, 2)]


def summary_table(twins: list[TwinRound]) -> str:
    ratios = spread([t.ratio for t in twins])
    added = spread([t.added_ms for t in twins])
    pair_ratios = [math.sqrt(a.ratio * b.ratio) for a, b in pairs(twins)]
    pair_added = [(a.added_ms + b.added_ms) / 2 for a, b in pairs(twins)]
    on_200 = sum(t.on.rows.get("status_200", 0) for t in twins)
    complete = sum(t.on.complete for t in twins)
    rows = [
        ["throughput ratio ON/OFF per round, min / median / max", spread_text(ratios, ".3f")],
        ["gateway CPU ms/request added per round (ON - OFF), min / median / max", spread_text(added, "+.3f")],
        ["req/s ON / OFF (median of rounds)",
         f"{statistics.median(t.on.rate for t in twins):.1f} / "
         f"{statistics.median(t.off.rate for t in twins):.1f}"],
        ["gateway CPU ms/request ON / OFF (median)",
         f"{statistics.median(TwinRound.cpu_ms(t.on) for t in twins):.2f} / "
         f"{statistics.median(TwinRound.cpu_ms(t.off) for t in twins):.2f}"],
        ["PostgreSQL CPU ms per ON request (median; background included)",
         f"{statistics.median(t.postgres_ms for t in twins):.3f}"],
        ["rows with status 200 vs ab's complete requests (ON)", f"{on_200} / {complete}"],
        ["rows logged by the OFF gateway (expected 0)", sum(t.off.rows.get("rows", 0) for t in twins)],
        ["errors ON / OFF", f"{sum(t.on.errors for t in twins)} / {sum(t.off.errors for t in twins)}"],
    ]  # fmt: skip
    if pair_ratios:
        rows[2:2] = [
            ["host-balanced pairs of rounds: ratio (geometric mean), min / median / max",
             spread_text(spread(pair_ratios), ".3f")],
            ["host-balanced pairs of rounds: CPU ms/request added, min / median / max",
             spread_text(spread(pair_added), "+.3f")],
        ]  # fmt: skip
    return report.table(["figure", "value"], rows)


ROUND_HEADER = ["round", "ON host", "ON req/s", "OFF req/s", "ratio", "ON CPU ms/req", "OFF CPU ms/req",
                "added ms", "PostgreSQL ms/req", "rows 200 (ON)", "complete (ON)"]  # fmt: skip


def round_rows(twins: list[TwinRound]) -> list[list[object]]:
    return [[t.round, t.on_host, f"{t.on.rate:.1f}", f"{t.off.rate:.1f}", f"{t.ratio:.3f}",
             f"{TwinRound.cpu_ms(t.on):.2f}", f"{TwinRound.cpu_ms(t.off):.2f}", f"{t.added_ms:+.3f}",
             f"{t.postgres_ms:.3f}", t.on.rows.get("status_200", 0), t.on.complete]
            for t in twins]  # fmt: skip


def section(args, workers: int, twins: list[TwinRound]) -> str:
    hosts = " and ".join(lab.GATEWAY_HOSTS[:2])
    title = f"## Twin rounds: ON and OFF at the same time ({workers} uvicorn workers on each gateway)"
    if args.twin_control:
        title += '\n\n**Control run (`--twin-control`): both sides OFF.** "ON" below is an OFF gateway too.'
    return "\n\n".join(
        [
            title,
            f"{hosts} each restarted with {workers} workers, one with logging ON and one OFF (swapped "
            f"every round), {lab.WARMUP_REQUESTS} warm-up requests each, then `ab -t {args.twin_seconds} "
            f"-c {args.concurrency}` against both at once. Each gateway's CPU from its own cgroup over the"
            " same interval. A pair of rounds has each host ON once: its figures cancel host differences."
            " Requests still in flight at ab's time limit are answered and logged but not counted by ab.",
            summary_table(twins),
            report.table(ROUND_HEADER, round_rows(twins)),
        ]
    )
