#!/usr/bin/env python3
"""Fault drills against the deployed lab, each under load, each accounted request by request.

The load generator keeps every answer's x-litellm-call-id (= requests.request_id); after the
writer drained, those ids are compared with the rows in PostgreSQL: lost = answered - found,
duplicated = rows - distinct ids, status mismatch = rows whose status differs from the answer.
Each drill also reads the gateway's journal on the gateway host and its counters, and fails
when a check fails. Production timings (retry cap 10 s, flush 1 s) are never changed; the
only drop-in is the spool bound of spool-bound.

Drills (all by default, or --only NAME ...):
  pg-outage   PostgreSQL stopped for --outage seconds (60) during load, then started: every
              answer 200, rows spooled, one "PostgreSQL unavailable" and one "reachable again"
              journal line, nothing dropped, 0 lost / 0 duplicated, latency bound during the outage
  pg-restart  PostgreSQL restarted during load; the gateway reconnects by itself, same checks
  sigkill     PostgreSQL stopped, every gateway process SIGKILLed with requests in flight; systemd restarts
              it (Restart=on-failure; time to healthy), PostgreSQL started. Expected: the requests
              in flight at the kill and those sent until the restart get no HTTP answer
              (connection reset/refused, never accounted); every HTTP answer is 200; every
              answered request and every spooled record lands once
  spool-bound tiny LITELLM_PGLOG_SPOOL_MAX_BYTES (drop-in) + PostgreSQL down: every answer 200;
              counted record by record (2 per answer: the middleware's and the usage callback's,
              the latter merged on the host when it repeats the former's usage):
              spooled + dropped + merged = 2 x answered, pglog_records_dropped_total = the sum of the
              "LOG RECORDS LOST: dropped N record(s)" journal lines, and the requests with a row
              are exactly those with a record in the spool (nothing dropped silently)
  key-rotation  a converge adds a client key and revokes another during load (no restart: every
              worker re-reads the keys file when it changes): every answer 200, the gateway's
              MainPID unchanged, the revoked key 401 and the new key 200 within 1 s of the converge
              finishing; a second converge puts the lab's keys back
  pg-hang     every postgres process SIGSTOPped for --hang seconds (connections stay open,
              nothing answers), then SIGCONT: every answer 200 within the latency bound, the
              same outage path as pg-outage (spool, one "unavailable" and one "reachable again"
              line), everything lands after it (0 lost, 0 duplicated)
--size full (default) is the README's run; --size ci is the same code with smaller loads and
shorter phases for ./scripts/test (the 60 s outage stays). Writes results/faults-<time>.md/.json
and a timeline PNG per drill. Run it through scripts/lab-faults (it checks the route to the lab).
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

# Latency bound for answers while PostgreSQL is down or hung (see LATENCY_BOUND_NOTE).
LATENCY_P99_BOUND_MS = 1000.0
LATENCY_BOUND_NOTE = (
    "Bound: p99 of the 200 answers during the fault <= {bound:.0f} ms. The request path only appends"
    " to the local journal, so a database fault must not show in the answers. Measured on the lab"
    " (2 shared vCPUs, 4 clients, other jobs running): p99 98-160 ms during outage/restart/kill,"
    " 267-301 ms during the hang (max 1.06 s); the bound is ~3x the worst p99 seen, room for a busy"
    " machine, and still far below what a request waiting on PostgreSQL would show (the 5 s"
    " connect timeout, or forever for a hung server)."
)

# The two sizes of one implementation: the README's run and the CI stage of ./scripts/test.
SIZES = {
    "full": {
        "concurrency": 10, "outage": 60.0, "hang": 60.0, "warm": 15.0, "after": 20.0,
        "spool_seconds": 15.0, "spool_max_bytes": 16384, "spool_requests": 400,
    },
    "ci": {
        "concurrency": 4, "outage": 60.0, "hang": 20.0, "warm": 5.0, "after": 10.0,
        "spool_seconds": 8.0, "spool_max_bytes": 16384, "spool_requests": 150,
    },
}  # fmt: skip
DRILL_ORDER = ["pg-outage", "pg-restart", "sigkill", "spool-bound", "pg-hang", "key-rotation"]
UNAVAILABLE, RECOVERED, LOST = "PostgreSQL unavailable", "reachable again", "LOG RECORDS LOST"
SYSLOG_ERR, SYSLOG_WARNING = 3, 4  # journal priorities (journalctl -p err / -p warning)
# Per 200 chat answer: the middleware's record and the usage callback's (pglog_records_merged_total
# counts those not submitted because the middleware's record already held their usage).
RECORDS_PER_ANSWER = 2


@dataclass
class Outcome:
    name: str
    title: str
    samples: list[Sample]
    events: list[tuple[float, str]]
    accounting: dict[str, int]
    figures: dict[str, object] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    fault_phases: tuple[str, ...] = ()
    spooled: int = 0
    dropped: int = 0

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def fault_latency(self, q: float) -> float:
        return lab.percentile(
            (s.latency_ms for s in self.samples if s.status == 200 and s.phase in self.fault_phases), q
        )


class Scenario:
    """Load in the background while the scenario acts on the lab; events are time-stamped."""

    def __init__(self, concurrency: int, total: int | None = None) -> None:
        self.generator = LoadGenerator(
            lab.GATEWAY_URL,
            lab.test_key(),
            lab.chat_payload(),
            concurrency,
            total=total,
            phase="before",
            verify=lab.TLS_VERIFY,
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
                "p50 ms": lab.percentile(ok, 0.5),
                "p99 ms": lab.percentile(ok, 0.99),
                "max ms": max(ok, default=float("nan")),
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
        "every requests row has its responses row": counts["without_responses_row"] == 0,
    }


def all_answers_200(samples: list[Sample], phases: set[str] | None = None) -> bool:
    return all(s.status == 200 for s in samples if phases is None or s.phase in phases)


class Journal:
    """The gateway's journal lines on the gateway host since a moment, and what they say."""

    def __init__(self, since: float) -> None:
        self.entries = lab.journal_since(since)
        self.lines = [entry.text for entry in self.entries]

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def all_at_priority(self, text: str, priority: int) -> bool:
        """Every line holding ``text`` has ``priority`` or a more urgent one (a lower number): the
        package marks each line with its syslog priority (logsetup.py), so problems stand out."""
        return all(entry.priority <= priority for entry in self.entries if text in entry.text)

    def lost_lines(self) -> list[str]:
        return [line for line in self.lines if LOST in line]

    def dropped_sum(self) -> int:
        """Records the "LOG RECORDS LOST: dropped N record(s)" lines account for."""
        found = (re.search(r"dropped (\d+) record", line) for line in self.lost_lines())
        return sum(int(match.group(1)) for match in found if match)

    def figures(self) -> dict[str, object]:
        return {
            f"journal: '{UNAVAILABLE}' lines": self.count(UNAVAILABLE),
            f"journal: '{RECOVERED}' lines": self.count(RECOVERED),
            f"journal: '{LOST}' lines (records)": f"{len(self.lost_lines())} ({self.dropped_sum()})",
        }


class Counters:
    """pglog_* counters of the running gateway process, as deltas since construction."""

    NAMES = (
        "pglog_records_spooled_total",
        "pglog_records_dropped_total",
        "pglog_records_merged_total",
        "pglog_rows_written_total",
    )

    def __init__(self) -> None:
        self.start = self.read()

    @staticmethod
    def read() -> dict[str, float]:
        return {name: lab.metric(name) for name in Counters.NAMES}

    def delta(self) -> dict[str, int]:
        now = self.read()
        return {
            name.removeprefix("pglog_").removesuffix("_total"): int(now[name] - self.start[name])
            for name in now
        }


def outage_checks(journal: Journal, spooled: int, dropped: int, outages: int = 1) -> dict[str, bool]:
    """The outage path ran (spool, both journal lines) and nothing was dropped.

    Each worker's writer logs one pair of lines per outage it wrote during: with N workers, between
    ``outages`` and ``outages`` x N pairs, every "unavailable" line answered by a "reachable again".
    """
    lines = (outages, outages * lab.gateway_workers())
    unavailable, recovered = journal.count(UNAVAILABLE), journal.count(RECOVERED)
    return {
        "rows spooled during the fault (pglog_records_spooled_total > 0)": spooled > 0,
        f"journal: {lines[0]}-{lines[1]} '{UNAVAILABLE}' line(s)": lines[0] <= unavailable <= lines[1],
        f"journal: as many '{RECOVERED}' lines": recovered == unavailable,
        f"journal: each '{UNAVAILABLE}' line at priority warning": journal.all_at_priority(
            UNAVAILABLE, SYSLOG_WARNING
        ),
        f"nothing dropped (counter 0, no '{LOST}' line)": dropped == 0 and not journal.lost_lines(),
    }


def latency_check(outcome: Outcome, bound: float) -> None:
    p99 = outcome.fault_latency(0.99)
    outcome.figures[f"latency during the fault p50 / p99 ms ({'/'.join(outcome.fault_phases)})"] = (
        f"{outcome.fault_latency(0.5):.1f} / {p99:.1f}"
    )
    outcome.checks[f"p99 during the fault <= {bound:.0f} ms"] = p99 <= bound


def run_load(
    concurrency: int, script: Callable[[Scenario], Awaitable[None]]
) -> tuple[Scenario, list[Sample], dict[str, int]]:
    """Run the script under load, then wait for the writer and account every answer."""
    scenario = Scenario(concurrency)
    samples = asyncio.run(scenario.run(script))
    return scenario, samples, settle(samples)


def held_fault(
    args: argparse.Namespace,
    fault: tuple[str, Callable[[], object], str],
    seconds: float,
    recovery: tuple[str, Callable[[], object]],
) -> Callable[[Scenario], Awaitable[None]]:
    """Warm load, the fault (label, action, phase) held for ``seconds``, the recovery, more load."""

    async def script(s: Scenario) -> None:
        await asyncio.sleep(args.warm)
        await s.step(fault[0], fault[1], phase=fault[2])
        await asyncio.sleep(seconds)
        await s.step(recovery[0], recovery[1], phase="after")
        await asyncio.sleep(args.after)

    return script


# ---- drills ---------------------------------------------------------------------------------------


def pg_outage(args: argparse.Namespace) -> Outcome:
    journal_from, counters = time.time(), Counters()

    fault = ("PostgreSQL stopped", lambda: lab.postgres("stop"), "outage")
    recovery = ("PostgreSQL started", lambda: lab.postgres("start"))
    scenario, samples, counts = run_load(args.concurrency, held_fault(args, fault, args.outage, recovery))
    journal, delta = Journal(journal_from), counters.delta()
    figures = {
        "outage seconds": args.outage,
        **journal.figures(),
        **{f"counter {k}": v for k, v in delta.items()},
    }
    checks = {"every request answered 200 (before, during, after)": all_answers_200(samples)}
    checks |= common_checks(counts) | outage_checks(
        journal, delta["records_spooled"], delta["records_dropped"]
    )
    title = f"PostgreSQL stopped for {args.outage:.0f} s during load"
    outcome = Outcome("pg-outage", title, samples, scenario.events, counts, figures, checks)
    outcome.fault_phases, outcome.spooled = ("outage",), delta["records_spooled"]
    outcome.dropped = delta["records_dropped"]
    latency_check(outcome, args.latency_p99_ms)
    return outcome


def pg_restart(args: argparse.Namespace) -> Outcome:
    journal_from, counters = time.time(), Counters()
    before = lab.service_show("MainPID", "NRestarts")

    async def script(s: Scenario) -> None:
        await asyncio.sleep(args.warm)
        await s.step("PostgreSQL restarted", lambda: lab.postgres("restart"), phase="after restart")
        await asyncio.sleep(args.after)

    scenario, samples, counts = run_load(args.concurrency, script)
    after = lab.service_show("MainPID", "NRestarts")
    connections = lab.gateway_connections()
    journal, delta = Journal(journal_from), counters.delta()
    figures = {
        "gateway connections in pg_stat_activity after": connections,
        **journal.figures(),
        **{f"counter {k}": v for k, v in delta.items()},
        "gateway MainPID before -> after": f"{before['MainPID']} -> {after['MainPID']}",
    }
    # A restart between two batches is noticed by the pool's pre-ping alone (no journal line);
    # when a batch failed, the outage lines come in pairs. A worker that went down in an earlier
    # drill and had nothing to write since logs its "reachable again" at its next write, i.e.
    # here: extra recovery lines are allowed, an outage without its recovery is not.
    checks = {
        "every request answered 200": all_answers_200(samples),
        "gateway not restarted (no operator action)": before == after,
        "gateway connected to PostgreSQL again": connections > 0,
        f"journal: every '{UNAVAILABLE}' followed by '{RECOVERED}'": journal.count(RECOVERED)
        >= journal.count(UNAVAILABLE),
        f"nothing dropped (counter 0, no '{LOST}' line)": delta["records_dropped"] == 0
        and not journal.lost_lines(),
    } | common_checks(counts)
    title = "PostgreSQL restarted during load"
    outcome = Outcome("pg-restart", title, samples, scenario.events, counts, figures, checks)
    outcome.fault_phases, outcome.spooled = ("after restart",), delta["records_spooled"]
    outcome.dropped = delta["records_dropped"]
    return outcome


def sigkill(args: argparse.Namespace) -> Outcome:
    found: dict[str, object] = {}

    def kill_gateway() -> None:
        before = lab.service_show("MainPID", "NRestarts")
        found["pid before"], found["NRestarts before"] = before["MainPID"], int(before["NRestarts"])
        found["spooled before kill"] = lab.metric("pglog_records_spooled_total")
        # Every process of the unit at once (the uvicorn supervisor and each worker): with one
        # worker per vCPU, a SIGKILL of the supervisor alone lets systemd stop the workers
        # gracefully, and nothing would be in flight when they die.
        lab.docker_exec(lab.GATEWAY_HOST, ["systemctl", "kill", "--signal=SIGKILL", lab.SERVICE])
        found["killed at"] = time.time()
        found["spooled at kill"] = lab.spooled_request_ids()

    async def script(s: Scenario) -> None:
        await asyncio.sleep(args.warm)
        found["journal from"] = time.time()
        await s.step("PostgreSQL stopped", lambda: lab.postgres("stop"), phase="db down")
        await asyncio.sleep(args.spool_seconds)
        await s.step("gateway SIGKILL", kill_gateway, phase="killed")
        s.generator.phase = "restarting"
        await asyncio.to_thread(lab.wait_healthy)
        found["healthy at"] = time.time()
        await s.step("gateway healthy again (systemd restart)", phase="restarted")
        found["seconds to healthy"] = round(found["healthy at"] - found["killed at"], 1)
        await s.step("PostgreSQL started", lambda: lab.postgres("start"), phase="after")
        await asyncio.sleep(args.after)

    scenario, samples, counts = run_load(args.concurrency, script)
    after = lab.service_show("MainPID", "NRestarts")
    spooled = found["spooled at kill"]
    written = lab.account(dict.fromkeys(spooled, 200)) if spooled else {"found": 0}
    killed_at, healthy_at = found["killed at"], found["healthy at"]
    journal, restarted = Journal(found["journal from"]), Journal(killed_at + 1)
    recovered = not restarted.count(UNAVAILABLE) or restarted.count(RECOVERED) >= 1
    dropped_after = int(lab.metric("pglog_records_dropped_total"))  # the new process's counter
    # No HTTP answer is expected only for the requests in flight at the kill (sent before it,
    # still waiting) and those sent while the gateway was down (before it was healthy again).
    no_answer = [s for s in samples if s.status is None]
    in_flight = [s for s in no_answer if s.started < killed_at]
    unexpected = [
        s for s in no_answer if s.started > healthy_at or s.started + s.latency_ms / 1000 < killed_at
    ]
    missing = set(answered(samples)) - lab.found_ids(answered(samples))
    figures = {
        "seconds from SIGKILL to healthy": found["seconds to healthy"],
        "NRestarts before -> after": f"{found['NRestarts before']} -> {after['NRestarts']}",
        "MainPID before -> after": f"{found['pid before']} -> {after['MainPID']}",
        "requests in flight at the kill (no HTTP answer)": len(in_flight),
        "requests refused while restarting (no HTTP answer)": len(no_answer) - len(in_flight),
        "request ids in the spool at the kill": len(spooled),
        "of those written after the restart": written["found"],
        "answered but lost": len(missing),
        **journal.figures(),
        "journal: systemd saw status=9/KILL": journal.count("status=9/KILL"),
    }
    checks = {
        "systemd restarted the gateway (NRestarts + 1)": int(after["NRestarts"])
        == found["NRestarts before"] + 1,
        "journal: systemd logged the SIGKILL (status=9/KILL)": journal.count("status=9/KILL") >= 1,
        "requests were in flight at the kill": len(in_flight) > 0,
        "every HTTP answer 200 (no answer only in flight at the kill or while restarting)": not unexpected
        and all(s.status in (200, None) for s in samples),
        "every spooled row written after the restart": written["found"] == len(spooled) > 0,
        f"journal: '{UNAVAILABLE}' before the kill": journal.count(UNAVAILABLE) >= 1,
        # The new workers see the outage only if their first batch comes before PostgreSQL is
        # back (a race with the drill's start of PostgreSQL); if they do, they must recover.
        f"journal: the restarted workers' every '{UNAVAILABLE}' followed by '{RECOVERED}'": recovered,
        f"nothing dropped (counter 0, no '{LOST}' line)": dropped_after == 0 and not journal.lost_lines(),
    } | common_checks(counts)
    title = "gateway SIGKILLed with requests in flight (PostgreSQL down, spool non-empty)"
    outcome = Outcome("sigkill", title, samples, scenario.events, counts, figures, checks)
    outcome.fault_phases, outcome.spooled, outcome.dropped = ("db down",), len(spooled), dropped_after
    outcome.figures["seconds to healthy"] = found["seconds to healthy"]
    return outcome


def spool_bound(args: argparse.Namespace) -> Outcome:
    """PostgreSQL stays down during the whole load, so every record is either spooled or dropped.

    Each 200 answer gives RECORDS_PER_ANSWER records (the middleware's, with the status, and the
    usage callback's, merged by request_id, on the host already when it repeats the first's usage).
    Expected, exactly: spooled + dropped + merged records = 2 x answered; dropped =
    pglog_records_dropped_total = the sum of the journal lines; the
    requests with a row afterwards are exactly those with a record in the spool; a request
    whose middleware record was dropped but whose usage record was spooled has a row without
    status (counted, not a mismatch); every row that has a status has the client's.
    """
    limit = str(args.spool_max_bytes)
    found: dict[str, object] = {}
    with lab.gateway_env({"LITELLM_PGLOG_SPOOL_MAX_BYTES": limit}):
        journal_from, counters = time.time(), Counters()

        def start_postgres() -> None:
            found["spool"] = lab.spooled_records()
            found["counters"] = counters.delta()
            lab.postgres("start")

        async def script(s: Scenario) -> None:
            while not s.generator.stop.is_set() and s.generator.sent < args.spool_requests:
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # let the last usage records and batches reach the (full) spool
            await s.step("PostgreSQL started", start_postgres, phase="after")

        lab.postgres("stop")
        scenario = Scenario(5, total=args.spool_requests)
        scenario.events.append((time.time(), f"PostgreSQL stopped (spool bound {limit} bytes)"))
        scenario.generator.phase = "db down"
        samples = asyncio.run(scenario.run(script))
        counts = settle(samples)
        journal = Journal(journal_from)
    spool, at_start = found["spool"], found["counters"]
    dropped, spooled, logged = at_start["records_dropped"], at_start["records_spooled"], journal.dropped_sum()
    merged = at_start["records_merged"]
    ok = answered(samples)
    with_row = lab.found_ids(ok)
    lines = journal.lost_lines()
    figures = {
        "spool bound (bytes)": int(limit),
        "requests answered": len(ok),
        "answered requests without a row": counts["lost"],
        "rows holding only the usage record (no status)": counts["without_status"],
        "records in the spool before PostgreSQL started (for requests)": f"{len(spool)} ({len(set(spool))})",
        "records spooled (pglog_records_spooled_total)": spooled,
        "records dropped (pglog_records_dropped_total)": dropped,
        "usage records merged on the host (pglog_records_merged_total)": merged,
        "records dropped according to the journal lines": logged,
        f"'{LOST}' journal lines": len(lines),
        "example journal line": lines[0][:160] if lines else "-",
    }
    checks = {
        "every request answered 200": all_answers_200(samples),
        "the bound was reached (counter > 0)": dropped > 0,
        "journal lines sum = pglog_records_dropped_total": logged == dropped,
        f"journal: each '{LOST}' line at priority error": journal.all_at_priority(LOST, SYSLOG_ERR),
        "spool records = pglog_records_spooled_total": len(spool) == spooled,
        f"spooled + dropped + merged = {RECORDS_PER_ANSWER} x answered (no record vanished)": (
            spooled + dropped + merged == RECORDS_PER_ANSWER * len(ok)
        ),
        "requests with a row = requests with a spooled record": with_row == set(spool) & set(ok),
        "0 duplicated": counts["duplicated"] == 0,
        "logged status = client status (rows with a status)": counts["status_mismatch"]
        == counts["without_status"],
    }
    title = "spool bound reached while PostgreSQL is down"
    outcome = Outcome("spool-bound", title, samples, scenario.events, counts, figures, checks)
    outcome.fault_phases, outcome.spooled, outcome.dropped = ("db down",), spooled, dropped
    return outcome


def pg_hang(args: argparse.Namespace) -> Outcome:
    journal_from, counters = time.time(), Counters()
    found: dict[str, object] = {}

    def freeze() -> None:
        found["frozen processes"] = lab.postgres_signal("STOP")

    def thaw() -> None:
        found["spooled during the hang"] = counters.delta()["records_spooled"]
        found["records in the spool at the end of the hang"] = len(lab.spooled_records())
        found["queue depth at the end of the hang"] = int(lab.metric("pglog_queue_depth"))
        found["resumed processes"] = lab.postgres_signal("CONT")

    fault = ("PostgreSQL frozen (SIGSTOP, connections stay open)", freeze, "hang")
    recovery = ("PostgreSQL resumed (SIGCONT)", thaw)
    scenario = Scenario(args.concurrency)
    try:
        samples = asyncio.run(scenario.run(held_fault(args, fault, args.hang, recovery)))
    finally:
        lab.postgres_signal("CONT")
    counts = settle(samples)
    journal, delta = Journal(journal_from), counters.delta()
    figures = {
        "hang seconds": args.hang,
        "postgres processes frozen": found.get("frozen processes"),
        "records spooled during the hang": found.get("spooled during the hang"),
        "records in the spool at the end of the hang": found.get(
            "records in the spool at the end of the hang"
        ),
        "queue depth gauge at the end of the hang": found.get("queue depth at the end of the hang"),
        **journal.figures(),
        **{f"counter {k}": v for k, v in delta.items()},
    }
    checks = {"every request answered 200 (before, during, after)": all_answers_200(samples)}
    checks |= common_checks(counts)
    # A hung server must count as down: the writer gives up on it (a deadline on database calls),
    # says so once, spools during the hang and replays after it.
    checks |= outage_checks(journal, found.get("spooled during the hang") or 0, delta["records_dropped"])
    title = f"PostgreSQL hung (SIGSTOP) for {args.hang:.0f} s during load"
    outcome = Outcome("pg-hang", title, samples, scenario.events, counts, figures, checks)
    outcome.fault_phases, outcome.spooled = ("hang",), found.get("spooled during the hang") or 0
    outcome.dropped = delta["records_dropped"]
    latency_check(outcome, args.latency_p99_ms)
    return outcome


# The keys the key-rotation converge deploys: the lab's TEST_KEY (the load's key) stays,
# POC_VALIDATION_KEY is revoked, ROTATION_KEY is added. Values stay in .lab/secrets: the file
# names inventory variables only (inventory/lab/group_vars/all.yml).
ROTATED_KEYS = """\
litellm_gateway_api_keys:
  - alias: TEST_KEY
    user_id: poc-tester
    key: "{{ lab_test_key }}"
  - alias: ROTATION_KEY
    user_id: key-rotation-drill
    key: "{{ lab_rotation_key }}"
"""
KEY_SWITCH_BOUND_SECONDS = 1.0


def first_status(key: str, wanted: int, within: float) -> float | None:
    """Seconds until a chat with ``key`` answers ``wanted`` (polled every 50 ms), None if never."""
    started = time.monotonic()
    while time.monotonic() - started <= within:
        if lab.chat_status(key) == wanted:
            return round(time.monotonic() - started, 3)
        time.sleep(0.05)
    return None


def key_rotation(args: argparse.Namespace) -> Outcome:
    vars_file, log = lab.RESULTS / "key-rotation-vars.yml", lab.RESULTS / "key-rotation-converge.log"
    vars_file.parent.mkdir(parents=True, exist_ok=True)
    vars_file.write_text(ROTATED_KEYS)
    before = lab.service_show("MainPID", "NRestarts")
    found: dict[str, object] = {}

    def rotate() -> None:
        lab.converge(str(vars_file), log)
        found["revoked 401 after s"] = first_status(lab.lab_key("poc_validation_key"), 401, 10)
        found["added 200 after s"] = first_status(lab.lab_key("rotation_key"), 200, 10)

    def put_back() -> None:
        lab.converge(None, log)
        found["restored: POC key"] = lab.chat_status(lab.lab_key("poc_validation_key"))
        found["restored: rotation key"] = lab.chat_status(lab.lab_key("rotation_key"))

    async def script(s: Scenario) -> None:
        await asyncio.sleep(args.warm)
        await s.step("converge: ROTATION_KEY added, POC_VALIDATION_KEY revoked", rotate, phase="rotate")
        await s.step("converge: the lab's keys back", put_back, phase="restore")
        await asyncio.sleep(args.after)
        s.generator.phase = "after"

    scenario, samples, counts = run_load(args.concurrency, script)
    after = lab.service_show("MainPID", "NRestarts")
    figures = {
        "requests sent during the drill": len(samples),
        **{k: v for k, v in found.items()},
        "gateway MainPID before -> after": f"{before['MainPID']} -> {after['MainPID']}",
        "converge log": str(log),
    }
    revoked, added = found["revoked 401 after s"], found["added 200 after s"]
    bound = KEY_SWITCH_BOUND_SECONDS
    checks = {
        "every request answered 200 (0 failed while keys changed)": all_answers_200(samples),
        "gateway not restarted": before == after,
        f"revoked key 401 within {bound:.0f} s of the converge": revoked is not None and revoked <= bound,
        f"added key 200 within {bound:.0f} s of the converge": added is not None and added <= bound,
        "after the second converge: POC key 200, rotation key 401": found["restored: POC key"] == 200
        and found["restored: rotation key"] == 401,
    } | common_checks(counts)
    title = "client keys added and revoked by a converge during load"
    outcome = Outcome("key-rotation", title, samples, scenario.events, counts, figures, checks)
    outcome.fault_phases = ("rotate", "restore")
    return outcome


SCENARIOS = {
    "pg-outage": pg_outage,
    "pg-restart": pg_restart,
    "sigkill": sigkill,
    "spool-bound": spool_bound,
    "pg-hang": pg_hang,
    "key-rotation": key_rotation,
}


# ---- report -----------------------------------------------------------------------------------------


def section(outcome: Outcome, png: str) -> str:
    account_rows = [[name, value] for name, value in outcome.accounting.items()]
    phase_rows = [[row[k] for k in row] for row in phase_table(outcome.samples)]
    phase_header = list(phase_table(outcome.samples)[0]) if outcome.samples else []
    return "\n\n".join(
        [
            f"## {outcome.name}: {outcome.title} - {'PASS' if outcome.passed else 'FAIL'}"
            f" ({outcome.seconds:.0f} s)",
            report.table(phase_header, phase_rows),
            report.table(["rows (answered request ids vs PostgreSQL)", "count"], account_rows),
            report.table(["figure", "value"], [[k, v] for k, v in outcome.figures.items()]),
            report.table(
                ["check", "result"], [[k, "ok" if v else "FAILED"] for k, v in outcome.checks.items()]
            ),
            f"![{outcome.name}]({png})",
        ]
    )


SUMMARY_HEADER = [
    "drill", "seconds", "sent", "answered", "lost", "dup", "spooled", "dropped",
    "fault p50 ms", "fault p99 ms", "to healthy s", "result",
]  # fmt: skip


def summary_row(o: Outcome) -> list[object]:
    return [
        o.name, round(o.seconds), len(o.samples), o.accounting["sent"], o.accounting["lost"],
        o.accounting["duplicated"], o.spooled, o.dropped, o.fault_latency(0.5), o.fault_latency(0.99),
        o.figures.get("seconds to healthy", "-"), "PASS" if o.passed else "FAIL",
    ]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=list(SIZES), default="full", help="preset of the options below")
    parser.add_argument("--only", nargs="+", choices=DRILL_ORDER, default=DRILL_ORDER)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--outage", type=float, help="seconds PostgreSQL stays down (pg-outage)")
    parser.add_argument("--hang", type=float, help="seconds PostgreSQL stays frozen (pg-hang)")
    parser.add_argument("--warm", type=float, help="seconds of load before the fault")
    parser.add_argument("--after", type=float, help="seconds of load after recovery")
    parser.add_argument("--spool-seconds", type=float, help="sigkill: load with the DB down first")
    parser.add_argument("--spool-max-bytes", type=int)
    parser.add_argument("--spool-requests", type=int)
    parser.add_argument("--latency-p99-ms", type=float, default=LATENCY_P99_BOUND_MS)
    args = parser.parse_args()
    for name, value in SIZES[args.size].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main() -> None:
    args = parse_args()
    stamp = report.stamp()
    lab.require_deployed_lab()

    outcomes = []
    for name in args.only:
        print(f"\n== {name}", flush=True)
        started = time.monotonic()
        lab.restore()
        try:
            outcome = SCENARIOS[name](args)
        finally:
            lab.restore()
        outcome.seconds = time.monotonic() - started
        png = f"faults-{stamp}-{name}.png"
        report.timeline_plot(lab.RESULTS / png, outcome.title, outcome.samples, outcome.events)
        outcomes.append((outcome, png))
        print(section(outcome, png).split("\n\n", 1)[1].rsplit("\n\n", 1)[0], flush=True)

    summary_table = report.table(SUMMARY_HEADER, [summary_row(o) for o, _ in outcomes])
    failed = [f"{o.name}: {check}" for o, _ in outcomes for check, ok in o.checks.items() if not ok]
    markdown = "\n\n".join(
        [
            "# Lab fault drills",
            f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {lab.machine_description()};"
            f" size {args.size}: {args.concurrency} concurrent clients, runbook Part 5 payload, keep-alive. "
            "Fault p50/p99: the 200 answers sent during the fault. "
            + LATENCY_BOUND_NOTE.format(bound=args.latency_p99_ms),
            summary_table,
            *(section(o, png) for o, png in outcomes),
        ]
    )
    data = {
        "args": vars(args),
        "machine": lab.machine_description(),
        "scenarios": {
            o.name: {
                "seconds": o.seconds,
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
    for line in failed:
        print(f"FAILED {line}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
