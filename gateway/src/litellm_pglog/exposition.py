"""The gateway's Prometheus metrics, summed over its workers and stripped of key material.

Who writes, who reads
---------------------
The gateway runs ``uvicorn litellm_pglog.asgi:app --workers N`` with PROMETHEUS_MULTIPROC_DIR
in its environment. Every worker writes its samples, ours (``metrics.py``: pglog_*) and
LiteLLM's (litellm_*, from the "prometheus" callback), to files named after its pid in that
directory. No worker's own registry is ever served (it holds 1/N of the traffic, so totals
would jump between scrapes): this module merges the files of all workers
(``MultiProcessCollector``), applies the label policy below and renders the text format, for

- **the exporter** ``litellm-pglog-metrics`` (same as ``python -m litellm_pglog.exposition``):
  a separate small process, stdlib ``http.server`` plus prometheus_client, no LiteLLM import,
  serving ``GET /metrics`` on LITELLM_PGLOG_METRICS_LISTEN. Bind it to a monitoring address
  only Prometheus can reach; it needs read access to the directory and nothing else;
- **MetricsEndpoint**: the same answer as an ASGI app, mounted at /metrics on the API port only
  when the operator opts into public metrics (without PROMETHEUS_MULTIPROC_DIR it renders the
  process's own registry: right for one worker only).

``litellm-pglog-metrics --print`` writes one rendering to stdout and exits (smoke checks).

Environment
-----------
=====================================  ===================================================
PROMETHEUS_MULTIPROC_DIR               the workers' directory (the exporter requires it)
LITELLM_PGLOG_METRICS_LISTEN           exporter address ``host:port`` (``[::1]:port`` for
                                       IPv6), default ``127.0.0.1:9464``
LITELLM_PGLOG_METRICS_TOKEN_FILE       file holding a scrape token; when set, a request
                                       without ``Authorization: Bearer <token>`` gets 401
                                       and no metrics (exporter and MetricsEndpoint).
                                       Prometheus: ``authorization: {credentials_file: ...}``
LITELLM_PGLOG_METRICS_KEY_LABELS       ``true``/``false``: keep the labels that identify a
                                       client (``KEY_LABELS``). Default true for the
                                       exporter, false for MetricsEndpoint
LITELLM_PGLOG_METRICS_LABEL_SALT_FILE  file holding a secret salt: hash-like label values
                                       become ``h-`` + 16 hex of HMAC-SHA256(salt, value)
                                       instead of ``redacted``
LITELLM_PGLOG_SPOOL_DIR                the gateway's spool: when set, each scrape also
                                       measures its backlog (pglog_spool_files,
                                       pglog_spool_bytes, pglog_spool_oldest_record_age_seconds)
=====================================  ===================================================

The files are read once, at start: restart the exporter after changing one.

Label policy
------------
LiteLLM labels its per-request series with ``hashed_api_key`` (what our custom_auth hands it as
the key: the SHA-256 that the keys file protects), ``api_key_alias``, ``user``, ``team`` ...

1. No label value containing 64 hex characters (a SHA-256, or longer) is ever served: it is
   replaced by a salted, truncated id (with a salt file) or by ``redacted``, so it cannot be
   matched against the keys file. LiteLLM's ``model_id`` (a hash of the deployment) is
   rewritten the same way.
2. With key labels off, ``KEY_LABELS`` are removed. Samples whose label sets became equal are
   summed (a gauge such as a per-key budget becomes a sum over keys), so no series appears
   twice.

The risk of public metrics: whoever reads them sees every client's request counts, tokens and
spend, per key alias and user while key labels are on, and learns which keys exist. Keep the
exporter on a monitoring address (or set a token), and keep key labels off wherever clients can
read /metrics.

The directory's life cycle
--------------------------
- It must be empty when the gateway starts: files of an earlier run would be added to the
  new counts. A systemd ``RuntimeDirectory=`` does it (created empty at start, removed at
  stop); the exporter answers 503 while the directory does not exist.
- The exporter's user must be able to read the files: the workers create them with their
  umask (systemd's default 0022 gives 0644); with a stricter ``UMask=`` give the exporter the
  gateway's group, and the directory a matching ``RuntimeDirectoryMode=``.
- A worker that dies leaves its files: its counters stay in the sums (totals never go
  backwards), its "live" gauges (pglog_queue_depth, LiteLLM's in-flight requests) must not.
  uvicorn's supervisor has no exit hook, so LiteLLM calls ``mark_process_dead`` for dead pids
  when a replacement worker starts, and the renderer here skips the live-gauge files of pids
  that no longer run (read-only: the exporter deletes nothing). The exporter must therefore
  share the gateway's PID namespace (the default; no ``PrivatePIDs=``).
- LiteLLM's other gauges use the default mode "all": one series per worker, with a ``pid``
  label, kept after the worker exited until the gateway restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import hmac
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import REGISTRY
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from litellm_pglog import spool
from litellm_pglog.settings import Settings, SettingsError, _flag

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
LISTEN_ENV = "LITELLM_PGLOG_METRICS_LISTEN"
TOKEN_FILE_ENV = "LITELLM_PGLOG_METRICS_TOKEN_FILE"
KEY_LABELS_ENV = "LITELLM_PGLOG_METRICS_KEY_LABELS"
LABEL_SALT_FILE_ENV = "LITELLM_PGLOG_METRICS_LABEL_SALT_FILE"
SPOOL_DIR_ENV = "LITELLM_PGLOG_SPOOL_DIR"
DEFAULT_LISTEN = "127.0.0.1:9464"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"  # no token, no data: "ok"

# Labels that say which client a series belongs to (LiteLLM's UserAPIKeyLabelNames that name a
# key, a person, an organisation or a client machine).
KEY_LABELS = frozenset(
    {
        "hashed_api_key",
        "api_key_alias",
        "user",
        "user_email",
        "user_alias",
        "end_user",
        "team",
        "team_alias",
        "org_id",
        "org_alias",
        "project_id",
        "project_alias",
        "client_ip",
        "user_agent",
    }
)
HASH_LIKE = re.compile(r"[0-9a-fA-F]{64}")
REDACTED = "redacted"
SALTED_ID_HEX_CHARS = 16


# ---- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpositionSettings:
    """What the exporter and MetricsEndpoint read from the environment (see the module docstring)."""

    multiproc_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 9464
    key_labels: bool = True
    token: str | None = field(default=None, repr=False)
    label_salt: bytes | None = field(default=None, repr=False)
    spool_dir: Path | None = None


def load_exposition_settings(
    environ: Mapping[str, str] | None = None, *, key_labels_default: bool = True
) -> ExpositionSettings:
    """Settings from ``environ`` (default: the process environment); raises SettingsError."""
    env = os.environ if environ is None else environ
    host, port = parse_listen(env.get(LISTEN_ENV, "").strip() or DEFAULT_LISTEN)
    multiproc_dir = env.get(MULTIPROC_DIR_ENV, "").strip()
    salt = _read_secret(env, LABEL_SALT_FILE_ENV)
    spool_dir = env.get(SPOOL_DIR_ENV, "").strip()
    return ExpositionSettings(
        multiproc_dir=Path(multiproc_dir) if multiproc_dir else None,
        host=host,
        port=port,
        key_labels=_flag(env, KEY_LABELS_ENV, key_labels_default),
        token=_read_secret(env, TOKEN_FILE_ENV),
        label_salt=salt.encode() if salt else None,
        spool_dir=Path(spool_dir) if spool_dir else None,
    )


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6 address]:port`` -> (host, port)."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{LISTEN_ENV}={value!r} is not host:port")
    return host, int(port)


def _read_secret(environ: Mapping[str, str], name: str) -> str | None:
    path = environ.get(name, "").strip()
    if not path:
        return None
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise SettingsError(f"{name}: {path} is empty")
    return secret


# ---- the label policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelPolicy:
    """Rewrites hash-like label values, drops the ``dropped`` labels, sums what became equal."""

    dropped: frozenset[str] = frozenset()
    salt: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: ExpositionSettings) -> LabelPolicy:
        return cls(frozenset() if settings.key_labels else KEY_LABELS, settings.label_salt)

    def apply(self, families: Iterable[Metric]) -> Iterator[Metric]:
        for family in families:
            yield self._family(family)

    def _family(self, family: Metric) -> Metric:
        merged: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
        for sample in family.samples:
            labels = {
                name: self._value(value) for name, value in sample.labels.items() if name not in self.dropped
            }
            key = (sample.name, tuple(sorted(labels.items())))
            earlier = merged.get(key)
            value = sample.value if earlier is None else _combine(sample.name, earlier.value, sample.value)
            merged[key] = Sample(sample.name, labels, value, sample.timestamp, sample.exemplar)
        result = Metric(family.name, family.documentation, family.type)
        result.samples = list(merged.values())
        return result

    def _value(self, value: str) -> str:
        if not HASH_LIKE.search(value):
            return value
        if self.salt is None:
            return REDACTED
        digest = hmac.new(self.salt, value.encode(), sha256).hexdigest()
        return f"h-{digest[:SALTED_ID_HEX_CHARS]}"


def _combine(sample_name: str, earlier: float, value: float) -> float:
    # A _created sample is a creation time: the merged series exists since the earliest one.
    # Everything else the policy merges (counts, sums, buckets, gauges) adds up.
    return min(earlier, value) if sample_name.endswith("_created") else earlier + value


# ---- where the samples come from ----------------------------------------------------------------


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class MultiprocessSource:
    """The workers' files merged, without the live gauges of workers that are gone."""

    _LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db$")

    def __init__(self, directory: Path, is_running: Callable[[int], bool] | None = None) -> None:
        self._directory = directory
        self._is_running = is_running or pid_is_running

    def collect(self) -> Iterable[Metric]:
        if not self._directory.is_dir():
            raise MetricsUnavailable(f"{self._directory} does not exist (is the gateway stopped?)")
        files = [path for path in glob.glob(str(self._directory / "*.db")) if self._wanted(path)]
        try:
            return MultiProcessCollector.merge(files, accumulate=True)
        except FileNotFoundError:  # the gateway restarted during the scrape and emptied the directory
            raise MetricsUnavailable(f"{self._directory} was emptied during the scrape") from None

    def _wanted(self, path: str) -> bool:
        live = self._LIVE_GAUGE_FILE.search(path)
        return live is None or self._is_running(int(live.group(1)))


def pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (the gateway's)
        return True
    return True


class MetricsUnavailable(RuntimeError):
    """The samples cannot be read now (the workers' directory is missing)."""


class SpoolBacklogSource:
    """How much waits in the spool and for how long: measured on disk at each scrape, so the
    answer holds whatever the workers are doing (stuck, restarting, all busy replaying).
    "Records waiting for more than N minutes" is ``pglog_spool_oldest_record_age_seconds``.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        backlog = spool.backlog(self._directory)
        yield GaugeMetricFamily("pglog_spool_files", "Spool files waiting for PostgreSQL", backlog.files)
        yield GaugeMetricFamily("pglog_spool_bytes", "Bytes of records waiting in the spool", backlog.bytes)
        yield GaugeMetricFamily(
            "pglog_spool_oldest_record_age_seconds",
            "Age of the oldest spool file (its first record); 0 when the spool is empty",
            backlog.oldest_age_seconds(),
        )


@dataclass(frozen=True)
class Sources:
    """Several collectors as one."""

    parts: tuple[Collector, ...]

    def collect(self) -> Iterable[Metric]:
        for part in self.parts:
            yield from part.collect()


def source_for(settings: ExpositionSettings) -> Collector:
    """The workers' directory when set, else this process's registry (one worker); plus the
    spool's backlog when the spool directory is known.
    """
    workers = MultiprocessSource(settings.multiproc_dir) if settings.multiproc_dir is not None else REGISTRY
    if settings.spool_dir is None:
        return workers
    return Sources((workers, SpoolBacklogSource(settings.spool_dir)))


# ---- one scrape, whoever serves it ----------------------------------------------------------------


@dataclass(frozen=True)
class ScrapeAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


UNAUTHORIZED = ScrapeAnswer(
    401, b"scrape token required: Authorization: Bearer <token>\n", (("WWW-Authenticate", "Bearer"),)
)


class Scraper:
    """Checks the optional token, renders the source through the label policy."""

    def __init__(self, settings: ExpositionSettings, source: Collector | None = None) -> None:
        self._token = settings.token
        self._source = source if source is not None else source_for(settings)
        self._policy = LabelPolicy.from_settings(settings)

    def answer(self, authorization: str | None) -> ScrapeAnswer:
        if not self._authorized(authorization):
            return UNAUTHORIZED
        try:
            body = self.render()
        except MetricsUnavailable as exc:
            return ScrapeAnswer(503, f"{exc}\n".encode())
        return ScrapeAnswer(200, body, (("Content-Type", CONTENT_TYPE_PLAIN_0_0_4),))

    def render(self) -> bytes:
        return generate_latest(_Families(self._policy.apply(self._source.collect())))

    def _authorized(self, authorization: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = (authorization or "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        offered = credentials.strip().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(offered, self._token.encode())


@dataclass(frozen=True)
class _Families:
    """Already collected families in the shape ``generate_latest`` reads (a ``collect()``)."""

    families: Iterable[Metric]

    def collect(self) -> Iterable[Metric]:
        return self.families


# ---- served on the API port ------------------------------------------------------------------------

Scope = Mapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Mapping[str, Any]], Any]


class MetricsEndpoint:
    """ASGI app answering GET with the rendered metrics (mount it where /metrics is public).

    ``settings`` is the gateway's; the exposition settings come from the environment, with key
    labels off unless LITELLM_PGLOG_METRICS_KEY_LABELS=true: whoever reaches the API port can
    read this. Rendering (reading every worker's files) runs in a thread, off the event loop.
    """

    def __init__(
        self,
        settings: Settings,
        exposition: ExpositionSettings | None = None,
        source: Collector | None = None,
    ) -> None:
        self.settings = settings
        if exposition is None:
            exposition = load_exposition_settings(key_labels_default=False)
        self._scraper = Scraper(exposition, source)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            answer = ScrapeAnswer(405, b"method not allowed\n", (("Allow", "GET, HEAD"),))
        else:
            authorization = _header(scope, b"authorization")
            answer = await asyncio.to_thread(self._scraper.answer, authorization)
        headers = [(name.lower().encode(), value.encode()) for name, value in answer.headers]
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else answer.body
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


# ---- the standalone exporter ---------------------------------------------------------------------


class _ScrapeHandler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = "litellm-pglog-metrics"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        path = urlsplit(self.path).path.rstrip("/")
        if path == HEALTH_PATH:
            # For the deployment's start wait and liveness probes: says only that it runs.
            self._reply(ScrapeAnswer(200, b"ok\n"))
        elif path == METRICS_PATH:
            self._reply(self.server.scraper.answer(self.headers.get("Authorization")))
        else:
            self._reply(ScrapeAnswer(404, b"not found: try /metrics\n"))

    def _reply(self, answer: ScrapeAnswer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # one line per scrape would only fill the journal; errors still go to stderr


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: ExpositionSettings, scraper: Scraper | None = None) -> None:
        if ":" in settings.host:
            self.address_family = socket.AF_INET6
        self.scraper = scraper or Scraper(settings)
        super().__init__((settings.host, settings.port), _ScrapeHandler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="litellm-pglog-metrics",
        description=f"Serve the gateway workers' metrics from {MULTIPROC_DIR_ENV} on GET {METRICS_PATH}.",
    )
    parser.add_argument("--listen", help=f"host:port (default: {LISTEN_ENV} or {DEFAULT_LISTEN})")
    parser.add_argument("--print", action="store_true", help="write one rendering to stdout and exit")
    args = parser.parse_args(argv)
    try:
        settings = load_exposition_settings()
        if args.listen:
            host, port = parse_listen(args.listen)
            settings = replace(settings, host=host, port=port)
    except SettingsError as exc:
        parser.error(str(exc))
    if settings.multiproc_dir is None:
        parser.error(f"{MULTIPROC_DIR_ENV} is not set: the exporter reads the gateway workers' files")
    scraper = Scraper(settings)
    if args.print:
        try:
            sys.stdout.buffer.write(scraper.render())
        except MetricsUnavailable as exc:
            print(f"litellm-pglog-metrics: {exc}", file=sys.stderr)
            return 1
        return 0
    with ExporterServer(settings, scraper) as server:
        address = f"{settings.host}:{settings.port}"
        print(f"litellm-pglog-metrics: serving {METRICS_PATH} on {address}", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
