"""PostgreSQL outages and gateway restarts: every answered request ends up logged exactly once."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from proxy_harness import Gateway, LogReader, chat_body, running_gateway

SPOOL_WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, database_url) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway-resilience"), database_url) as gateway:
        yield gateway


@pytest.fixture
def postgres(pg_cluster):
    """The cluster, guaranteed running again after the test whatever happened."""
    yield pg_cluster
    if not pg_cluster.is_running():
        pg_cluster.start()


def send_chats(gateway: Gateway, count: int, concurrency: int = 4) -> list[tuple[int, str]]:
    """(status, request id) of ``count`` chat requests sent ``concurrency`` at a time."""
    with gateway.client(gateway.keys.test_key) as client:

        def one(index: int) -> tuple[int, str]:
            response = client.post("/v1/chat/completions", json=chat_body(f"request number {index}"))
            return response.status_code, response.headers["x-litellm-call-id"]

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, range(count)))


def assert_logged_once_with_status_200(logged: LogReader, request_ids: set[str]) -> None:
    rows = logged.wait_for(request_ids, complete=lambda row: row["total_tokens"] is not None, timeout=90)
    assert {row["status_code"] for row in rows.values()} == {200}
    assert set(logged.count_per_request_id(request_ids).values()) == {1}


def wait_until_spooled(gateway: Gateway, request_ids: set[str]) -> None:
    deadline = time.monotonic() + SPOOL_WAIT_SECONDS
    while not request_ids <= gateway.spooled_request_ids():
        assert time.monotonic() < deadline, "the writer did not spool the records while PostgreSQL was down"
        time.sleep(0.2)


def test_postgres_outage_mid_traffic_loses_and_duplicates_nothing(gateway, logged, postgres):
    results: list[tuple[int, str]] = []
    stop_sending = threading.Event()

    def keep_sending() -> None:
        while not stop_sending.is_set():
            results.extend(send_chats(gateway, 8))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        wait_for_len(results, 16)
        postgres.stop()
        sent_before_outage = len(results)
        wait_for_len(results, sent_before_outage + 24)  # answered while PostgreSQL is down
        postgres.start()
        wait_for_len(results, len(results) + 16)
    finally:
        stop_sending.set()
        sender.join()

    assert {status for status, _ in results} == {200}, "the gateway must keep answering without its database"
    request_ids = {request_id for _, request_id in results}
    assert len(request_ids) == len(results)
    assert_logged_once_with_status_200(logged, request_ids)


def wait_for_len(results: list, wanted: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(results) < wanted:
        assert time.monotonic() < deadline, f"only {len(results)} of {wanted} requests answered"
        time.sleep(0.05)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_gateway_restart_replays_a_non_empty_spool(gateway, logged, postgres, stop_signal):
    written_before = {request_id for _, request_id in send_chats(gateway, 5)}
    assert_logged_once_with_status_200(logged, written_before)

    postgres.stop()
    results = send_chats(gateway, 12)
    assert {status for status, _ in results} == {200}
    spooled = {request_id for _, request_id in results}
    wait_until_spooled(gateway, spooled)

    gateway.stop(stop_signal)
    assert gateway.spooled_request_ids() >= spooled  # the spool survived the process
    postgres.start()
    gateway.start()  # a new process replays what the old one left behind

    assert_logged_once_with_status_200(logged, written_before | spooled)
    deadline = time.monotonic() + SPOOL_WAIT_SECONDS
    while gateway.spooled_request_ids() & spooled:
        assert time.monotonic() < deadline, "replayed spool files were not removed"
        time.sleep(0.2)


@pytest.fixture
def idle_writer_gateway(tmp_path, database_url) -> Iterator[Gateway]:
    """A gateway whose writer holds every record in memory for 30 s: a kill finds them all there."""
    with running_gateway(tmp_path, database_url, extra_env={"LITELLM_PGLOG_FLUSH_INTERVAL": "30"}) as gateway:
        yield gateway


def test_sigkill_with_records_in_memory_loses_no_answered_request(idle_writer_gateway, logged):
    gateway = idle_writer_gateway
    answered = send_chats(gateway, 40, concurrency=8)
    request_ids = {request_id for _, request_id in answered}
    # Killed the moment the last answer arrived: the middleware submits before the last byte.
    gateway.stop(signal.SIGKILL)
    assert logged.count_per_request_id(request_ids) == {}, "the records were meant to be in memory only"
    gateway.extra_env = {}  # the next process replays at once, with the harness's flush interval
    gateway.start()

    assert {status for status, _ in answered} == {200}
    rows = logged.wait_for(request_ids, timeout=90)
    assert {row["status_code"] for row in rows.values()} == {200}
    assert set(logged.count_per_request_id(request_ids).values()) == {1}
