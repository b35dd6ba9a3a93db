"""The runbook's ``ab`` command against a lab gateway: one run, or several at the same time.

``AbCommand`` builds the command line (a request count, or a time limit so that simultaneous runs
overlap for their whole length), ``AbRun`` is what ab printed, parsed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import labctl as lab

# With a time limit, ab stops at the limit; -n only has to be larger than what fits in it.
TIMED_MAX_REQUESTS = 10_000_000


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
    postgres_parts: dict[str, float] = field(default_factory=dict)  # labctl.postgres_cpu_parts

    @property
    def errors(self) -> int:
        return self.failed + self.non_2xx


@dataclass(frozen=True)
class AbCommand:
    """``ab`` against one gateway URL: ``requests`` of them, or as many as ``seconds`` allow."""

    workdir: Path
    requests: int
    concurrency: int
    url: str = lab.GATEWAY_URL
    seconds: int | None = None
    key_file: str = "test_key"  # a lab secret's file name (lab.lab_key)

    @property
    def gnuplot(self) -> Path:
        return self.workdir / f"ab-{urlsplit(self.url).hostname}.tsv"

    def argv(self) -> list[str]:
        # One payload file per target: ab reads it as it starts, while the next command is built
        # (a shared file, rewritten meanwhile, once sent empty bodies: 400s).
        payload = self.workdir / f"test_payload-{urlsplit(self.url).hostname}.json"
        payload.write_text(json.dumps(lab.chat_payload(), indent=2))
        # -t sets -n to 50,000 itself: the -n after it is the one that counts.
        limit = (
            ["-t", str(self.seconds), "-n", str(TIMED_MAX_REQUESTS)]
            if self.seconds
            else ["-n", str(self.requests)]
        )
        # ab only takes headers as arguments: the lab key is visible in this machine's `ps`
        # for the duration of the run (lab-generated key; the lab hosts never see it in a command
        # line). Over HTTPS ab does not verify the certificate (it has no CA option); the latency
        # probe (httpx) does, with the lab's CA.
        return [
            "ab", "-q", *limit, "-c", str(self.concurrency), "-s", "60",
            "-T", "application/json", "-H", f"Authorization: Bearer {lab.lab_key(self.key_file)}",
            "-p", str(payload), "-g", str(self.gnuplot), f"{self.url}{lab.CHAT_PATH}",
        ]  # fmt: skip

    def parse(self, out: str, started: float, ended: float) -> AbRun:
        def number(label: str, default: str | None = None) -> float:
            match = re.search(rf"^{re.escape(label)}:?\s+([0-9.]+)", out, re.MULTILINE)
            if match is None and default is None:
                raise RuntimeError(f"ab output has no {label!r}:\n{out}")
            return float(match.group(1) if match else default)

        rows = self.gnuplot.read_text().splitlines()[1:]
        complete = int(number("Complete requests"))
        return AbRun(
            requests=complete if self.seconds else self.requests,
            complete=complete,
            failed=int(number("Failed requests")),
            non_2xx=int(number("Non-2xx responses", "0")),
            seconds=number("Time taken for tests"),
            rate=number("Requests per second"),
            p50=number("  50%"),
            p95=number("  95%"),
            p99=number("  99%"),
            started=started,
            ended=ended,
            latencies_ms=[float(line.split("\t")[4]) for line in rows if line.strip()],
        )


def run_ab(requests: int, concurrency: int, workdir: Path) -> AbRun:
    """One ab run of ``requests`` against the measured gateway (lab.GATEWAY_URL)."""
    return run_together([AbCommand(workdir, requests, concurrency)])[0]


def run_together(commands: list[AbCommand]) -> list[AbRun]:
    """Start every command at once and wait for all; each one's own start and end times."""
    started = time.time()
    processes = [
        subprocess.Popen(command.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    runs = []
    for command, process in zip(commands, processes, strict=True):
        out, err = process.communicate()
        ended = time.time()
        if process.returncode != 0:
            raise RuntimeError(
                f"ab against {command.url} failed ({process.returncode}): {err.strip()[-500:]}"
            )
        runs.append(command.parse(out, started, ended))
    return runs
