"""Shared helpers for the lab's testinfra checks (run by `molecule verify`).

Hosts are reached the way molecule reaches them (docker exec). Secrets are read
from the lab's generated, git-ignored secret files and only ever passed on
standard input, never in a command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import testinfra

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("LITELLM_LAB_DIR", REPO / ".lab"))

POSTGRES_HOST = "hx-postgres-server"
GATEWAY_HOST = "hx-litellm-server"
UPSTREAM_HOST = "llm-upstream"
MONITORING_HOST = "hx-monitoring-server"
BACKUP_HOST = "hx-backup-server"
# Issue 13: the hot standby, the second gateway and the load balancer.
STANDBY_HOST = "hx-postgres-standby"
GATEWAY2_HOST = "hx-litellm-server-2"
BALANCER_HOST = "hx-loadbalancer"
STANDBY_ADDRESS = "192.168.10.25"
GATEWAY2_ADDRESS = "192.168.10.23"
BALANCER_ADDRESS = "192.168.10.24"
POSTGRES_ADDRESS = "192.168.10.19"
GATEWAY_ADDRESS = "192.168.10.18"
DATABASE = "litellm_db"
DB_USER = "litellm_user"
GATEWAY_PYTHON = "/opt/litellm/venv/bin/python"

# Connects with psycopg2 and runs one statement; the password arrives on stdin.
_PSYCOPG_PROBE = """
import sys, psycopg2
password = sys.stdin.readline().rstrip("\\n")
host, dbname, user, sslmode, rootcert, *statements = sys.argv[1:]
try:
    conn = psycopg2.connect(host=host, dbname=dbname, user=user, password=password, connect_timeout=5,
                            sslmode=sslmode, sslrootcert=rootcert)
except psycopg2.OperationalError as exc:
    print(str(exc).strip().splitlines()[-1] if str(exc).strip() else "connection failed")
    sys.exit(3)
conn.autocommit = True
with conn.cursor() as cur:
    for sql in statements:
        cur.execute(sql)
        if cur.description:
            for row in cur.fetchall():
                print("|".join("" if v is None else str(v) for v in row))
"""

# Sends a PostgreSQL StartupMessage with the standard library only and prints the
# server's first answer: R (authentication requested) or E (refused, with why).
_STARTUP_PROBE = """
import socket, struct, sys
host, user, db = sys.argv[1:4]
params = b"user\\0" + user.encode() + b"\\0database\\0" + db.encode() + b"\\0\\0"
with socket.create_connection((host, 5432), timeout=5) as s:
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    data = s.recv(4096)
print(data[:1].decode(), data[5:].replace(b"\\0", b" ").decode(errors="replace"))
"""


class Secret(str):
    """A string whose repr is redacted, so a failing test never prints it."""

    def __repr__(self) -> str:
        return "Secret('***')"


class ScannedText(str):
    """A text searched for secrets (a log, a process list): its repr gives only its size, so a test
    that fails because the text holds a secret does not print the secret with it."""

    def __repr__(self) -> str:
        return f"ScannedText(<{len(self)} characters>)"


def lab_secret(name: str) -> Secret:
    return Secret((LAB_DIR / "secrets" / name).read_text().strip())


def docker_exec(container: str, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", "-i", container, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sql_as_postgres(sql: str, host: str = POSTGRES_HOST) -> str:
    """Run SQL on a database host (default the primary) as the postgres superuser (peer auth)."""
    psql = ["runuser", "-u", "postgres", "--", "psql", "-d", DATABASE, "-XAtq", "-c", sql]
    result = docker_exec(host, psql)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def logged_rows(call_ids: list[str], timeout: float = 30.0) -> dict[str, dict]:
    """request_id -> its row (status, api_key, route, model, error_type, error_message, responses rows).

    Text columns that may hold anything (model, error_message) travel hex-encoded.
    """
    assert all(re.fullmatch(r"[0-9a-f-]{36}", call_id) for call_id in call_ids)
    quoted = ", ".join(f"'{call_id}'" for call_id in call_ids)
    sql = (
        "SELECT req.request_id, req.status_code, coalesce(req.api_key, ''), req.route,"
        " encode(convert_to(coalesce(req.model, ''), 'UTF8'), 'hex'), coalesce(req.error_type, ''),"
        " encode(convert_to(coalesce(req.error_message, ''), 'UTF8'), 'hex'),"
        " count(r.id), (SELECT count(*) FROM requests d"
        " WHERE d.request_id = req.request_id) FROM requests req"
        " LEFT JOIN responses r ON r.request_id_fk = req.id"
        f" WHERE req.request_id IN ({quoted}) GROUP BY req.id, req.created_at"
    )
    deadline = time.monotonic() + timeout
    while True:
        rows = {}
        for line in filter(None, sql_as_postgres(sql).splitlines()):
            request_id, status, api_key, route, model, error_type, error_message, responses, copies = (
                line.split("|")
            )
            rows[request_id] = {
                "status": int(status),
                "api_key": api_key,
                "route": route,
                "model": bytes.fromhex(model).decode(),
                "error_type": error_type,
                "error_message": bytes.fromhex(error_message).decode(),
                "responses": int(responses),
                "copies": int(copies),
            }
        if len(rows) == len(call_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


GATEWAY_CA_FILE = "/etc/ssl/litellm/ca.crt"


def sql_from_gateway(
    password: Secret, *statements: str, sslmode: str = "verify-full", rootcert: str = GATEWAY_CA_FILE
) -> subprocess.CompletedProcess[str]:
    """Run statements as litellm_user over TCP from the gateway host, with the venv's psycopg2
    (by default as the gateway connects: TLS, the server's certificate checked against the CA).
    """
    argv = [POSTGRES_ADDRESS, DATABASE, DB_USER, sslmode, rootcert, *statements]
    return docker_exec(
        GATEWAY_HOST,
        [GATEWAY_PYTHON, "-c", _PSYCOPG_PROBE, *argv],
        stdin=password + "\n",
    )


def startup_probe(from_container: str) -> str:
    """What the server answers a connection attempt from that host, before any password."""
    argv = ["python3", "-c", _STARTUP_PROBE, POSTGRES_ADDRESS, DB_USER, DATABASE]
    result = docker_exec(from_container, argv)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="session")
def pg_host():
    return testinfra.get_host(f"docker://{POSTGRES_HOST}")


@pytest.fixture(scope="session")
def gateway_host():
    return testinfra.get_host(f"docker://{GATEWAY_HOST}")


@pytest.fixture(scope="session")
def db_password() -> Secret:
    return lab_secret("db_password")


# -- helpers for tests/infra/test_security.py ---------------------------------------------------

LAB_CONTAINERS = (POSTGRES_HOST, GATEWAY_HOST, UPSTREAM_HOST, MONITORING_HOST, BACKUP_HOST)
LAB_CONTAINERS += (STANDBY_HOST, GATEWAY2_HOST, BALANCER_HOST)

# Lists the regular files of the whole filesystem that are readable by "other" and contain any of
# the secrets read from stdin (one per line). Like `find / -xdev`: the root filesystem without
# descending into other mounts (/proc, /sys, /dev and any other mount point are skipped), plus the
# extra roots given as arguments (tmpfs /run, the docker-mounted caches), each walked the same way.
# Prints the number of files read, then the paths found, never content.
_WORLD_READABLE_SECRET_SCAN = """
import os, stat, sys
secrets = [line.rstrip("\\n").encode() for line in sys.stdin if line.strip()]
skipped = {"/proc", "/sys", "/dev"}
scanned, found = 0, []
for root in ["/", *sys.argv[1:]]:
    if not os.path.isdir(root):
        continue
    device = os.lstat(root).st_dev
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [
            d for d in subdirs
            if os.path.join(directory, d) not in skipped
            and os.lstat(os.path.join(directory, d)).st_dev == device
        ]
        for name in files:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode) or not info.st_mode & stat.S_IROTH:
                    continue
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            scanned += 1
            if any(secret in data for secret in secrets):
                found.append(path)
print(scanned)
print("\\n".join(found))
"""


@pytest.fixture(scope="session")
def secrets() -> dict[str, Secret]:
    """Every generated lab secret, in each form it is written in (the URL form of the password too).

    The master key file holds the part after "sk-", so searching for it finds the full key as well.
    """
    names = ("db_password", "master_key", "upstream_api_key", "test_key", "poc_validation_key")
    names += ("metrics_token", "pgbackrest_cipher_pass", "replication_password")
    found = {name: lab_secret(name) for name in names}
    found["db_password (URL-encoded)"] = Secret(quote(found["db_password"], safe=""))
    return found


def secrets_in(text: str, secrets: dict[str, Secret]) -> list[str]:
    """Names (never values) of the secrets that appear in text."""
    return [name for name, value in secrets.items() if value in text]


# Mounts that `-xdev` alone would skip but that hold files: the tmpfs /run and the docker-mounted
# caches of molecule.yml (apt archives, pip cache).
EXTRA_SCAN_ROOTS = ["/run", "/var/cache/apt/archives", "/root/.cache/pip"]


def world_readable_files_with_secrets(container: str, secrets: dict[str, Secret]) -> tuple[int, list[str]]:
    """(files read, world-readable files holding a secret) over the host's whole filesystem."""
    stdin = "".join(value + "\n" for value in secrets.values())
    argv = ["python3", "-c", _WORLD_READABLE_SECRET_SCAN, *EXTRA_SCAN_ROOTS]
    result = subprocess.run(
        ["docker", "exec", "-i", container, *argv], input=stdin, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    scanned, *paths = result.stdout.splitlines()
    return int(scanned), [path for path in paths if path]


# -- requests from a client host ------------------------------------------------------------

LAB_CLIENT = (Path(__file__).with_name("lab_client.py")).read_text()
GATEWAY_URL = f"https://{GATEWAY_ADDRESS}:4000"
# The deployment CA (roles/pki) that the lab's clients trust.
CA_FILE = LAB_DIR / "pki" / "ca.crt"


def lab_requests(
    requests: list[dict],
    parallel: int = 1,
    base: str = GATEWAY_URL,
    timeout: float = 120,
    client: str = UPSTREAM_HOST,
) -> list[dict]:
    """Send requests from a lab host (default llm-upstream, a client of the gateway), ``parallel``
    at a time; HTTPS is verified against the deployment CA.

    A request's "key" names a lab secret (test_key, poc_validation_key, master_key, metrics_token)
    or is sent literally; every key travels on stdin. Returns one answer per request, in order.
    """
    names = {spec["key"] for spec in requests if spec.get("key")}
    known = {name: _full_key(name) for name in names if (LAB_DIR / "secrets" / name).exists()}
    batch = {"base": base, "parallel": parallel, "timeout": timeout, "keys": known, "requests": requests}
    if base.startswith("https:"):
        batch["ca"] = CA_FILE.read_text()
    result = docker_exec(client, ["python3", "-c", LAB_CLIENT], stdin=json.dumps(batch))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _full_key(name: str) -> str:
    # The master key file holds the part after "sk-" (see the secrets fixture).
    return ("sk-" if name == "master_key" else "") + lab_secret(name)
