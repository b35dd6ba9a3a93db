"""Access to the deployed Docker lab for the load and fault runs (scripts/lab-load, scripts/lab-faults).

Everything goes through ``docker exec`` into the lab's own containers or to the lab's addresses
(192.168.10.18/.19/.20). Temporary gateway settings are applied with a systemd drop-in that
``restore()`` always removes again, so the lab is left as Ansible deployed it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from loadgen import LoadGenerator, Sample

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"


def read_lab_env(path: Path = REPO / ".lab" / "lab.env") -> dict[str, str]:
    """KEY=VALUE lines of .lab/lab.env (written by scripts/lab-deploy); empty when missing."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    # Values may be quoted for the shell (a list of hosts): the quotes are not part of them.
    return {key.strip(): value.strip().strip('"') for key, value in pairs if not key.lstrip().startswith("#")}


LAB_ENV = read_lab_env()
LAB_SECRETS = Path(LAB_ENV.get("LAB_SECRETS_DIR") or REPO / ".lab" / "secrets")
GATEWAY_HOST = LAB_ENV.get("LAB_GATEWAY_HOST", "hx-litellm-server")
POSTGRES_HOST = LAB_ENV.get("LAB_POSTGRES_HOST", "hx-postgres-server")
DB_USER = "litellm_user"  # the gateways' login (inventory/lab: litellm_gateway_db_user)
# The drills and benchmarks measure one gateway (GATEWAY_HOST), so they talk to it directly, not
# through the balancer (LAB_GATEWAY_URL) that would share their requests with the other gateway.
GATEWAY_URL = LAB_ENV.get("LAB_GATEWAY_DIRECT_URL") or LAB_ENV.get(
    "LAB_GATEWAY_URL", "https://192.168.10.18:4000"
)
# The deployment CA that verifies the gateway's certificate (httpx's verify=; True: system CAs).
CA_FILE = LAB_ENV.get("LAB_CA_FILE") or None
TLS_VERIFY: str | bool = CA_FILE or True
GATEWAY_ADDRESS = urlsplit(GATEWAY_URL).hostname or "192.168.10.18"
# Every gateway host and its own URL, in inventory order (the twin rounds of benchmarks/lab/load.py
# load two at once); the first is GATEWAY_HOST.
GATEWAY_HOSTS = tuple(LAB_ENV.get("LAB_GATEWAY_HOSTS", "hx-litellm-server hx-litellm-server-2").split())
GATEWAY_DIRECT_URLS = tuple(
    LAB_ENV.get("LAB_GATEWAY_DIRECT_URLS", "https://192.168.10.18:4000 https://192.168.10.23:4000").split()
)
METRICS_URL = LAB_ENV.get("LAB_METRICS_URL", f"http://{GATEWAY_ADDRESS}:9464/metrics")
METRICS_TOKEN_FILE = Path(LAB_ENV.get("LAB_METRICS_TOKEN_FILE") or LAB_SECRETS / "metrics_token")
LAB_NETWORK = LAB_ENV.get("LAB_NETWORK", "litellm-lab")
LAB_ADDRESSES = tuple(f"192.168.10.{host}" for host in range(18, 26))
SERVICE = "litellm-gateway"
POSTGRES_UNIT = "postgresql@17-main"
DATABASE = "litellm_db"
SPOOL_DIR = "/var/lib/litellm/spool"
MODEL = "gpt-4o-mini"
CHAT_PATH = "/v1/chat/completions"

DROPIN_DIR = f"/etc/systemd/system/{SERVICE}.service.d"
DROPIN_CONF = f"{DROPIN_DIR}/zz-load.conf"
# EnvironmentFile= wins over Environment=, and a later EnvironmentFile over an earlier one:
# the drop-in adds its own file after the deployed litellm.env.
DROPIN_ENV = f"{DROPIN_DIR}/zz-load.env"
HEALTH_TIMEOUT_SECONDS = 180
MAX_WORKERS = 64  # a --workers override beyond this is a typo, not a lab machine


class LabError(RuntimeError):
    pass


def docker_exec(container: str, argv: list[str], stdin: str = "", timeout: float = 120) -> str:
    result = subprocess.run(
        ["docker", "exec", "-i", container, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"{container}: {' '.join(argv[:3])}... failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def lab_bridge() -> str:
    """The Linux bridge of the lab's Docker network (its own name option, else br-<network id>)."""
    result = subprocess.run(
        ["docker", "network", "inspect", LAB_NETWORK], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise LabError(f"no docker network {LAB_NETWORK}: {result.stderr.strip()}")
    network = json.loads(result.stdout)[0]
    if network.get("Driver") != "bridge":
        raise LabError(f"docker network {LAB_NETWORK} is not a bridge network")
    return network.get("Options", {}).get("com.docker.network.bridge.name") or f"br-{network['Id'][:12]}"


def require_lab_route() -> None:
    """Refuse to send traffic unless every lab address routes via the lab's own Docker bridge.

    The traffic rule of these machines: load and fault traffic only to loopback or the lab's
    containers. 192.168.10.0/24 is a common private range; if the lab network is gone, the same
    address could route to a real host on another interface.
    """
    try:
        bridge = lab_bridge()
    except (LabError, OSError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as exc:
        sys.exit(f"refusing to send traffic: cannot find the lab bridge ({exc})")
    for address in LAB_ADDRESSES:
        out = subprocess.run(
            ["ip", "-j", "route", "get", address], capture_output=True, text=True, check=False
        )
        try:
            device = json.loads(out.stdout)[0].get("dev")
        except (ValueError, IndexError):
            device = None
        if device != bridge:
            sys.exit(
                f"refusing to send traffic: {address} routes via {device or out.stderr.strip() or '?'},"
                f" not via {bridge} (bridge of docker network {LAB_NETWORK})"
            )


def require_deployed_lab() -> None:
    """One clear line when the lab is missing, instead of a stack trace later; checks the route too."""
    require_lab_route()
    try:
        state = docker_exec(GATEWAY_HOST, ["systemctl", "is-active", SERVICE], timeout=20).strip()
    except (LabError, OSError, subprocess.TimeoutExpired):
        state = "missing"
    if state != "active" or not (LAB_SECRETS / "test_key").exists():
        sys.exit(f"The lab is not deployed (gateway: {state}). Run scripts/lab-deploy first.")


def test_key() -> str:
    return (LAB_SECRETS / "test_key").read_text().strip()


def lab_key(name: str) -> str:
    """A generated lab secret by file name (test_key, poc_validation_key, rotation_key, ...)."""
    return (LAB_SECRETS / name).read_text().strip()


def chat_status(key: str, timeout: float = 30) -> int:
    """Status of one runbook chat request with this key."""
    headers = {"Authorization": f"Bearer {key}"}
    answer = httpx.post(
        f"{GATEWAY_URL}{CHAT_PATH}", json=chat_payload(), headers=headers, timeout=timeout, verify=TLS_VERIFY
    )
    return answer.status_code


# ansible-playbook against the lab's inventory (what scripts/lab-playbook runs, minus its setup).
PLAYBOOK_ARGV = ("ansible-playbook", "-i", "inventory/lab")


def ansible_env() -> dict[str, str]:
    """The environment of a playbook run against the lab (as scripts/lab-playbook sets it)."""
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_LIBRARY": str(REPO / "library")}
    env.setdefault("LITELLM_LAB_DIR", str(REPO / ".lab"))
    return env


def converge(extra_vars: str | None = None, log: Path | None = None) -> None:
    """The gateway play of the deployment (playbooks/gateway.yml) against the lab's inventory,
    optionally with a vars file (-e @file): what a key change touches, without re-running the
    firewall, PostgreSQL and monitoring plays of a full site.yml converge.
    """
    argv = [*PLAYBOOK_ARGV, "playbooks/gateway.yml"]
    argv += ["-e", f"@{extra_vars}"] if extra_vars else []
    with open(log or os.devnull, "a") as out:
        result = subprocess.run(
            argv, cwd=REPO, env=ansible_env(), stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}); see {log}")


def chat_payload(content: str = "This is a load test message. Please respond briefly.") -> dict:
    """The runbook's Part 5 payload."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 50}


WARMUP_REQUESTS = 200  # on a freshly restarted gateway, before anything is measured
WINDOW_GAP_SECONDS = 2.0  # keeps warm-up rows out of a measured run's time window


async def drive(concurrency: int, total: int, keepalive: bool = True, url: str = GATEWAY_URL) -> list[Sample]:
    """``total`` runbook chat requests with TEST_KEY against one gateway, ``concurrency`` at a time."""
    generator = LoadGenerator(
        url, test_key(), chat_payload(), concurrency, total=total, keepalive=keepalive, verify=TLS_VERIFY
    )
    return await generator.run()


# ---- PostgreSQL ----------------------------------------------------------------------------------


def psql(script: str) -> str:
    """Run SQL as the postgres superuser on the database host; the script (and COPY data) on stdin."""
    argv = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", DATABASE]
    return docker_exec(POSTGRES_HOST, argv, stdin=script).strip()


def postgres(action: str) -> None:
    docker_exec(POSTGRES_HOST, ["systemctl", action, POSTGRES_UNIT])


def postgres_pids() -> list[str]:
    """Every process of the postgres user on the database host (postmaster and backends)."""
    out = docker_exec(POSTGRES_HOST, ["sh", "-c", "pgrep -u postgres || true"])
    return [pid for pid in out.split() if pid.isdigit()]


def postgres_signal(signal: str) -> int:
    """Send STOP or CONT to every postgres process by PID; returns how many got it.

    SIGSTOP freezes PostgreSQL without closing any connection: the kernel still accepts and
    acknowledges TCP, nothing answers (a hung database, not a refusing one).
    """
    if signal not in ("STOP", "CONT"):
        raise ValueError(signal)
    pids = postgres_pids()
    if pids:
        docker_exec(POSTGRES_HOST, ["kill", f"-{signal}", *pids])
    return len(pids)


def postgres_ready(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            psql("SELECT 1")
            return
        except LabError:
            time.sleep(0.5)
    raise LabError("PostgreSQL did not answer after start")


def account(client_status: dict[str, int]) -> dict[str, int]:
    """Compare request ids the clients received with the rows in ``requests``.

    lost = answered requests without a row; duplicated = rows beyond one per request id;
    status_mismatch = rows whose status_code differs from what the client received;
    without_status = rows holding only the usage callback's record (the middleware's, which
    carries the status, never arrived: only possible when records were dropped).
    """
    names = ("sent", "rows", "found", "lost", "duplicated", "status_mismatch", "without_status")
    if not client_status:
        return dict.fromkeys((*names, "without_responses_row"), 0)
    out = psql(
        _sent_table(client_status) + "SELECT count(r.id), count(DISTINCT r.request_id),"
        " count(r.id) FILTER (WHERE r.status_code IS DISTINCT FROM s.status),"
        " count(r.id) FILTER (WHERE r.status_code IS NULL),"
        " count(r.id) FILTER (WHERE NOT EXISTS"
        " (SELECT 1 FROM responses p WHERE p.request_id_fk = r.id))"
        " FROM sent s JOIN requests r ON r.request_id = s.request_id;\n"
    )
    rows, found, mismatch, without_status, no_response = (int(v) for v in out.splitlines()[-1].split("|"))
    return {
        "sent": len(client_status),
        "rows": rows,
        "found": found,
        "lost": len(client_status) - found,
        "duplicated": rows - found,
        "status_mismatch": mismatch,
        "without_status": without_status,
        "without_responses_row": no_response,
    }


def _sent_table(client_status: dict[str, int]) -> str:
    """psql script lines loading the ids and statuses into the temporary table ``sent``."""
    data = "".join(f"{rid}\t{status}\n" for rid, status in client_status.items())
    return f"CREATE TEMP TABLE sent (request_id text, status int);\nCOPY sent FROM STDIN;\n{data}\\.\n"


def found_ids(client_status: dict[str, int]) -> set[str]:
    """The ids among client_status that have a row in ``requests``."""
    if not client_status:
        return set()
    out = psql(
        _sent_table(client_status) + "SELECT s.request_id FROM sent s JOIN requests r USING (request_id);\n"
    )
    return set(out.split())


def wait_for_rows(client_status: dict[str, int], timeout: float = 120, quiet: float = 20) -> dict[str, int]:
    """Account once the writer drained: every id found, or no progress for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, last_change = None, time.monotonic()
    while True:
        try:
            counts = account(client_status)
        except LabError:  # PostgreSQL may still be starting
            counts = None
        if counts and counts["lost"] == 0 and counts["without_responses_row"] == 0:
            return counts
        if counts != last:
            last, last_change = counts, time.monotonic()
        if time.monotonic() > deadline or (counts and time.monotonic() - last_change > quiet):
            if counts is None:
                raise LabError("cannot count rows: PostgreSQL does not answer")
            return counts
        time.sleep(1)


def rows_between(start: float, end: float, alias: str = "TEST_KEY") -> dict[str, int]:
    """Chat rows of one key (by alias) created in [start, end] (epoch seconds): for runs without
    ids (ab)."""
    if not re.fullmatch(r"[A-Z_]+", alias):
        raise ValueError(f"refusing key alias {alias!r}")
    out = psql(
        "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status_code = 200)"
        f" FROM requests WHERE created_at BETWEEN to_timestamp({start:.6f}) AND to_timestamp({end:.6f})"
        f" AND route = '{CHAT_PATH}' AND api_key = '{alias}'"
    )
    rows, distinct, ok = (int(v) for v in out.split("|"))
    return {"rows": rows, "distinct": distinct, "status_200": ok}


def wait_for_window_rows(start: float, end: float, expected: int, timeout: float = 90) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = rows_between(start, end)
        if counts["rows"] >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(1)


def gateway_connections() -> int:
    return int(
        psql(
            "SELECT count(*) FROM pg_stat_activity"
            f" WHERE usename = '{DB_USER}' AND client_addr = '{GATEWAY_ADDRESS}'"
        )
    )


# ---- the gateway service -----------------------------------------------------------------------


def service_show(*properties: str, host: str = GATEWAY_HOST) -> dict[str, str]:
    argv = ["systemctl", "show", SERVICE, *(f"--property={p}" for p in properties)]
    out = docker_exec(host, argv)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def gateway_workers(host: str = GATEWAY_HOST) -> int:
    """The worker count in effect (uvicorn --workers in the unit's ExecStart, drop-ins included)."""
    exec_start = docker_exec(host, ["systemctl", "show", "-p", "ExecStart", "--value", SERVICE])
    match = re.search(r"--workers (\d+)", exec_start)
    return int(match.group(1)) if match else 1


def deployed_exec_start(host: str = GATEWAY_HOST) -> str:
    """The ExecStart= command line of the deployed unit file (not of any drop-in)."""
    fragment = docker_exec(host, ["systemctl", "show", "-p", "FragmentPath", "--value", SERVICE])
    unit = docker_exec(host, ["cat", fragment.strip()])
    lines = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    if len(lines) != 1:
        raise LabError(f"{fragment.strip()}: expected one ExecStart= line, found {len(lines)}")
    return lines[0]


def with_workers(exec_start: str, workers: int) -> str:
    """The same command line with only its ``--workers N`` value replaced (exactly one allowed)."""
    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"refusing worker count {workers!r}")
    if "\n" in exec_start or len(re.findall(r"(?<!\S)--workers \d+(?!\S)", exec_start)) != 1:
        raise ValueError(f"refusing ExecStart without exactly one --workers N: {exec_start!r}")
    return re.sub(r"(?<!\S)--workers \d+(?!\S)", f"--workers {workers}", exec_start)


def gateway_vcpus() -> int:
    """The gateway host's vCPUs as its own ``nproc`` sees them."""
    return int(docker_exec(GATEWAY_HOST, ["nproc"]).strip())


def wait_healthy(timeout: float = HEALTH_TIMEOUT_SECONDS, url: str = GATEWAY_URL) -> float:
    """Seconds until the gateway at ``url`` answers /health/liveliness from this machine."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"{url}/health/liveliness", timeout=2, verify=TLS_VERIFY).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise LabError(f"the gateway at {url} did not become healthy within {timeout} s")


def gateway_url(host: str) -> str:
    """The direct URL of a gateway host (GATEWAY_HOSTS and GATEWAY_DIRECT_URLS pair up)."""
    if host == GATEWAY_HOST:
        return GATEWAY_URL
    return dict(zip(GATEWAY_HOSTS, GATEWAY_DIRECT_URLS, strict=False))[host]


def restart_gateway(host: str = GATEWAY_HOST) -> float:
    docker_exec(host, ["systemctl", "daemon-reload"])
    docker_exec(host, ["systemctl", "restart", SERVICE])
    return wait_healthy(url=gateway_url(host))


def dropin_conf(workers_exec_start: str | None = None) -> str:
    """The drop-in: the extra environment file and, optionally, a replaced ExecStart."""
    conf = f"# Temporary (benchmarks/lab); removed by restore().\n[Service]\nEnvironmentFile={DROPIN_ENV}\n"
    if workers_exec_start is not None:
        conf += f"ExecStart=\nExecStart={workers_exec_start}\n"  # the empty one resets the unit's
    return conf


def apply_gateway_env(
    overrides: dict[str, str], workers: int | None = None, host: str = GATEWAY_HOST
) -> float:
    """Restart a gateway with extra environment (and optionally another uvicorn --workers count)
    from a drop-in; returns seconds to healthy."""
    for name, value in overrides.items():
        if not re.fullmatch(r"LITELLM_PGLOG_[A-Z_]+", name) or not re.fullmatch(r"[\w.\-]+", value):
            raise ValueError(f"refusing drop-in setting {name}={value!r}")
    env = "".join(f"{name}={value}\n" for name, value in overrides.items())
    conf = dropin_conf(None if workers is None else with_workers(deployed_exec_start(host), workers))
    script = (
        f"set -e; umask 022; mkdir -p {DROPIN_DIR}; "
        f"printf '%s' \"$1\" > {DROPIN_ENV}; printf '%s' \"$2\" > {DROPIN_CONF}"
    )
    docker_exec(host, ["sh", "-c", script, "sh", env, conf])
    seconds = restart_gateway(host)
    if workers is not None and gateway_workers(host) != workers:
        raise LabError(f"{host}: the drop-in did not set --workers {workers}")
    return seconds


def restore() -> bool:
    """Remove the drop-ins (restarting those gateways) and make sure PostgreSQL runs; True if changed."""
    postgres_signal("CONT")  # a hang drill interrupted while PostgreSQL was frozen
    postgres("start")
    changed = False
    for host in GATEWAY_HOSTS:
        present = docker_exec(host, ["sh", "-c", f"ls {DROPIN_CONF} {DROPIN_ENV} 2>/dev/null || true"])
        active = docker_exec(host, ["sh", "-c", f"systemctl is-active {SERVICE} || true"]).strip()
        if not present.strip() and active == "active":
            continue
        docker_exec(host, ["rm", "-f", DROPIN_CONF, DROPIN_ENV])
        docker_exec(host, ["sh", "-c", f"rmdir {DROPIN_DIR} 2>/dev/null || true"])
        restart_gateway(host)
        changed = True
    return changed


@contextmanager
def gateway_env(overrides: dict[str, str], workers: int | None = None) -> Iterator[float]:
    try:
        yield apply_gateway_env(overrides, workers)
    finally:
        restore()


CPU_CGROUPS = {
    "gateway": (GATEWAY_HOST, f"/sys/fs/cgroup/system.slice/{SERVICE}.service/cpu.stat"),
    "postgres": (POSTGRES_HOST, "/sys/fs/cgroup/system.slice/system-postgresql.slice/cpu.stat"),
    "stub": ("llm-upstream", "/sys/fs/cgroup/system.slice/llm-stub.service/cpu.stat"),
}


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by the gateway, PostgreSQL and stub services (their cgroups' cpu.stat)."""
    return {name: cgroup_cpu_seconds(container, path) for name, (container, path) in CPU_CGROUPS.items()}


def cgroup_cpu_seconds(container: str, path: str) -> float:
    usage = re.search(r"^usage_usec (\d+)", docker_exec(container, ["cat", path]), re.MULTILINE)
    if usage is None:
        raise LabError(f"{container}: no usage_usec in {path}")
    return int(usage.group(1)) / 1e6


def gateway_cpu_seconds(host: str) -> float:
    """CPU time used so far by one gateway host's service."""
    return cgroup_cpu_seconds(host, CPU_CGROUPS["gateway"][1])


# PostgreSQL's processes by what they do, from their titles ("postgres: 17/main: walsender ...");
# the first part whose marker is in a title takes the process. Order matters: a backend of the
# gateway's user is the logging writer's, whatever state its title shows.
POSTGRES_PARTS = (
    ("logging writer backends", (f" {DB_USER} ",)),
    ("WAL sender (standby)", ("walsender",)),
    ("archiver", ("archiver",)),
    ("WAL writer, checkpointer, bgwriter", ("walwriter", "checkpointer", "background writer")),
    ("autovacuum", ("autovacuum",)),
)
POSTGRES_OTHER = "other live processes (exporter, logger, postmaster)"
# Processes that ended inside the window, by who waited for them: the kernel adds an ended
# child's CPU to its parent's (cutime, cstime), so the archiver's children are the archive_command
# runs and the postmaster's are closed connections and autovacuum workers.
POSTGRES_ENDED = (
    ("ended: archive_command runs (pgbackrest archive-push)", ("archiver",)),
    ("ended: connections, autovacuum workers", ("bin/postgres",)),
)
POSTGRES_EXITED = "ended: other"
# Run on the database host: own CPU ticks, waited-for children's ticks and title of every
# process of the PostgreSQL slice.
_PROCESS_TICKS = """
import json, os
found = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if "system-postgresql.slice" not in open(f"/proc/{pid}/cgroup").read():
            continue
        stat = open(f"/proc/{pid}/stat").read()
        title = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
    except OSError:
        continue
    fields = stat[stat.rindex(")") + 2:].split()
    found[pid] = [int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), title]
print(json.dumps({"hz": os.sysconf("SC_CLK_TCK"), "processes": found}))
"""


@dataclass(frozen=True)
class PostgresProcess:
    """One live process of the database host's PostgreSQL, CPU seconds so far."""

    own: float
    children: float  # of its children that ended and were waited for
    title: str


def postgres_processes() -> dict[str, PostgresProcess]:
    """pid -> PostgresProcess for every live process of the database host's PostgreSQL."""
    found = json.loads(docker_exec(POSTGRES_HOST, ["python3", "-"], stdin=_PROCESS_TICKS))
    hz = found["hz"]
    return {
        pid: PostgresProcess(own / hz, children / hz, title)
        for pid, (own, children, title) in found["processes"].items()
    }


def _classify(title: str, parts: tuple[tuple[str, tuple[str, ...]], ...], default: str) -> str:
    return next((part for part, markers in parts if any(marker in title for marker in markers)), default)


def postgres_cpu_parts(
    before: dict[str, PostgresProcess], after: dict[str, PostgresProcess], total: float
) -> dict[str, float]:
    """CPU seconds of one window by part (POSTGRES_PARTS, POSTGRES_ENDED), from two
    postgres_processes() readings and the slice's total over the same window; whatever the
    readings do not explain (a parent that ended too, rounding) is the last part."""
    parts: dict[str, float] = {}

    def add(part: str, seconds: float) -> None:
        parts[part] = parts.get(part, 0.0) + seconds

    for pid, now in after.items():
        then = before.get(pid, PostgresProcess(0.0, 0.0, now.title))
        add(_classify(now.title, POSTGRES_PARTS, POSTGRES_OTHER), now.own - then.own)
        add(_classify(now.title, POSTGRES_ENDED, POSTGRES_EXITED), now.children - then.children)
    parts.pop(POSTGRES_EXITED, None)
    parts[POSTGRES_EXITED] = max(0.0, total - sum(parts.values()))
    return parts


@dataclass(frozen=True)
class JournalLine:
    """One journal entry: its syslog priority (3 err, 4 warning, 6 info...) and its message."""

    priority: int
    text: str

    @classmethod
    def from_json(cls, line: str) -> JournalLine:
        entry = json.loads(line)
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald sends a message that is not UTF-8 as bytes
            message = bytes(message).decode(errors="replace")
        return cls(int(entry.get("PRIORITY", 6)), message)


def journal_since(since_epoch: float) -> list[JournalLine]:
    """The gateway's journal entries (on the gateway host) since an epoch time, with priorities."""
    argv = ["journalctl", "-u", SERVICE, "--no-pager", f"--since=@{int(since_epoch)}"]
    argv += ["-o", "json", "--output-fields=MESSAGE,PRIORITY"]
    return [JournalLine.from_json(line) for line in docker_exec(GATEWAY_HOST, argv).splitlines() if line]


def metrics_text() -> str:
    """All workers' metrics, from the exporter, with the scrape token."""
    headers = {"Authorization": f"Bearer {METRICS_TOKEN_FILE.read_text().strip()}"}
    answer = httpx.get(METRICS_URL, headers=headers, timeout=10)
    answer.raise_for_status()
    return answer.text


def metric(name: str) -> float:
    text = metrics_text()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def spooled_records() -> list[str]:
    """The request id of every record in the gateway's spool files right now (one per record)."""
    script = f"cat {SPOOL_DIR}/pglog-*.jsonl 2>/dev/null || true"
    out = docker_exec(GATEWAY_HOST, ["sh", "-c", script])
    return re.findall(r'"request_id":"([0-9a-f-]{36})"', out)


def spooled_request_ids() -> set[str]:
    """Request ids in the gateway's spool files right now."""
    return set(spooled_records())


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine_description() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return f"{os.cpu_count()} vCPU {cpu}, {mem_kb / 1024 / 1024:.0f} GiB RAM, one host for all lab containers"


if __name__ == "__main__":
    # `python benchmarks/lab/labctl.py restore`: the shell entry points' trap.
    if sys.argv[1:] == ["restore"]:
        print("lab restored (drop-in removed, gateway restarted)" if restore() else "lab already as deployed")
    elif sys.argv[1:] == ["check"]:
        require_deployed_lab()
    elif sys.argv[1:] == ["route"]:
        require_lab_route()
    else:
        sys.exit("usage: labctl.py restore|check|route")
