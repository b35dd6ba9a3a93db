"""Shared helpers of the HA drills: addresses, secrets, load, log rows.

They run against the lab of scripts/lab-deploy (network litellm-lab). Traffic goes only to the
lab's containers: ``check_routes`` refuses to send anything unless every destination routes via its
Docker bridge. Secrets are read from the lab directory and never printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
PORT = 4000


# The lab of scripts/lab-deploy (molecule/default, network litellm-lab).
NETWORK = "litellm-lab"
BALANCER, BALANCER_HOST = "192.168.10.24", "hx-loadbalancer"  # clients connect to the balancer
GATEWAYS = {"hx-litellm-server": "192.168.10.18", "hx-litellm-server-2": "192.168.10.23"}
PRIMARY, STANDBY = "hx-postgres-server", "hx-postgres-standby"
LAB_DIR = Path(os.environ.get("LITELLM_LAB_DIR") or REPO / ".lab")  # pki/ca.crt, secrets/
INVENTORY = str(REPO / "inventory" / "lab")
CA_FILE = LAB_DIR / "pki" / "ca.crt"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello, HA"}], "max_tokens": 5}


def secret(name: str) -> str:
    return (LAB_DIR / "secrets" / name).read_text().strip()


def check_routes(*addresses: str) -> None:
    """Refuse to run unless every address routes via the lab network's bridge."""
    net_id = subprocess.run(
        ["docker", "network", "inspect", "-f", "{{.Id}}", NETWORK], check=True, capture_output=True, text=True
    ).stdout.strip()
    bridge = "br-" + net_id[:12]
    for address in addresses or (BALANCER, *GATEWAYS.values()):
        route = subprocess.run(
            ["ip", "route", "get", address], check=True, capture_output=True, text=True
        ).stdout
        if f"dev {bridge} " not in route + " ":
            raise SystemExit(
                f"refusing to send traffic: {address} does not route via {bridge} ({route.strip()})"
            )


def psql(sql: str, host: str = PRIMARY) -> list[list[str]]:
    """Run SQL as postgres inside a database container (unaligned, tab-separated rows)."""
    out = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            host,
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-d",
            "litellm_db",
            "-XAtF\t",
        ],
        input=sql,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def client(timeout: float = 30.0) -> httpx.AsyncClient:
    # One TCP connection per request: HAProxy balances connections (TLS passed through), and a
    # drained gateway must not keep a client's keep-alive connection.
    return httpx.AsyncClient(
        verify=str(CA_FILE),
        timeout=timeout,
        limits=httpx.Limits(max_keepalive_connections=0, max_connections=256),
        headers={"Authorization": "Bearer " + secret("test_key")},
    )


@dataclass
class LoadResult:
    ids: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.ids) / self.seconds if self.seconds else 0.0


async def load(
    base: str, stop: threading.Event | None, concurrency: int, duration: float | None = None
) -> LoadResult:
    """Send chat completions until ``stop`` is set (or for ``duration`` s); record call ids."""
    result = LoadResult()
    started = time.monotonic()

    def done() -> bool:
        if stop is not None and stop.is_set():
            return True
        return duration is not None and time.monotonic() - started >= duration

    async with client() as http:

        async def worker() -> None:
            while not done():
                result.sent += 1
                try:
                    response = await http.post(base + "/v1/chat/completions", json=CHAT)
                except httpx.HTTPError as exc:
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                call_id = response.headers.get("x-litellm-call-id", "")
                if response.status_code != 200 or not call_id:
                    result.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                result.ids.append(call_id)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - started
    return result


class BackgroundLoad:
    """``load`` in a thread: ``start()``, then ``finish()`` returns its LoadResult."""

    def __init__(self, base: str, concurrency: int) -> None:
        self.stop = threading.Event()
        self._result: LoadResult | None = None
        self._thread = threading.Thread(target=self._run, args=(base, concurrency), daemon=True)

    def _run(self, base: str, concurrency: int) -> None:
        self._result = asyncio.run(load(base, self.stop, concurrency))

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def finish(self) -> LoadResult:
        self.stop.set()
        self._thread.join()
        assert self._result is not None
        return self._result


def rows_for(ids: list[str], host: str = PRIMARY, timeout: float = 180.0) -> tuple[set[str], int, float]:
    """Wait until every id has a requests row; return (missing ids, duplicated ids, seconds waited)."""
    started = time.monotonic()
    wanted = set(ids)
    if any(not re.fullmatch(r"[0-9A-Za-z_.:-]+", i) for i in wanted):
        raise ValueError("unexpected characters in a call id")
    values = ",".join(f"('{i}')" for i in wanted)
    sql = (
        f"CREATE TEMP TABLE want(id text); INSERT INTO want VALUES {values};"
        " SELECT w.id, count(r.request_id) FROM want w"
        " LEFT JOIN requests r ON r.request_id::text = w.id GROUP BY w.id;"
    )
    while True:
        counts = {row[0]: int(row[1]) for row in psql(sql, host) if len(row) == 2}
        missing = {i for i in wanted if counts.get(i, 0) == 0}
        duplicated = sum(1 for n in counts.values() if n > 1)
        if not missing or time.monotonic() - started > timeout:
            return missing, duplicated, time.monotonic() - started
        time.sleep(2)


def ansible_playbook(playbook: str, *args: str) -> tuple[int, str]:
    """Run a repository playbook against the lab's inventory."""
    env = dict(os.environ)
    env.setdefault("ANSIBLE_ROLES_PATH", str(REPO / "roles"))
    env.setdefault("ANSIBLE_LIBRARY", str(REPO / "library"))
    env.setdefault("ANSIBLE_PIPELINING", "True")
    env["LITELLM_LAB_DIR"] = str(LAB_DIR)
    env["ANSIBLE_STDOUT_CALLBACK"] = "default"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    proc = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(REPO / "playbooks" / playbook), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode, proc.stdout + proc.stderr


def readiness(address: str) -> dict:
    with httpx.Client(verify=str(CA_FILE), timeout=3) as http:
        return http.get(f"https://{address}:{PORT}/health/readiness").json()


def report(title: str, figures: dict) -> None:
    print(title + ": " + json.dumps(figures, sort_keys=True))
