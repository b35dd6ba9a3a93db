#!/usr/bin/env python3
"""Fault runs against the deployed lab, each under load, each accounted request by request.

The load generator keeps every answer's x-litellm-call-id (= requests.request_id); after the
writer drained, those ids are compared with the rows in PostgreSQL: lost = answered - found,
duplicated = rows - distinct ids, status mismatch = rows whose status differs from the answer.

Scenarios (all by default, or --only NAME ...):
  pg-outage   PostgreSQL stopped for --outage seconds (60) during load, then started
  sigkill     PostgreSQL stopped, then the gateway killed with SIGKILL; systemd restarts it
              (time to healthy), PostgreSQL started; rows spooled before the kill must arrive
  pg-restart  PostgreSQL restarted during load; the gateway reconnects by itself
  spool-bound tiny LITELLM_PGLOG_SPOOL_MAX_BYTES (drop-in) + PostgreSQL down: every record that
              does not fit is reported by a log line and the pglog_records_dropped counter
Writes results/faults-<time>.md/.json and a timeline PNG per scenario. Run it through scripts/lab-faults.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import labctl as lab
import report
from loadgen import LoadGenerator, Sample, answered, answers_without_id


@dataclass
class Outcome:
    name: str
    title: str
    samples: list[Sample]
    events: list[tuple[float, str]]
    accounting: dict[str, int]
    figures: dict[str, object] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


class Scenario:
    """Load in the background while the scenario acts on the lab; events are time-stamped."""

    def __init__(self, concurrency: int, total: int | None = None) -> None:
        self.generator = LoadGenerator(
            lab.GATEWAY_URL, lab.test_key(), lab.chat_payload(), concurrency, total=total, phase="before"
        )
        self.events: list[tuple[float, str]] = []

    async def step(self, label: str, action: Callable[[], object] | None = None, phase: str | None = None):
        self.events.append((time.time(), label))
        print(f"   {time.strftime('%H:%M:%S')} {label}", flush=True)
        if phase:
            self.generator.phase = phase
        return await asyncio.to_thread(action) if action else None

    async def run(self, script: Callable[[Scenario], Awaitable[None]]) -> list[Sample]:
        load = asyncio.create_task(self.generator.run())
        try:
            await script(self)
        finally:
            self.generator.stop.set()
            await load
        return self.generator.samples


def phase_table(samples: list[Sample]) -> list[dict[str, object]]:
    phases: dict[str, list[Sample]] = {}
    for sample in samples:
        phases.setdefault(sample.phase, []).append(sample)
    rows = []
    for phase, group in phases.items():
        ok = [s.latency_ms for s in group if s.status == 200]
        errors = len(group) - len(ok)
        seconds = max(s.started for s in group) - min(s.started for s in group) or 1
        rows.append(
            {
                "phase": phase,
                "requests": len(group),
                "req/s": len(group) / seconds,
                "errors": errors,
                "no answer": sum(1 for s in group if s.status is None),
                "error rate %": 100 * errors / len(group),
                "p50 ms": lab.percentile(ok, 0.5),
                "p95 ms": lab.percentile(ok, 0.95),
            }
        )
    return rows


def settle(samples: list[Sample]) -> dict[str, int]:
    print("   waiting for the writer to drain, then counting rows", flush=True)
    counts = lab.wait_for_rows(answered(samples))
    counts["answers_without_call_id"] = answers_without_id(samples)
    return counts


def common_checks(counts: dict[str, int]) -> dict[str, bool]:
    return {
        "0 lost": counts["lost"] == 0,
        "0 duplicated": counts["duplicated"] == 0,
        "logged status = client status": counts["status_mismatch"] == 0,
        "every answer carried x-litellm-call-id": counts["answers_without_call_id"] == 0,
    }


def all_answers_200(samples: list[Sample], phases: set[str] | None = None) -> bool:
    return all(s.status == 200 for s in samples if phases is None or s.phase in phases)


# ---- scenarios ------------------------------------------------------------------------------------


def pg_outage(args: argparse.Namespace) -> Outcome:
    journal_from = time.time()

    async def script(s: Scenario) -> None:
        await asyncio.sleep(args.warm)
        await s.step("PostgreSQL stopped", lambda: lab.postgres("stop"), phase="outage")
        await asyncio.sleep(args.outage)
        await s.step("PostgreSQL started", lambda: lab.postgres("start"), phase="after")
        await asyncio.sleep(args.after)

    scenario = Scenario(args.concurrency)
    samples = asyncio.run(scenario.run(script))
    counts = settle(samples)
    journal = lab.journal_since(journal_from)
    figures = {
        "outage seconds": args.outage,
        "journal: 'PostgreSQL unavailable'": sum("PostgreSQL unavailable" in line for line in journal),
        "journal: 'reachable again'": sum("reachable again" in line for line in journal),
        "records spooled (counter)": lab.metric("pglog_records_spooled_total"),
    }
    checks = {"every request answered 200 (before, during, after)": all_answers_200(samples)}
    checks |= common_checks(counts)
    title = f"PostgreSQL stopped for {args.outage} s during load"
    return Outcome("pg-outage", title, samples, scenario.events, counts, figures, checks)


def sigkill(args: argparse.Namespace) -> Outcome:
    found: dict[str, object] = {}

    def kill_gateway() -> None:
        before = lab.service_show("MainPID", "NRestarts")
        found["pid before"], found["NRestarts before"] = before["MainPID"], int(before["NRestarts"])
        lab.docker_exec(lab.GATEWAY_HOST, ["kill", "-KILL", before["MainPID"]])
        found["killed at"] = time.time()
        found["spooled at kill"] = lab.spooled_request_ids()

    async def script(s: Scenario) -> None:
        await asyncio.sleep(args.warm)
        await s.step("PostgreSQL stopped", lambda: lab.postgres("stop"), phase="db down")
        await asyncio.sleep(args.spool_seconds)
        await s.step("gateway SIGKILL", kill_gateway, phase="killed")
        s.generator.phase = "restarting"
        await asyncio.to_thread(lab.wait_healthy)
        await s.step("gateway healthy again (systemd restart)", phase="restarted")
        found["seconds to healthy"] = round(time.time() - found["killed at"], 1)
        await s.step("PostgreSQL started", lambda: lab.postgres("start"), phase="after")
        await asyncio.sleep(args.after)

    scenario = Scenario(args.concurrency)
    samples = asyncio.run(scenario.run(script))
    counts = settle(samples)
    after = lab.service_show("MainPID", "NRestarts")
    spooled = found["spooled at kill"]
    written = lab.account(dict.fromkeys(spooled, 200)) if spooled else {"found": 0}
    killed_at = found["killed at"]
    # Answers whose record was still in the writer's memory queue when SIGKILL hit (not yet spooled).
    missing = set(answered(samples)) - lab.found_ids(answered(samples))
    late = [s for s in samples if s.call_id in missing]
    window = max((killed_at - s.started for s in late), default=0.0)
    figures = {
        "seconds from SIGKILL to healthy": found["seconds to healthy"],
        "NRestarts before -> after": f"{found['NRestarts before']} -> {after['NRestarts']}",
        "MainPID before -> after": f"{found['pid before']} -> {after['MainPID']}",
        "request ids in the spool at the kill": len(spooled),
        "of those written after the restart": written["found"],
        "requests in flight at the kill (no HTTP answer)": sum(1 for s in samples if s.status is None),
        "answered but lost (record only in memory at SIGKILL)": len(missing),
        "oldest lost answer, seconds before the kill": round(window, 2),
    }
    checks = {
        "systemd restarted the gateway": int(after["NRestarts"]) == found["NRestarts before"] + 1,
        "every spooled row written after the restart": written["found"] == len(spooled) > 0,
    } | common_checks(counts)
    title = "gateway killed with SIGKILL during load (PostgreSQL down, spool non-empty)"
    return Outcome("sigkill", title, samples, scenario.events, counts, figures, checks)


def pg_restart(args: argparse.Namespace) -> Outcome:
    journal_from = time.time()
    before = lab.service_show("MainPID", "NRestarts")

    async def script(s: Scenario) -> None:
        await asyncio.sleep(args.warm)
        await s.step("PostgreSQL restarted", lambda: lab.postgres("restart"), phase="after restart")
        await asyncio.sleep(args.after)

    scenario = Scenario(args.concurrency)
    samples = asyncio.run(scenario.run(script))
    counts = settle(samples)
    after = lab.service_show("MainPID", "NRestarts")
    connections = lab.gateway_connections()
    journal = lab.journal_since(journal_from)
    figures = {
        "gateway connections in pg_stat_activity after": connections,
        "journal: 'PostgreSQL unavailable'": sum("PostgreSQL unavailable" in line for line in journal),
        "journal: 'reachable again'": sum("reachable again" in line for line in journal),
        "gateway MainPID before -> after": f"{before['MainPID']} -> {after['MainPID']}",
    }
    checks = {
        "every request answered 200": all_answers_200(samples),
        "gateway not restarted (no operator action)": before == after,
        "gateway connected to PostgreSQL again": connections > 0,
    } | common_checks(counts)
    title = "PostgreSQL restarted during load"
    return Outcome("pg-restart", title, samples, scenario.events, counts, figures, checks)


def spool_bound(args: argparse.Namespace) -> Outcome:
    limit = str(args.spool_max_bytes)
    with lab.gateway_env({"LITELLM_PGLOG_SPOOL_MAX_BYTES": limit}):
        journal_from = time.time()
        dropped_before = lab.metric("pglog_records_dropped_total")

        async def script(s: Scenario) -> None:
            while not s.generator.stop.is_set() and s.generator.sent < args.spool_requests:
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # let the last batches reach the (full) spool
            await s.step("PostgreSQL started", lambda: lab.postgres("start"), phase="after")

        lab.postgres("stop")
        scenario = Scenario(5, total=args.spool_requests)
        scenario.events.append((time.time(), f"PostgreSQL stopped (spool bound {limit} bytes)"))
        scenario.generator.phase = "db down"
        samples = asyncio.run(scenario.run(script))
        counts = settle(samples)
        dropped = lab.metric("pglog_records_dropped_total") - dropped_before
        lines = lab.journal_since(journal_from, grep="LOG RECORDS LOST")
    logged_drops = sum(int(m.group(1)) for line in lines if (m := re.search(r"dropped (\d+) record", line)))
    figures = {
        "spool bound (bytes)": int(limit),
        "requests answered": len(answered(samples)),
        "requests without a row": counts["lost"],
        "records dropped (pglog_records_dropped_total)": int(dropped),
        "records dropped according to the log lines": logged_drops,
        "'LOG RECORDS LOST' log lines": len(lines),
        "example log line": lines[0][:160] if lines else "-",
    }
    checks = {
        "every request answered 200": all_answers_200(samples),
        "the bound was reached (counter > 0)": dropped > 0,
        "a log line for every dropped record": logged_drops == dropped,
        "every missing row is counted as dropped": counts["lost"] <= dropped,
        "0 duplicated": counts["duplicated"] == 0,
        "logged status = client status": counts["status_mismatch"] == 0,
    }
    title = "spool bound reached while PostgreSQL is down"
    return Outcome("spool-bound", title, samples, scenario.events, counts, figures, checks)


SCENARIOS = {"pg-outage": pg_outage, "sigkill": sigkill, "pg-restart": pg_restart, "spool-bound": spool_bound}


# ---- report -----------------------------------------------------------------------------------------


def section(outcome: Outcome, png: str) -> str:
    account_rows = [[name, value] for name, value in outcome.accounting.items()]
    phase_rows = [[row[k] for k in row] for row in phase_table(outcome.samples)]
    phase_header = list(phase_table(outcome.samples)[0]) if outcome.samples else []
    return "\n\n".join(
        [
            f"## {outcome.name}: {outcome.title} - {'PASS' if outcome.passed else 'FAIL'}",
            report.table(phase_header, phase_rows),
            report.table(["rows (answered request ids vs PostgreSQL)", "count"], account_rows),
            report.table(["figure", "value"], [[k, v] for k, v in outcome.figures.items()]),
            report.table(
                ["check", "result"], [[k, "ok" if v else "FAILED"] for k, v in outcome.checks.items()]
            ),
            f"![{outcome.name}]({png})",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--outage", type=float, default=60, help="seconds PostgreSQL stays down (pg-outage)")
    parser.add_argument("--warm", type=float, default=15, help="seconds of load before the fault")
    parser.add_argument("--after", type=float, default=20, help="seconds of load after recovery")
    parser.add_argument(
        "--spool-seconds", type=float, default=15, help="sigkill: load with the DB down first"
    )
    parser.add_argument("--spool-max-bytes", type=int, default=16384)
    parser.add_argument("--spool-requests", type=int, default=400)
    args = parser.parse_args()
    stamp = report.stamp()
    lab.require_deployed_lab()

    outcomes = []
    for name in args.only:
        print(f"\n== {name}", flush=True)
        lab.restore()
        try:
            outcome = SCENARIOS[name](args)
        finally:
            lab.restore()
        png = f"faults-{stamp}-{name}.png"
        report.timeline_plot(lab.RESULTS / png, outcome.title, outcome.samples, outcome.events)
        outcomes.append((outcome, png))
        print(section(outcome, png).split("\n\n", 1)[1].rsplit("\n\n", 1)[0], flush=True)

    summary = [
        [o.name, len(o.samples), o.accounting["sent"], o.accounting["found"], o.accounting["lost"],
         o.accounting["duplicated"], "PASS" if o.passed else "FAIL"]
        for o, _ in outcomes
    ]  # fmt: skip
    summary_table = report.table(
        ["scenario", "requests sent", "answered (ids)", "rows found", "lost", "duplicated", "result"], summary
    )
    markdown = "\n\n".join(
        [
            "# Lab fault runs",
            f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {lab.machine_description()}; "
            f"load: {args.concurrency} concurrent clients, runbook Part 5 payload, keep-alive.",
            summary_table,
            *(section(o, png) for o, png in outcomes),
        ]
    )
    data = {
        "args": vars(args),
        "machine": lab.machine_description(),
        "scenarios": {
            o.name: {
                "accounting": o.accounting,
                "figures": o.figures,
                "checks": o.checks,
                "phases": phase_table(o.samples),
            }
            for o, _ in outcomes
        },
    }
    path = report.write(f"faults-{stamp}", markdown, data)
    print("\n" + summary_table + f"\n\nreport: {path}")
    raise SystemExit(0 if all(o.passed for o, _ in outcomes) else 1)


if __name__ == "__main__":
    main()
