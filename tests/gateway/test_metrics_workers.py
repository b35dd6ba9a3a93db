"""Two gateway workers in multiprocess mode, read through the exporter process (``exposition.py``).

The gateway runs as in production: ``uvicorn ... --workers 2`` with PROMETHEUS_MULTIPROC_DIR
(emptied at start), and ``python -m litellm_pglog.exposition`` reads that directory, three times
over: plain, with a scrape token, and with key labels off.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from litellm_pglog.exposition import KEY_LABELS
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from proxy_harness import ERROR_MODEL, Gateway, chat_body, free_port, running_gateway, stop_process, tail

HEX64 = re.compile(r"[0-9a-fA-F]{64}")
TOKEN = "monitoring-scrape-token"
PGLOG_COUNTERS = (
    "pglog_rows_written_total",
    "pglog_records_spooled_total",
    "pglog_records_dropped_total",
    "pglog_records_merged_total",
)
REQUESTS_TOTAL = "litellm_proxy_total_requests_metric_total"
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Scrape:
    text: str
    types: dict[str, str]  # sample name -> its family's type
    values: dict[SeriesKey, float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        types, values = {}, {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                types[sample.name] = family.type
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(text, types, values)

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.values.items() if sample == name)

    def label_names(self) -> set[str]:
        return {label for _, labels in self.values for label, _ in labels}

    def monotonic_series(self) -> dict[SeriesKey, float]:
        """Counters and histograms (buckets, counts, sums of non-negative latencies) only grow."""
        return {key: value for key, value in self.values.items() if self.types[key[0]] != "gauge"}


@dataclass
class Exporter:
    process: subprocess.Popen
    url: str
    log_path: Path

    def get(self, token: str | None = None, authorization: str | None = None) -> httpx.Response:
        if token is not None:
            authorization = f"Bearer {token}"
        headers = {"Authorization": authorization} if authorization else {}
        return httpx.get(self.url, headers=headers, timeout=30)

    def scrape(self, token: str | None = None) -> Scrape:
        response = self.get(token)
        assert response.status_code == 200, (response.status_code, response.text, tail(self.log_path))
        return Scrape.parse(response.text)

    def quiet(self, token: str | None = None, timeout: float = 30) -> Scrape:
        """A scrape once the writers are idle: queues empty, no pglog counter moving for 0.5 s."""
        deadline = time.monotonic() + timeout
        previous = self.scrape(token)
        while True:
            time.sleep(0.5)
            current = self.scrape(token)
            if current.total("pglog_queue_depth") == 0 and all(
                current.total(name) == previous.total(name) for name in PGLOG_COUNTERS
            ):
                return current
            assert time.monotonic() < deadline, "the writers never went idle"
            previous = current


def start_exporter(gateway: Gateway, workdir: Path, **env: str) -> Exporter:
    port = free_port()
    environment = {
        **gateway.environment(),
        "LITELLM_PGLOG_METRICS_LISTEN": f"127.0.0.1:{port}",
        **env,
    }
    log_path = workdir / f"exporter-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "litellm_pglog.exposition"], env=environment, stdout=log, stderr=log
        )
    exporter = Exporter(process, f"http://127.0.0.1:{port}/metrics", log_path)
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, tail(log_path)
        try:
            exporter.get(TOKEN)
            return exporter
        except httpx.TransportError:
            assert time.monotonic() < deadline, tail(log_path)
            time.sleep(0.1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, database_url) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway-metrics")
    options = {"workers": 2, "multiproc_dir": workdir / "prometheus"}
    with running_gateway(workdir, database_url, **options) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def exporters(gateway, tmp_path_factory) -> Iterator[dict[str, Exporter]]:
    workdir = tmp_path_factory.mktemp("exporters")
    (workdir / "token").write_text(TOKEN)
    started = {
        "plain": start_exporter(gateway, workdir),
        "token": start_exporter(gateway, workdir, LITELLM_PGLOG_METRICS_TOKEN_FILE=str(workdir / "token")),
        "no_key_labels": start_exporter(gateway, workdir, LITELLM_PGLOG_METRICS_KEY_LABELS="false"),
    }
    try:
        yield started
    finally:
        for exporter in started.values():
            stop_process(exporter.process)


def send(gateway: Gateway, requests: list[tuple[str, str | None, dict | None]]) -> list[httpx.Response]:
    """(method, key, body) each on a new connection, 8 at a time, so that the workers share them."""

    def one(request: tuple[str, str | None, dict | None]) -> httpx.Response:
        path, key, body = request
        with gateway.client(key) as client:
            return client.post(path, json=body) if body is not None else client.get(path)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, requests))


def one_record_requests(gateway: Gateway, count: int) -> list[tuple[str, str | None, dict | None]]:
    # A model list or a refused key fires no LiteLLM success callback: exactly one record each,
    # hence exactly one row upserted (a chat's two halves may be two upserts of one row).
    keys = (gateway.keys.test_key, gateway.keys.poc_key, "not-a-valid-key")
    return [
        ("/v1/models", key, None) if key != keys[2] else ("/v1/chat/completions", key, chat_body())
        for key in (keys[n % 3] for n in range(count))
    ]


def rows_written_per_worker(gateway: Gateway) -> dict[str, float]:
    """pglog_rows_written_total as each worker counted it, in its own file of the multiprocess dir."""
    return {
        Path(path).name: sum(
            sample.value
            for metric in MultiProcessCollector.merge([path])
            for sample in metric.samples
            if sample.name == "pglog_rows_written_total"
        )
        for path in map(str, gateway.multiproc_dir.glob("counter_*.db"))
    }


# The workers share one listening socket and the kernel hands each connection to whichever is in
# accept() first: on a busy machine one worker can take a whole batch. Batches are sent until both
# have written rows.
MAX_BATCHES = 10


def test_rows_written_is_the_sum_over_workers_of_the_rows_in_the_database(gateway, exporters, logged):
    exporter = exporters["plain"]
    rows_before, before = logged.count(), exporter.quiet()
    answers: list[httpx.Response] = []
    for _ in range(MAX_BATCHES):
        batch = send(gateway, one_record_requests(gateway, 45))
        assert sorted({response.status_code for response in batch}) == [200, 401]
        answers += batch
        logged.wait_for({response.headers["x-litellm-call-id"] for response in answers})
        per_worker = rows_written_per_worker(gateway)
        if len(per_worker) == 2 and all(per_worker.values()):
            break

    after = exporter.quiet()
    written = after.total("pglog_rows_written_total") - before.total("pglog_rows_written_total")
    assert written == logged.count() - rows_before == len(answers)
    # Each worker counted its own part in its own file; the exporter served their sum.
    per_worker = rows_written_per_worker(gateway)
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker
    assert sum(per_worker.values()) == after.total("pglog_rows_written_total")


def test_eight_scrapes_under_load_never_go_backwards_nor_show_a_key_hash(gateway, exporters):
    exporter = exporters["plain"]
    keys = (gateway.keys.test_key, gateway.keys.poc_key)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            bodies = [chat_body(f"load {n + i}") for i in range(6)] + [chat_body(model=ERROR_MODEL)]
            batch = [("/v1/chat/completions", keys[(n + i) % 2], body) for i, body in enumerate(bodies)]
            send(gateway, batch)
            n += len(batch)

    loader = threading.Thread(target=traffic, daemon=True)
    loader.start()
    scrapes = []
    try:
        for _ in range(8):
            time.sleep(0.4)
            scrapes.append(exporter.scrape())
    finally:
        stop.set()
        loader.join(60)

    for earlier, later in zip(scrapes, scrapes[1:], strict=False):
        for key, value in earlier.monotonic_series().items():
            assert key in later.values, f"{key} vanished"
            assert later.values[key] >= value, f"{key} went from {value} to {later.values[key]}"
    first, last = scrapes[0], scrapes[-1]
    assert last.total("pglog_rows_written_total") > first.total("pglog_rows_written_total")
    assert last.total(REQUESTS_TOTAL) > first.total(REQUESTS_TOTAL)

    # The workers' files do hold the keys' SHA-256 (LiteLLM's hashed_api_key): none is served.
    raw = {
        value
        for metric in MultiProcessCollector.merge(list(map(str, gateway.multiproc_dir.glob("*.db"))))
        for sample in metric.samples
        for value in sample.labels.values()
    }
    assert any(HEX64.fullmatch(value) for value in raw)
    assert "hashed_api_key" in last.label_names()
    for scrape in scrapes:
        assert not HEX64.search(scrape.text)


def test_without_the_token_the_exporter_answers_401_and_no_metrics(gateway, exporters):
    exporter = exporters["token"]
    for authorization in (None, f"Bearer {gateway.keys.test_key}", f"Bearer {TOKEN}-wrong", TOKEN):
        response = exporter.get(authorization=authorization)
        assert response.status_code == 401, authorization
        assert "pglog" not in response.text and "litellm_" not in response.text
    scrape = exporter.scrape(TOKEN)
    assert "pglog_rows_written_total" in scrape.types and not HEX64.search(scrape.text)


def test_without_key_labels_the_same_totals_carry_no_client_label(gateway, exporters):
    send(gateway, [("/v1/chat/completions", gateway.keys.poc_key, chat_body("label test"))] * 4)
    with_labels = exporters["plain"].quiet()
    without = exporters["no_key_labels"].scrape()
    assert {"api_key_alias", "user", "hashed_api_key"} <= with_labels.label_names()
    assert not without.label_names() & KEY_LABELS
    assert not HEX64.search(without.text)
    for name in (REQUESTS_TOTAL, *PGLOG_COUNTERS):
        assert without.total(name) == with_labels.total(name), name


def test_a_killed_worker_keeps_its_counts_and_loses_its_live_gauges(gateway, exporters):
    # Last in the module. The renderer skips the live-gauge files of dead pids at once; then
    # LiteLLM's startup in the replacement worker deletes them (mark_process_dead: uvicorn has no
    # exit hook for it).
    exporter = exporters["plain"]
    # A worker's active journal keeps its settled lines until it is retired (JOURNAL_ROTATE_SECONDS)
    # and deleted; killed before that, the replacement replays them (idempotent upserts, but
    # counted as written again). Wait for every worker's journal to be gone first.
    deadline = time.monotonic() + 30
    while list(gateway.spool_dir.glob("journal-*.jsonl")):
        assert time.monotonic() < deadline, "the workers' journals were never retired"
        time.sleep(0.2)
    before = exporter.quiet()
    victim = int(next(gateway.multiproc_dir.glob("gauge_livesum_*.db")).stem.rpartition("_")[2])
    os.kill(victim, signal.SIGKILL)
    answers = send(gateway, one_record_requests(gateway, 6))  # the other worker answers
    assert sorted({response.status_code for response in answers}) == [200, 401]

    after = exporter.quiet()
    for key, value in before.monotonic_series().items():
        assert after.values.get(key, -1) >= value, f"{key} went from {value} to {after.values.get(key)}"
    assert after.total("pglog_rows_written_total") == before.total("pglog_rows_written_total") + len(answers)
    assert f"counter_{victim}.db" in {path.name for path in gateway.multiproc_dir.iterdir()}
    # The dead worker's last queue depth would stay in the sum without the renderer's filter.
    assert after.total("pglog_queue_depth") == 0

    deadline = time.monotonic() + 60
    while (gateway.multiproc_dir / f"gauge_livesum_{victim}.db").exists():
        assert time.monotonic() < deadline, "the replacement worker never marked the dead one"
        time.sleep(0.2)
    assert exporter.quiet().total("pglog_rows_written_total") == after.total("pglog_rows_written_total")
