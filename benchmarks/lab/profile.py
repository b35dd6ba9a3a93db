#!/usr/bin/env python3
"""Where the deployed gateway's CPU goes under load, and how much of it is the logging code.

Issue 9's gateway goal (logging adds at most 0.1 ms of CPU per request) is 1 % of the 10-17 ms
a LiteLLM worker spends per request here, and ``scripts/lab-load`` finds ON and OFF rounds
spreading by several ms: subtracting two noisy totals cannot show it. A sampling profile can
attribute it instead, in one run: every worker process of the gateway host is sampled by
py-spy (from this machine, which sees the containers' processes; ``--nonblocking``, so the
workers are not paused) while ``ab`` sends the runbook's chat request at concurrency 50, with
logging ON and the worker count = vCPUs.

A sample is the logging code's when its stack holds a ``litellm_pglog`` frame and nothing of the
app (LiteLLM, FastAPI, starlette's routing, uvicorn, httpx, pydantic, ...) runs below the
innermost such frame: the middleware's own work, the usage callback, the writer thread with the
SQLAlchemy and psycopg calls it makes, and the standard library they call (json, asyncio's
task steps of our coroutines) while they hold the GIL. The middleware wraps the whole app, so
samples of LiteLLM answering a request are not ours although a middleware frame sits above them.

Reported, from samples: CPU ms per request of all the workers and of the logging code (split
into the request path, the usage callback and the writer thread), next to the gateway cgroup's
CPU from cpu.stat (what the sampling rate covers), and the top entries of the logging code and
of the whole worker by own time. Writes results/profile-<time>.md and the raw stacks. Figures
only; nothing is asserted. Run it through scripts/lab-profile.

What it cannot see: work done with the GIL released (``--gil`` samples only the thread holding
it), such as the system calls of the journal's writes and psycopg's network I/O and TLS in the
writer thread; and indirect costs of logging (garbage collection of our objects, cache effects,
LiteLLM's dispatch to a callback that is registered in both modes anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import labctl as lab
from ab import run_ab

OURS = "litellm_pglog/"
# Packages of the app the middleware wraps: a sample with one of these below our innermost
# frame is LiteLLM (or its server) at work. starlette's responses and datastructures are not
# in the list: the middleware uses them itself.
APP_PREFIXES = (
    "litellm/", "litellm_enterprise/", "litellm_proxy_extras/", "fastapi/", "starlette/routing",
    "starlette/middleware", "starlette/applications", "starlette/requests", "uvicorn/", "httpx/",
    "httpcore/", "openai/", "aiohttp/", "anyio/", "pydantic/", "pydantic_core/", "prometheus_client/",
    "tiktoken/", "tokenizers/", "jinja2/", "h11/", "httptools/",
)  # fmt: skip
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# The key check LiteLLM calls as its custom_auth: our code, but it runs with logging OFF too.
AUTH_HOOK = "user_api_key_auth (litellm_pglog/auth.py"
PART_MARKERS = (  # the first marker in the stack, from the root, names the part
    ("writer thread", ("LogWriter._run",)),
    ("usage callback", ("UsageLogger.",)),
    ("request path (middleware, submit)", ("RequestLogMiddleware.", "LoggedExchange.")),
)


def frame_file(frame: str) -> str:
    match = FRAME.match(frame)
    return match.group("file") if match else frame


def frame_name(frame: str) -> str:
    """``function (file)`` without the line number."""
    match = FRAME.match(frame)
    return f"{match.group('function')} ({match.group('file')})" if match else frame


def our_entry(frames: list[str]) -> str | None:
    """The innermost ``litellm_pglog`` frame of a sample that is the logging code's, else None."""
    innermost = max((i for i, frame in enumerate(frames) if OURS in frame_file(frame)), default=None)
    if innermost is None or any(frame_file(f).startswith(APP_PREFIXES) for f in frames[innermost + 1 :]):
        return None
    return frames[innermost]


def part_of(frames: list[str]) -> str:
    for part, markers in PART_MARKERS:
        if any(marker in frame for frame in frames for marker in markers):
            return part
    return "other logging code"


@dataclass
class Profile:
    """Samples of the gateway's processes, split into the logging code's and the rest."""

    samples: int = 0
    ours: int = 0
    auth_hook: int = 0
    parts: collections.Counter = field(default_factory=collections.Counter)
    own_time: collections.Counter = field(default_factory=collections.Counter)  # all, by leaf
    our_entries: collections.Counter = field(default_factory=collections.Counter)  # ours, by entry

    def add(self, frames: list[str], count: int) -> None:
        self.samples += count
        self.own_time[frame_name(frames[-1])] += count
        entry = our_entry(frames)
        if entry is None:
            return
        if any(frame.startswith(AUTH_HOOK) for frame in frames):
            self.auth_hook += count
            return
        self.ours += count
        self.parts[part_of(frames)] += count
        # The innermost frame of ours is the entry: what of our code the time is spent in,
        # standard-library callees included (while they hold the GIL).
        self.our_entries[frame_name(entry)] += count

    @classmethod
    def parse(cls, raw: str) -> Profile:
        """From py-spy's raw format: one ``frame;frame;... count`` line per distinct stack."""
        profile = cls()
        for line in raw.splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                profile.add(stack.split(";"), int(count))
        return profile


def host_pids() -> list[int]:
    """This machine's PIDs of the gateway service's processes (master and workers).

    Their PIDs inside the container come from the service's cgroup there; a process of this
    machine is one of them when it is in the container's PID namespace with that inner PID
    (the last field of its NSpid line).
    """
    inside = set(
        lab.docker_exec(
            lab.GATEWAY_HOST, ["cat", lab.CPU_CGROUPS["gateway"][1].replace("cpu.stat", "cgroup.procs")]
        ).split()
    )
    container_pid = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", lab.GATEWAY_HOST],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    namespace = os.readlink(f"/proc/{container_pid}/ns/pid")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # ended meanwhile
            continue
        nspid = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
        if nspid and nspid.group(1).split()[-1] in inside:
            found.append(int(pid))
    if len(found) != len(inside):
        raise lab.LabError(f"found {len(found)} of the gateway's {len(inside)} processes on this machine")
    return found


def record(pids: list[int], rate: int, workdir: Path, requests: int, concurrency: int):
    """py-spy on every process while ab runs; the raw stack files and ab's figures."""
    spies, outputs = [], []
    for pid in pids:
        output = workdir / f"stacks-{pid}.txt"
        command = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--nonblocking",
            "--gil",
            "--rate",
            str(rate),
        ]
        command += ["--format", "raw", "--output", str(output), "--pid", str(pid)]
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        outputs.append(output)
    time.sleep(2)  # py-spy attached
    cpu_before = lab.cpu_seconds()
    ab = run_ab(requests, concurrency, workdir)
    cpu_after = lab.cpu_seconds()
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for spy in spies:
        _, errors = spy.communicate(timeout=60)
        if spy.returncode not in (0, -signal.SIGINT):
            raise lab.LabError(f"py-spy failed ({spy.returncode}): {errors.strip()[-500:]}")
    return [path for path in outputs if path.exists()], ab, cpu_after["gateway"] - cpu_before["gateway"]


def table(rows: list[tuple[str, int]], samples: int, per_request_ms: float) -> list[str]:
    lines = ["| entry | share of samples | ms/request |", "|---|---|---|"]
    lines += [
        f"| `{name}` | {100 * count / samples:.2f} % | {count * per_request_ms:.4f} |" for name, count in rows
    ]
    return lines


def summarize(profile: Profile, args: argparse.Namespace, ab, cgroup_seconds: float, workers: int) -> str:
    # The sampling window is a little longer than ab's (py-spy attaches first and stops after),
    # but the gateway is idle then: samples of idle threads are not recorded.
    per_sample_ms = 1000 / args.rate
    per_request = per_sample_ms / ab.complete  # ms/request one sample stands for
    lines = [
        f"# Gateway profile under load ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`scripts/lab-profile --requests {args.requests} --rate {args.rate}`: logging ON, "
        f"{workers} workers, ab -n {args.requests} -c {args.concurrency}: {ab.complete} complete, "
        f"{ab.errors} errors, {ab.rate:.1f} requests/s.",
        "",
        "| measure | ms/request |",
        "|---|---|",
        f"| gateway cgroup CPU (cpu.stat) | {1000 * cgroup_seconds / ab.complete:.2f} |",
        f"| sampled CPU of the gateway's processes ({profile.samples} samples at {args.rate} Hz) | "
        f"{profile.samples * per_request:.2f} |",
        f"| **the logging code** ({profile.ours} samples, "
        f"{100 * profile.ours / max(profile.samples, 1):.2f} %) | **{profile.ours * per_request:.3f}** |",
    ]
    lines += [f"| - {part} | {count * per_request:.3f} |" for part, count in profile.parts.most_common()]
    lines.append(
        f"| the key check (custom_auth; runs with logging OFF too) | {profile.auth_hook * per_request:.3f} |"
    )
    scale = 1000 * cgroup_seconds / ab.complete / max(profile.samples * per_request, 1e-9)
    lines += [
        "",
        f"The samples are GIL-holding wall time (py-spy --gil): they include time a worker held the GIL "
        f"while the kernel ran something else. Scaled to the cgroup's CPU (x {scale:.2f}), the logging "
        f"code is **{profile.ours * per_request * scale:.3f} ms of CPU per request**.",
    ]
    lines += [
        "",
        "Top entries of the logging code (innermost `litellm_pglog` frame, its callees included):",
        "",
    ]
    lines += table(profile.our_entries.most_common(args.top), profile.samples, per_request)
    lines += ["", "Top entries of the whole worker by own time (leaf frame):", ""]
    lines += table(profile.own_time.most_common(args.top), profile.samples, per_request)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=6000, help="ab requests (default 6000)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rate", type=int, default=200, help="samples per second and process (default 200)")
    parser.add_argument("--workers", type=int, help="uvicorn workers (default: the gateway host's vCPUs)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    lab.require_lab_route()
    workers = args.workers or lab.gateway_vcpus()
    lab.RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="lab-profile-") as tmp, lab.gateway_env({}, workers):
        asyncio.run(lab.drive(10, lab.WARMUP_REQUESTS))
        paths, ab, cgroup_seconds = record(host_pids(), args.rate, Path(tmp), args.requests, args.concurrency)
        raw = "".join(path.read_text() for path in paths)  # read once: parsed and kept
        (lab.RESULTS / f"profile-{stamp}.stacks").write_text(raw)
        profile = Profile.parse(raw)
    text = summarize(profile, args, ab, cgroup_seconds, workers)
    (lab.RESULTS / f"profile-{stamp}.md").write_text(text)
    (lab.RESULTS / f"profile-{stamp}.json").write_text(
        json.dumps({"samples": profile.samples, "ours": profile.ours, "parts": dict(profile.parts)}, indent=2)
    )
    print(text)
    print(f"written: results/profile-{stamp}.md, .json, .stacks")


if __name__ == "__main__":
    main()
