"""PostgreSQL outages (refusing or hanging) and gateway restarts: every answered request is logged once."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from proxy_harness import Gateway, LogReader, chat_body, running_gateway
from stall_proxy import StallingProxy

SPOOL_WAIT_SECONDS = 60
# "PostgreSQL down never blocks a request", as a correctness bound, not a benchmark: a chat
# request through the proxy takes tens of milliseconds here (a few hundred on a loaded 2-core
# machine at concurrency 4); one that waited for the database would wait for the writer's retry
# backoff (0.5 s and up) or a connection attempt (5 s timeout). 1 s separates the two.
OUTAGE_P99_BOUND_SECONDS = 1.0


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


@dataclass(frozen=True)
class Answer:
    status: int
    request_id: str
    sent_at: float  # time.monotonic()
    seconds: float


def send_chats(gateway: Gateway, count: int, concurrency: int = 4) -> list[Answer]:
    """The answers to ``count`` chat requests sent ``concurrency`` at a time."""
    with gateway.client(gateway.keys.test_key) as client:

        def one(index: int) -> Answer:
            sent_at = time.monotonic()
            response = client.post("/v1/chat/completions", json=chat_body(f"request number {index}"))
            seconds = time.monotonic() - sent_at
            return Answer(response.status_code, response.headers["x-litellm-call-id"], sent_at, seconds)

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, range(count)))


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def wait_for_log_line(gateway: Gateway, text: str, after: int, timeout: float = 60) -> None:
    """Wait until ``text`` appears in the gateway's log after character ``after``."""
    deadline = time.monotonic() + timeout
    while text not in gateway.log_text()[after:]:
        assert time.monotonic() < deadline, f"no {text!r} in the gateway log"
        time.sleep(0.2)


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
    results: list[Answer] = []
    stop_sending = threading.Event()
    log_start = len(gateway.log_text())
    spooled_before = gateway.metrics()["pglog_records_spooled_total"]

    def keep_sending() -> None:
        while not stop_sending.is_set():
            results.extend(send_chats(gateway, 8))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        wait_for_len(results, 16)
        postgres.stop()
        down_at = time.monotonic()
        wait_for_len(results, len(results) + 48)  # answered while PostgreSQL is down
        wait_for_log_line(gateway, "PostgreSQL unavailable", log_start)
        wait_until_spooled(gateway, {answer.request_id for answer in results if answer.sent_at > down_at})
        up_at = time.monotonic()
        postgres.start()
        wait_for_len(results, len(results) + 16)
    finally:
        stop_sending.set()
        sender.join()

    assert {answer.status for answer in results} == {200}, "the gateway must answer without its database"
    during_outage = [answer.seconds for answer in results if down_at < answer.sent_at < up_at]
    assert len(during_outage) >= 40  # 48 answered while down, at most one batch of 8 sent before
    slowest = p99(during_outage)
    assert slowest < OUTAGE_P99_BOUND_SECONDS, f"p99 {slowest:.3f} s while PostgreSQL was down"
    request_ids = {answer.request_id for answer in results}
    assert len(request_ids) == len(results)
    assert_logged_once_with_status_200(logged, request_ids)
    # The outage path really ran: records went through the spool and the writer saw the recovery.
    wait_for_log_line(gateway, "PostgreSQL reachable again", log_start)
    assert gateway.metrics()["pglog_records_spooled_total"] > spooled_before


@pytest.fixture
def hung_database(pg_cluster, database_url) -> Iterator[tuple[StallingProxy, str]]:
    """The test database behind a proxy that can stall, and the URL that goes through it."""
    with StallingProxy(pg_cluster.port) as proxy:
        yield proxy, pg_cluster.url_for(database_url.rsplit("/", 1)[1], port=proxy.port)


def test_hung_postgres_never_blocks_answers_and_loses_nothing(tmp_path, hung_database, logged):
    proxy, url = hung_database
    # 2 s instead of 5 s: the writer gives up on the hung database sooner, the test is shorter.
    options = {"extra_env": {"LITELLM_PGLOG_DB_TIMEOUT_SECONDS": "2"}}
    with running_gateway(tmp_path, url, **options) as gateway:
        answers = send_chats(gateway, 8)
        assert_logged_once_with_status_200(logged, {answer.request_id for answer in answers})

        proxy.stall()  # connections stay open, nothing answers
        stalled_at, log_start = time.monotonic(), len(gateway.log_text())
        while not writer_gave_up(gateway, log_start):  # traffic goes on until the writer spooled
            assert time.monotonic() < stalled_at + SPOOL_WAIT_SECONDS, "the writer kept waiting"
            answers += send_chats(gateway, 8)
        during_stall = [answer.seconds for answer in answers if answer.sent_at > stalled_at]
        proxy.resume()
        answers += send_chats(gateway, 8)

        assert {answer.status for answer in answers} == {200}
        assert len(during_stall) >= 8
        slowest = p99(during_stall)
        assert slowest < OUTAGE_P99_BOUND_SECONDS, f"p99 {slowest:.3f} s while PostgreSQL hung"
        assert_logged_once_with_status_200(logged, {answer.request_id for answer in answers})
        wait_for_log_line(gateway, "PostgreSQL reachable again", log_start)


def writer_gave_up(gateway: Gateway, log_start: int) -> bool:
    """The writer logged the outage (after ``log_start``) and has records in the spool."""
    return "PostgreSQL unavailable" in gateway.log_text()[log_start:] and bool(gateway.spooled_request_ids())


def wait_for_len(results: list, wanted: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(results) < wanted:
        assert time.monotonic() < deadline, f"only {len(results)} of {wanted} requests answered"
        time.sleep(0.05)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_gateway_restart_replays_a_non_empty_spool(gateway, logged, postgres, stop_signal):
    written_before = {answer.request_id for answer in send_chats(gateway, 5)}
    assert_logged_once_with_status_200(logged, written_before)

    postgres.stop()
    results = send_chats(gateway, 12)
    assert {answer.status for answer in results} == {200}
    spooled = {answer.request_id for answer in results}
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
    request_ids = {answer.request_id for answer in answered}
    # Killed the moment the last answer arrived: the middleware submits before the last byte.
    gateway.stop(signal.SIGKILL)
    assert logged.count_per_request_id(request_ids) == {}, "the records were meant to be in memory only"
    gateway.extra_env = {}  # the next process replays at once, with the harness's flush interval
    gateway.start()

    assert {answer.status for answer in answered} == {200}
    rows = logged.wait_for(request_ids, timeout=90)
    assert {row["status_code"] for row in rows.values()} == {200}
    assert set(logged.count_per_request_id(request_ids).values()) == {1}
