"""LogWriter against a real PostgreSQL: batching, merging, outages, spool replay, hostile input."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litellm_pglog import runtime
from litellm_pglog.db import make_engine
from litellm_pglog.limits import ERROR_MESSAGE_MAX_CHARS
from litellm_pglog.models import Request, Response
from litellm_pglog.outage import OutageState
from litellm_pglog.records import LogRecord, new_request_id
from litellm_pglog.settings import Settings, SettingsError, load_settings
from litellm_pglog.sink import write_records
from litellm_pglog.spool import SPOOL_GLOB, encode_line
from litellm_pglog.writer import LogWriter
from prometheus_client import REGISTRY
from sqlalchemy import CheckConstraint, MetaData, Table, func, select
from sqlalchemy.schema import AddConstraint
from stall_proxy import StallingProxy

FLUSH_TIMEOUT = 30


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_writer(migrated_url: str, spool_dir: Path) -> Callable[..., LogWriter]:
    writers: list[LogWriter] = []

    def factory(url: str | None = None, start: bool = True, **overrides) -> LogWriter:
        options = {
            "db_url": url or migrated_url,
            "spool_dir": spool_dir,
            "flush_interval": 0.05,
            "batch_size": 50,
            "retry_max_seconds": 0.3,
        }
        writer = LogWriter(Settings(**(options | overrides)))
        if start:
            writer.start()
        writers.append(writer)
        return writer

    yield factory
    for writer in writers:
        writer.stop(10)


@pytest.fixture
def down_url(pg_cluster, migrated_url: str) -> str:
    """The same database on a port nobody listens on: PostgreSQL 'down'."""
    return pg_cluster.url_for(migrated_url.rsplit("/", 1)[1], port=1)


def stored(url: str) -> dict[str, dict]:
    """All request rows with their responses columns, by request_id."""
    engine = make_engine(url)
    query = select(
        *Request.__table__.c,
        Response.id.label("response_id"),
        *(Response.__table__.c[name] for name in ("latency_ms", "prompt_tokens", "completion_tokens")),
        Response.total_tokens,
    ).outerjoin(Request.response)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
        responses = connection.execute(select(func.count()).select_from(Response)).scalar()
    engine.dispose()
    by_id = {row["request_id"]: row for row in rows}
    assert len(by_id) == len(rows) == responses, "duplicate or orphan rows"
    assert all(row["response_id"] is not None for row in rows), "request row without its responses row"
    return by_id


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob(SPOOL_GLOB))


def spooled_lines(spool_dir: Path) -> list[dict]:
    return [json.loads(line) for path in spool_files(spool_dir) for line in path.read_text().splitlines()]


def counter(name: str) -> float:
    """A Prometheus counter of this process (the writers under test run in it)."""
    return REGISTRY.get_sample_value(f"{name}_total") or 0.0


LOST_LINE = re.compile(r"LOG RECORDS LOST: dropped (\d+) record\(s\): (.*)")


def lost_in_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """(count, reason) of every "LOG RECORDS LOST" line the writers logged."""
    found = (LOST_LINE.fullmatch(record.getMessage()) for record in caplog.records)
    return [(int(match[1]), match[2]) for match in found if match]


def http_half(request_id: str, status: int = 200) -> LogRecord:
    return LogRecord(
        request_id=request_id,
        route="/v1/chat/completions",
        method="POST",
        status_code=status,
        api_key="TEST_KEY",
        stream=False,
        latency_ms=12.5,
    )


def usage_half(request_id: str) -> LogRecord:
    return LogRecord(
        request_id=request_id,
        model="gpt-4o-mini",
        user_id="poc-tester",
        prompt_tokens=11,
        completion_tokens=22,
        total_tokens=33,
    )


def assert_merged(row: dict) -> None:
    assert (row["route"], row["method"], row["status_code"], row["api_key"], row["stream"]) == (
        "/v1/chat/completions",
        "POST",
        200,
        "TEST_KEY",
        False,
    )
    assert (row["model"], row["user_id"], row["latency_ms"]) == ("gpt-4o-mini", "poc-tester", 12.5)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (11, 22, 33)


# ---- normal operation -------------------------------------------------------------------------


def test_batches_reach_postgresql_with_their_responses_rows(make_writer, migrated_url):
    writer = make_writer()

    for n in range(250):
        writer.submit(http_half(f"req-{n}"))

    assert writer.flush(FLUSH_TIMEOUT)
    rows = stored(migrated_url)
    assert sorted(rows) == sorted(f"req-{n}" for n in range(250))
    assert all(row["status_code"] == 200 and row["total_tokens"] is None for row in rows.values())
    stats = writer.stats()
    assert (stats["submitted"], stats["written"], stats["spooled"], stats["dropped"]) == (250, 250, 0, 0)


@pytest.mark.parametrize("usage_first", [False, True], ids=["http-then-usage", "usage-then-http"])
@pytest.mark.parametrize("same_batch", [True, False], ids=["same-batch", "separate-batches"])
def test_two_halves_merge_into_one_row(make_writer, migrated_url, usage_first, same_batch):
    writer = make_writer()
    halves = [http_half("split"), usage_half("split")]
    if usage_first:
        halves.reverse()

    for half in halves:
        writer.submit(half)
        if not same_batch:
            assert writer.flush(FLUSH_TIMEOUT)
    assert writer.flush(FLUSH_TIMEOUT)

    rows = stored(migrated_url)
    assert list(rows) == ["split"]
    assert_merged(rows["split"])


def answered(request_id: str) -> LogRecord:
    """The middleware's record of a non-streamed answer: the usage read from the answer too."""
    record = http_half(request_id)
    record.model, record.prompt_tokens, record.completion_tokens = "gpt-4o-mini", 11, 22
    record.total_tokens = 33
    return record


def callback_usage(request_id: str, total_tokens: int = 33) -> LogRecord:
    """The usage callback's record (callbacks.usage_record): model and token counts only."""
    counts = {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": total_tokens}
    return LogRecord(request_id=request_id, model="gpt-4o-mini", **counts)


def test_a_usage_record_the_request_record_already_holds_is_merged_on_the_host(make_writer, migrated_url):
    writer = make_writer()
    before = counter("pglog_records_merged")

    writer.submit(answered("once"))
    writer.submit(callback_usage("once"))
    assert writer.flush(FLUSH_TIMEOUT)

    row = stored(migrated_url)["once"]
    assert (row["status_code"], row["model"], row["total_tokens"]) == (200, "gpt-4o-mini", 33)
    stats = writer.stats()
    assert (stats["submitted"], stats["merged"], stats["written"]) == (2, 1, 1)
    assert counter("pglog_records_merged") - before == 1


@pytest.mark.parametrize(
    "order", ["usage-first", "other-counts", "no-usage-in-answer"], ids=lambda order: order
)
def test_a_usage_record_with_news_is_submitted_and_merged_by_the_writer(make_writer, migrated_url, order):
    writer = make_writer()
    records = {
        "usage-first": [callback_usage("r"), answered("r")],
        "other-counts": [answered("r"), callback_usage("r", total_tokens=34)],
        "no-usage-in-answer": [http_half("r"), callback_usage("r")],  # a stream without usage
    }[order]

    for record in records:
        writer.submit(record)
    assert writer.flush(FLUSH_TIMEOUT)

    row = stored(migrated_url)["r"]
    expected_total = 34 if order == "other-counts" else 33  # later non-NULL values win
    assert (row["status_code"], row["model"], row["total_tokens"]) == (200, "gpt-4o-mini", expected_total)
    stats = writer.stats()
    assert (stats["submitted"], stats["merged"], stats["written"]) == (2, 0, 2)


def test_null_never_overwrites_a_known_value(make_writer, migrated_url):
    writer = make_writer()
    writer.submit(http_half("r"))
    writer.submit(usage_half("r"))
    assert writer.flush(FLUSH_TIMEOUT)

    writer.submit(LogRecord(request_id="r", status_code=499, error_type="ClientDisconnected"))
    assert writer.flush(FLUSH_TIMEOUT)

    row = stored(migrated_url)["r"]
    assert (row["status_code"], row["error_type"], row["model"], row["total_tokens"]) == (
        499,
        "ClientDisconnected",
        "gpt-4o-mini",
        33,
    )


def test_replays_of_the_same_record_keep_one_row(make_writer, migrated_url):
    writer = make_writer()
    for _ in range(3):
        writer.submit(http_half("again"))
        assert writer.flush(FLUSH_TIMEOUT)
    engine = make_engine(migrated_url)
    for _ in range(2):
        with engine.begin() as connection:
            write_records(connection, [usage_half("again"), usage_half("again")])
    engine.dispose()

    rows = stored(migrated_url)
    assert list(rows) == ["again"]
    assert_merged(rows["again"])


def test_earliest_timestamp_wins_within_a_batch(make_writer, migrated_url):
    # Ids that are no UUIDv7 (records spooled by older releases) keep their own timestamps.
    writer = make_writer(flush_interval=3600, batch_size=1000)
    now = datetime.now(UTC)
    writer.submit(LogRecord(request_id="t", created_at=now))
    writer.submit(LogRecord(request_id="t", created_at=now - timedelta(hours=1)))
    assert writer.flush(FLUSH_TIMEOUT)

    assert stored(migrated_url)["t"]["created_at"] == now - timedelta(hours=1)


def test_uuid7_request_id_decides_the_timestamp(make_writer, migrated_url):
    # The callback's record has no timestamp and arrives in another batch, before or after.
    writer = make_writer()
    request_id, created_at = new_request_id()
    writer.submit(usage_half(request_id))
    assert writer.flush(FLUSH_TIMEOUT)
    writer.submit(LogRecord(request_id=request_id, created_at=created_at - timedelta(hours=1)))
    writer.submit(http_half(request_id))
    assert writer.flush(FLUSH_TIMEOUT)

    rows = stored(migrated_url)
    assert list(rows) == [request_id]
    assert rows[request_id]["created_at"] == created_at
    assert_merged(rows[request_id])


@pytest.mark.parametrize("same_batch", [True, False], ids=["same-batch", "separate-batches"])
def test_later_non_null_values_win(make_writer, migrated_url, same_batch):
    # Nothing is written before a flush: "same-batch" merges in memory, the other in the upsert.
    writer = make_writer(flush_interval=3600, batch_size=1000)
    earlier = LogRecord(
        request_id="later",
        model="earlier-model",
        status_code=500,
        latency_ms=1.0,
        prompt_tokens=1,
        completion_tokens=2,
        total_tokens=3,
    )

    writer.submit(earlier)
    if not same_batch:
        assert writer.flush(FLUSH_TIMEOUT)
    writer.submit(http_half("later"))
    writer.submit(usage_half("later"))
    assert writer.flush(FLUSH_TIMEOUT)

    assert_merged(stored(migrated_url)["later"])


# ---- PostgreSQL unavailable -------------------------------------------------------------------


def test_database_outage_loses_and_duplicates_nothing(
    make_writer, migrated_url, pg_cluster, spool_dir, caplog
):
    writer = make_writer()
    ids = [f"outage-{n}" for n in range(400)]
    for request_id in ids[:150]:
        writer.submit(http_half(request_id))
    assert writer.flush(FLUSH_TIMEOUT)

    pg_cluster.stop()
    try:
        for request_id in ids[150:300]:
            writer.submit(http_half(request_id))
            writer.submit(usage_half(request_id))
        assert writer.flush(FLUSH_TIMEOUT)
        assert writer.stats()["spooled"] > 0
        assert spool_files(spool_dir)
    finally:
        pg_cluster.start()
    for request_id in ids[300:]:
        writer.submit(http_half(request_id))

    wait_for(lambda: len(stored(migrated_url)) == len(ids) and not spool_files(spool_dir))
    assert writer.flush(FLUSH_TIMEOUT)
    rows = stored(migrated_url)
    assert sorted(rows) == sorted(ids)
    for request_id in ids[150:300]:
        assert_merged(rows[request_id])
    stats = writer.stats()
    assert stats["db_errors"] >= 1 and stats["dropped"] == 0
    assert stats["replayed"] == stats["spooled"]
    assert "PostgreSQL unavailable" in caplog.text
    assert "PostgreSQL reachable again" in caplog.text
    assert pg_cluster.password not in caplog.text


def test_recovery_asks_for_a_spool_replay_at_once(tmp_path):
    # Spool files a failed replay attempt sealed are no longer "being spooled to": after the
    # recovery they must be replayed at once, not at the next periodic scan (SPOOL_SCAN_SECONDS).
    outage = OutageState(retry_max_seconds=0.3, where="test", spool_directory=tmp_path)
    assert outage.replay_due(lambda: True, spooling_now=False)  # a new writer replays at once
    outage.replay_started()
    assert not outage.replay_due(lambda: True, spooling_now=False)

    outage.mark_down("connection refused")
    outage.mark_up()

    assert outage.replay_due(lambda: True, spooling_now=False)


# The writer's bound on any database call in the hung test; 2 s is libpq's smallest connect_timeout.
HUNG_DB_TIMEOUT_SECONDS = 2.0
# submit() is one write(2) to the journal and an append to a deque: microseconds. 0.25 s leaves
# room for a loaded 2-core CI machine and still fails if submit() ever waits for the database,
# which would take at least HUNG_DB_TIMEOUT_SECONDS.
SUBMIT_BOUND_SECONDS = 0.25


def test_hung_database_spools_and_everything_lands_after_it_resumes(
    make_writer, pg_cluster, migrated_url, spool_dir, caplog
):
    ids = [f"hung-{n}" for n in range(300)]
    durations: list[float] = []
    with StallingProxy(pg_cluster.port) as proxy:
        url = pg_cluster.url_for(migrated_url.rsplit("/", 1)[1], port=proxy.port)
        writer = make_writer(url, db_timeout_seconds=HUNG_DB_TIMEOUT_SECONDS)
        for request_id in ids[:50]:
            writer.submit(http_half(request_id))
        assert writer.flush(FLUSH_TIMEOUT)  # the pool now holds connections through the proxy

        proxy.stall()  # connections stay open, nothing answers
        for request_id in ids[50:250]:
            started = time.perf_counter()
            writer.submit(http_half(request_id))
            writer.submit(usage_half(request_id))
            durations.append(time.perf_counter() - started)
            time.sleep(0.02)  # about 4 s of traffic while the writer waits out its deadline
        wait_for(lambda: writer.stats()["spooled"] > 0 and bool(spool_files(spool_dir)))
        assert "PostgreSQL unavailable" in caplog.text
        proxy.resume()
        for request_id in ids[250:]:
            writer.submit(http_half(request_id))
        wait_for(lambda: len(stored(migrated_url)) == len(ids) and not spool_files(spool_dir), timeout=60)
        assert writer.flush(FLUSH_TIMEOUT)
        writer.stop(10)  # before its connections through the proxy go away

    assert max(durations) < SUBMIT_BOUND_SECONDS, f"submit() blocked for {max(durations):.3f} s"
    rows = stored(migrated_url)  # also asserts: no duplicate rows
    assert sorted(rows) == sorted(ids)
    for request_id in ids[50:250]:
        assert_merged(rows[request_id])
    stats = writer.stats()
    assert stats["db_errors"] >= 1 and stats["dropped"] == 0
    assert stats["replayed"] == stats["spooled"] > 0
    assert "PostgreSQL reachable again" in caplog.text


def test_stop_while_database_down_spools_everything(make_writer, down_url, spool_dir):
    writer = make_writer(down_url)
    for n in range(120):
        writer.submit(http_half(f"s-{n}"))

    writer.stop(10)

    stats = writer.stats()
    assert (stats["spooled"], stats["written"], stats["dropped"]) == (120, 0, 0)
    lines = [json.loads(line) for path in spool_files(spool_dir) for line in path.read_text().splitlines()]
    assert sorted(line["request_id"] for line in lines) == sorted(f"s-{n}" for n in range(120))
    assert all(f"pglog-{os.getpid()}-" in path.name for path in spool_files(spool_dir))


# Far beyond stop()'s timeout below: the writer thread stays stuck on the hung database meanwhile.
STUCK_DB_TIMEOUT_SECONDS = 60


def test_stop_spools_what_a_stuck_writer_thread_holds(make_writer, pg_cluster, migrated_url, spool_dir):
    ids = [f"stuck-{n}" for n in range(120)]
    with StallingProxy(pg_cluster.port) as proxy:
        url = pg_cluster.url_for(migrated_url.rsplit("/", 1)[1], port=proxy.port)
        writer = make_writer(url, db_timeout_seconds=STUCK_DB_TIMEOUT_SECONDS, batch_size=50)
        writer.submit(http_half("warm-up"))
        assert writer.flush(FLUSH_TIMEOUT)

        proxy.stall()
        for request_id in ids:
            writer.submit(http_half(request_id))
        # The thread took one batch (in flight, stuck on the database); the rest waits in the queue.
        wait_for(lambda: writer.stats()["queue_depth"] == len(ids) - 50)
        started = time.monotonic()
        writer.stop(1)
        stop_seconds = time.monotonic() - started
        spooled = [line["request_id"] for line in spooled_lines(spool_dir)]

        proxy.resume()  # the stuck batch goes through after all: the upsert makes that harmless
        wait_for(lambda: writer.stats()["written"] == 1 + 50)

    assert stop_seconds < 5, f"stop() took {stop_seconds:.1f} s"
    assert sorted(spooled) == sorted(ids), "stop() did not spool what the stuck writer thread held"
    make_writer()  # the next process replays the spool, once
    wait_for(lambda: sorted(stored(migrated_url)) == sorted(["warm-up", *ids]) and not spool_files(spool_dir))


def test_flush_is_not_done_while_the_last_record_is_held(make_writer, pg_cluster, migrated_url):
    with StallingProxy(pg_cluster.port) as proxy:
        url = pg_cluster.url_for(migrated_url.rsplit("/", 1)[1], port=proxy.port)
        writer = make_writer(url, db_timeout_seconds=STUCK_DB_TIMEOUT_SECONDS)
        writer.submit(http_half("first"))
        wait_for(lambda: writer.stats()["written"] == 1)  # the pool holds a connection through the proxy

        proxy.stall()
        writer.submit(http_half("held"))  # the writer thread takes it and waits on the hung database
        assert not writer.flush(1), "flush() reported success with a record neither written nor spooled"

        proxy.resume()
        assert writer.flush(FLUSH_TIMEOUT)
        writer.stop(10)  # before its connections through the proxy go away

    assert sorted(stored(migrated_url)) == ["first", "held"]


def test_next_writer_replays_the_spool_once(make_writer, down_url, migrated_url, spool_dir):
    previous = make_writer(down_url)
    for n in range(100):
        previous.submit(http_half(f"p-{n}"))
        previous.submit(usage_half(f"p-{n}"))
        previous.submit(http_half(f"p-{n}"))  # a replay of the same half
    previous.stop(10)
    assert spool_files(spool_dir)

    successor = make_writer()

    wait_for(lambda: not spool_files(spool_dir) and len(stored(migrated_url)) == 100)
    rows = stored(migrated_url)
    for row in rows.values():
        assert_merged(row)
    assert successor.stats()["replayed"] == 300


def test_live_writers_spool_file_is_not_claimed(make_writer, down_url, migrated_url, spool_dir):
    live = make_writer(down_url)
    live.submit(http_half("held"))
    assert live.flush(FLUSH_TIMEOUT)
    (held,) = spool_files(spool_dir)

    other = make_writer()
    other.submit(http_half("other"))
    assert other.flush(FLUSH_TIMEOUT)
    time.sleep(0.3)

    assert held.exists() and list(stored(migrated_url)) == ["other"]
    live.stop(10)
    make_writer()
    wait_for(lambda: sorted(stored(migrated_url)) == ["held", "other"] and not spool_files(spool_dir))


def test_torn_spool_line_is_dropped_loudly_and_the_rest_replayed(
    make_writer, migrated_url, spool_dir, caplog
):
    spool_dir.mkdir()
    torn = encode_line(http_half("torn"))[:20]
    (spool_dir / "pglog-1-0.jsonl").write_bytes(encode_line(http_half("whole")) + torn)

    writer = make_writer()

    wait_for(lambda: not spool_files(spool_dir))
    assert list(stored(migrated_url)) == ["whole"]
    assert writer.stats()["dropped"] == 1
    assert "unreadable spool line 2" in caplog.text


def test_full_spool_drops_counts_and_logs_an_error(make_writer, down_url, spool_dir, caplog):
    writer = make_writer(down_url, spool_max_bytes=2000)
    caplog.set_level(logging.ERROR, logger="litellm_pglog")
    dropped_before, spooled_before = counter("pglog_records_dropped"), counter("pglog_records_spooled")

    for n in range(50):
        writer.submit(http_half(f"f-{n}"))
    assert writer.flush(FLUSH_TIMEOUT)

    stats = writer.stats()
    lost = lost_in_log(caplog)
    assert stats["dropped"] > 0
    # One count, three witnesses: stats(), the Prometheus counter and the error lines.
    assert stats["dropped"] == counter("pglog_records_dropped") - dropped_before == sum(n for n, _ in lost)
    assert {reason for _, reason in lost} == {"spool full (2000 bytes)"}
    # Whatever was not dropped is in the spool, once: nothing vanished without a count.
    kept = [line["request_id"] for line in spooled_lines(spool_dir)]
    assert len(kept) == len(set(kept))
    assert stats["spooled"] == len(kept) == counter("pglog_records_spooled") - spooled_before
    assert stats["spooled"] + stats["dropped"] == 50


def test_queue_overflow_goes_to_the_spool_and_then_to_postgresql(make_writer, migrated_url, spool_dir):
    writer = make_writer(queue_max=5, batch_size=5)

    for n in range(300):
        writer.submit(http_half(f"o-{n}"))

    assert writer.flush(FLUSH_TIMEOUT)
    wait_for(lambda: len(stored(migrated_url)) == 300 and not spool_files(spool_dir))
    stats = writer.stats()
    assert stats["spooled"] > 0 and stats["dropped"] == 0
    assert stats["written"] + stats["replayed"] == 300


# ---- bad input --------------------------------------------------------------------------------


def test_hostile_values_are_stored_safely(make_writer, migrated_url):
    writer = make_writer()
    injection = "x'; DROP TABLE requests; --"
    writer.submit(
        LogRecord(
            request_id=injection,
            route="/v1/chat/completions?q=' OR 1=1 --",
            method="PO\x00ST",
            model="модель-模型-🚀",
            user_id="Robert'); DROP TABLE responses;--",
            api_key="\\'\"%s%(x)s",
            error_type="bad\x00type\ud800",
            error_message="E" * 1_000_000,
            status_code="418",
            prompt_tokens=10**12,
            latency_ms=True,
        )
    )
    writer.submit(LogRecord(request_id="nul\x00id", model="\ud83d lone surrogate"))
    assert writer.flush(FLUSH_TIMEOUT)

    rows = stored(migrated_url)
    assert sorted(rows) == sorted([injection, "nul\ufffdid"])
    row = rows[injection]
    assert row["route"] == "/v1/chat/completions?q=' OR 1=1 --"
    assert row["method"] == "PO\ufffdST"
    assert row["model"] == "модель-模型-🚀"
    assert row["user_id"] == "Robert'); DROP TABLE responses;--"
    assert row["api_key"] == "\\'\"%s%(x)s"
    assert row["error_type"] == "bad\ufffdtype?"
    assert row["error_message"] == "E" * ERROR_MESSAGE_MAX_CHARS
    assert (row["status_code"], row["prompt_tokens"], row["latency_ms"]) == (418, None, None)
    assert rows["nul\ufffdid"]["model"] == "? lone surrogate"
    assert writer.stats()["written"] == 2


def refuse_status_999(url: str) -> None:
    """A constraint only status 999 violates: PostgreSQL refuses such a record for good."""
    engine = make_engine(url)
    with engine.begin() as connection:
        requests = Table("requests", MetaData(), autoload_with=connection)
        check = CheckConstraint(requests.c.status_code < 600, name="ck_requests_test_status")
        connection.execute(AddConstraint(check))
    engine.dispose()


def test_refused_record_is_isolated_and_kept(make_writer, migrated_url, spool_dir, caplog):
    refuse_status_999(migrated_url)
    writer = make_writer()

    for n in range(10):
        writer.submit(http_half(f"c-{n}", status=999 if n == 4 else 200))
    assert writer.flush(FLUSH_TIMEOUT)

    assert sorted(stored(migrated_url)) == sorted(f"c-{n}" for n in range(10) if n != 4)
    stats = writer.stats()
    assert (stats["written"], stats["rejected"], stats["spooled"]) == (9, 1, 0)
    (rejected,) = spool_dir.glob("rejected-*.jsonl")
    kept = json.loads(rejected.read_text())
    assert kept["record"]["request_id"] == "c-4" and "ck_requests_test_status" in kept["error"]
    assert "c-4" in caplog.text


def test_submit_never_raises(make_writer):
    writer = make_writer()

    writer.submit(None)  # type: ignore[arg-type]
    writer.submit(LogRecord(request_id=""))

    assert writer.stats()["dropped"] == 2


def test_writer_requires_a_database_url(spool_dir):
    with pytest.raises(ValueError, match="LITELLM_DB_URL"):
        LogWriter(Settings(db_url=None, spool_dir=spool_dir))


# ---- process wiring ---------------------------------------------------------------------------


def test_get_writer_is_one_started_writer_per_process(monkeypatch, migrated_url, spool_dir):
    # No entry point installed a runtime: the first use builds one from the environment.
    monkeypatch.setenv("LITELLM_DB_URL", migrated_url)
    monkeypatch.setenv("LITELLM_PGLOG_SPOOL_DIR", str(spool_dir))
    monkeypatch.setattr(runtime, "_current", None)

    writer = runtime.get_writer()
    try:
        assert runtime.get_writer() is writer
        writer.submit(http_half("singleton"))
        assert writer.flush(FLUSH_TIMEOUT)
        assert list(stored(migrated_url)) == ["singleton"]
    finally:
        writer.stop(10)


def test_prometheus_counters_follow_the_writer(make_writer, migrated_url):
    before = counter("pglog_rows_written")
    writer = make_writer()
    for n in range(7):
        writer.submit(http_half(f"m-{n}"))
    assert writer.flush(FLUSH_TIMEOUT)

    assert counter("pglog_rows_written") == before + 7 == before + len(stored(migrated_url))
    assert REGISTRY.get_sample_value("pglog_queue_depth") == 0


def test_database_timeout_setting_defaults_to_the_former_connect_timeout():
    assert load_settings({}).db_timeout_seconds == 5.0
    assert load_settings({"LITELLM_PGLOG_DB_TIMEOUT_SECONDS": "2.5"}).db_timeout_seconds == 2.5
    with pytest.raises(SettingsError, match="LITELLM_PGLOG_DB_TIMEOUT_SECONDS"):
        load_settings({"LITELLM_PGLOG_DB_TIMEOUT_SECONDS": "0"})
