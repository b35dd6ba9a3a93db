"""Start the upstream stub and a real LiteLLM proxy process (uvicorn) for the gateway tests.

Only the upstream LLM is a stub: the proxy is ``python -m uvicorn litellm_pglog.asgi:app`` in a
subprocess with a generated config.yaml, a keys file with random keys and a spool directory,
logging to the PostgreSQL database it is given. Also used by benchmarks/gateway_bench.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import litellm_pglog
from litellm_pglog.models import Request, Response
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select

REPO = Path(__file__).resolve().parents[2]
STUB_SCRIPT = REPO / "roles" / "llm_stub" / "files" / "openai_stub.py"
PACKAGE_ROOT = Path(litellm_pglog.__file__).resolve().parents[1]  # the proxy runs the code tests import
PROXY_APP = "litellm_pglog.asgi:app"
PLAIN_LITELLM_APP = "litellm.proxy.proxy_server:app"
CHAT_MODEL = "gpt-4o-mini"
ERROR_MODEL = "stub-error-500"
SLOW_MODEL = "stub-slow"  # the stub answers it after SLOW_MODEL_MS
SLOW_MODEL_MS = 2000
START_TIMEOUT_SECONDS = 120
# LiteLLM builds a Prisma DATABASE_URL from these; the proxy must never see them.
PRISMA_TRIGGERS = ("DATABASE_URL", "DATABASE_HOST", "DATABASE_USERNAME", "DATABASE_PASSWORD", "DATABASE_NAME")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout} s:\n{tail(log_path)}")


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "<no log>"


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Stub:
    """The stdlib OpenAI-compatible upstream, requiring its own API key like the real one."""

    workdir: Path
    latency_ms: float = 0
    api_key: str = field(default_factory=lambda: f"stub-{secrets.token_urlsafe(16)}")
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log_path(self) -> Path:
        return self.workdir / "stub.log"

    def start(self) -> Stub:
        command = [
            sys.executable,
            str(STUB_SCRIPT),
            "--port",
            str(self.port),
            "--latency-ms",
            str(self.latency_ms),
        ]
        env = {**os.environ, "STUB_API_KEY": self.api_key}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(f"http://127.0.0.1:{self.port}/health", self.process, self.log_path, 30)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@dataclass(frozen=True)
class GatewayKeys:
    """Random client keys (never written to disk in clear) plus the master key."""

    test_key: str = field(default_factory=lambda: f"tk-{secrets.token_urlsafe(24)}")
    poc_key: str = field(default_factory=lambda: f"pk-{secrets.token_urlsafe(24)}")
    master_key: str = field(default_factory=lambda: f"mk-{secrets.token_urlsafe(24)}")

    def keys_file_content(self) -> str:
        entries = [
            {"alias": "TEST_KEY", "user_id": "poc-tester", "sha256": sha256_hex(self.test_key)},
            {"alias": "POC_VALIDATION_KEY", "user_id": "poc-validator", "sha256": sha256_hex(self.poc_key)},
        ]
        return json.dumps({"keys": entries}, indent=2)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def proxy_config(stub: Stub, with_logging: bool = True) -> dict:
    def deployment(name: str, upstream_model: str) -> dict:
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{upstream_model}",
                "api_base": stub.api_base,
                "api_key": "os.environ/OPENAI_API_KEY",
            },
        }

    callbacks = ["litellm_pglog.callbacks.usage_logger", "prometheus"] if with_logging else ["prometheus"]
    return {
        "model_list": [
            deployment(CHAT_MODEL, "stub-model"),
            deployment(ERROR_MODEL, ERROR_MODEL),
            deployment(SLOW_MODEL, f"stub-slow-{SLOW_MODEL_MS}"),
        ],
        "general_settings": {"custom_auth": "litellm_pglog.auth.user_api_key_auth"},
        "litellm_settings": {
            "callbacks": callbacks,
            "num_retries": 0,
            "require_auth_for_metrics_endpoint": False,
        },
    }


@dataclass
class Gateway:
    """A real LiteLLM proxy process; ``restart`` keeps its config, keys and spool directory."""

    workdir: Path
    stub: Stub
    db_url: str
    keys: GatewayKeys = field(default_factory=GatewayKeys)
    app: str = PROXY_APP
    # PROMETHEUS_MULTIPROC_DIR: emptied at every start, as systemd's RuntimeDirectory= does.
    multiproc_dir: Path | None = None
    workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    # Merged into the generated config.yaml, one level deep (e.g. {"router_settings": {...}}).
    config_overrides: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spool_dir(self) -> Path:
        return self.workdir / "spool"

    @property
    def log_path(self) -> Path:
        return self.workdir / "proxy.log"

    def write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML: no YAML writer needed.
        config = proxy_config(self.stub, with_logging=self.app == PROXY_APP)
        for section, values in self.config_overrides.items():
            config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
        (self.workdir / "config.yaml").write_text(json.dumps(config, indent=2))
        keys_file = self.workdir / "api_keys.json"
        keys_file.write_text(self.keys.keys_file_content())
        keys_file.chmod(0o600)

    def environment(self) -> dict[str, str]:
        inherited = (*PRISMA_TRIGGERS, "PROMETHEUS_MULTIPROC_DIR")
        env = {name: value for name, value in os.environ.items() if name not in inherited}
        if self.multiproc_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.multiproc_dir)
        python_path = list(filter(None, env.get("PYTHONPATH", "").split(os.pathsep)))
        if PACKAGE_ROOT.name != "site-packages":  # running from the source tree
            python_path.insert(0, str(PACKAGE_ROOT))
        env |= {
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
            "CONFIG_FILE_PATH": str(self.workdir / "config.yaml"),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": self.keys.master_key,
            "OPENAI_API_KEY": self.stub.api_key,
            "LITELLM_DB_URL": self.db_url,
            "LITELLM_PGLOG_KEYS_FILE": str(self.workdir / "api_keys.json"),
            "LITELLM_PGLOG_SPOOL_DIR": str(self.spool_dir),
            "LITELLM_PGLOG_FLUSH_INTERVAL": "0.2",
            "LITELLM_PGLOG_RETRY_MAX_SECONDS": "1",
            # Gateway.metrics() reads /metrics/ on the API port (refused there by default).
            "LITELLM_PGLOG_METRICS_ON_API_PORT": "true",
        }
        return env | self.extra_env

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Gateway:
        self.write_files()
        if self.multiproc_dir is not None:
            shutil.rmtree(self.multiproc_dir, ignore_errors=True)
            self.multiproc_dir.mkdir(parents=True)
        command = [
            sys.executable, "-m", "uvicorn", self.app,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--no-server-header",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.environment(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until_ready(f"{self.base_url}/health/liveliness", self.process, self.log_path, timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        code = stop_process(self.process, sig, timeout)
        self.process = None
        return code

    def restart(self, sig: int = signal.SIGTERM) -> Gateway:
        self.stop(sig)
        return self.start()

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """The samples /metrics/ exports now, by name (labels ignored: ours have none)."""
        response = httpx.get(f"{self.base_url}/metrics/", timeout=30)
        response.raise_for_status()
        families = text_string_to_metric_families(response.text)
        return {sample.name: sample.value for family in families for sample in family.samples}

    def quiet_metrics(self, timeout: float = 30) -> dict[str, float]:
        """/metrics/ once the writer is idle: queue empty and no counter moving for a second."""
        deadline = time.monotonic() + timeout
        previous = self.metrics()
        while True:
            time.sleep(1.0)
            current = self.metrics()
            if current.get("pglog_queue_depth") == 0 and all(
                current.get(name) == previous.get(name) for name in PGLOG_COUNTERS
            ):
                return current
            assert time.monotonic() < deadline, f"the writer never went idle: {current}"
            previous = current

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def spooled_request_ids(self) -> set[str]:
        """Request ids currently waiting in the spool files (what a crash must not lose)."""
        found = set()
        for path in self.spool_dir.glob("pglog-*.jsonl"):
            for line in path.read_bytes().splitlines():
                try:
                    found.add(json.loads(line)["request_id"])
                except (ValueError, KeyError):
                    continue
        return found


PGLOG_COUNTERS = (
    "pglog_rows_written_total",
    "pglog_records_spooled_total",
    "pglog_records_dropped_total",
    "pglog_records_merged_total",
)


def chat_body(content: str = "hello gateway", model: str = CHAT_MODEL, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


# ---- the database the gateway logs to -----------------------------------------------------------


@contextmanager
def running_gateway(workdir: Path, database_url: str, **options) -> Iterator[Gateway]:
    """A started stub and a started gateway in front of it; both stopped afterwards."""
    stub = Stub(workdir).start()
    gateway = Gateway(workdir, stub, database_url, **options)
    try:
        yield gateway.start()
    finally:
        gateway.stop()
        stub.stop()


@contextmanager
def migrated_database(cluster) -> Iterator[str]:
    """A new database on the test cluster (``pgcluster.PgCluster``) with the schema at head."""
    from litellm_pglog.schema import upgrade_schema

    if not cluster.is_running():
        cluster.start()
    name = cluster.create_database()
    url = cluster.url_for(name)
    upgrade_schema(url)
    try:
        yield url
    finally:
        if not cluster.is_running():  # a test stopped it and failed before starting it again
            cluster.start()
        cluster.drop_database(name)


# ---- reading what the gateway logged -------------------------------------------------------------

LOGGED_COLUMNS = (
    Request.request_id,
    Request.route,
    Request.method,
    Request.model,
    Request.status_code,
    Request.user_id,
    Request.api_key,
    Request.stream,
    Request.error_type,
    Request.error_message,
    Response.latency_ms,
    Response.prompt_tokens,
    Response.completion_tokens,
    Response.total_tokens,
)


class LogReader:
    def __init__(self, db_url: str) -> None:
        self.engine = create_engine(db_url, pool_pre_ping=True)

    def rows(self, request_ids: Iterable[str]) -> dict[str, dict]:
        return {row["request_id"]: row for row in self.rows_where(Request.request_id.in_(list(request_ids)))}

    def wait_for(self, request_ids: Iterable[str], complete=None, timeout: float = 60) -> dict[str, dict]:
        """Rows of all the ids once present (and ``complete(row)`` true for each); fails after timeout."""
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self.rows(wanted)
            except Exception:  # PostgreSQL may be restarting
                rows = {}
            ready = {rid for rid, row in rows.items() if complete is None or complete(row)}
            if ready == wanted:
                return rows
            if time.monotonic() > deadline:
                missing = sorted(wanted - ready)
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} log rows missing/incomplete: {missing[:5]}"
                )
            time.sleep(0.2)

    def rows_where(self, *conditions) -> list[dict]:
        query = (
            select(*LOGGED_COLUMNS)
            .select_from(Request)
            .outerjoin(Response, Response.request_id_fk == Request.id)
            .where(*conditions)
        )
        with self.engine.connect() as connection:
            return [row._asdict() for row in connection.execute(query)]

    def count_per_request_id(self, request_ids: Iterable[str]) -> dict[str, int]:
        query = (
            select(Request.request_id, func.count())
            .where(Request.request_id.in_(list(request_ids)))
            .group_by(Request.request_id)
        )
        with self.engine.connect() as connection:
            return dict(connection.execute(query).all())

    def count(self, *conditions) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                select(func.count()).select_from(Request).where(*conditions)
            ).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()
