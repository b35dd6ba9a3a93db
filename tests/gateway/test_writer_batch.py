"""The one-statement batch upsert: replayed batches, split halves, refused records, big replays."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from litellm_pglog import fastjson
from litellm_pglog.db import make_engine
from litellm_pglog.limits import BACKLOG_BATCH_SIZE
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.records import LogRecord
from litellm_pglog.sink import DatabaseSink, clean_values, copy_data, merge_rows, write_records
from litellm_pglog.spool import Spool, decode_line, decode_values, encode_line, encode_row
from test_writer import (
    assert_merged,
    down_url,
    http_half,
    make_writer,
    refuse_status_999,
    spool_dir,
    spool_files,
    stored,
    usage_half,
    wait_for,
)

__all__ = ["down_url", "make_writer", "spool_dir"]  # fixtures shared with test_writer.py


class Rejected(list):
    """An OnReject callback that keeps what it is told."""

    def __call__(self, record: LogRecord, exc: BaseException) -> None:
        self.append((record, exc))


@pytest.fixture
def sink(migrated_url: str):
    engine = make_engine(migrated_url)
    rejected = Rejected()
    yield DatabaseSink(engine, WriterMetrics(), rejected, timeout=30), rejected
    engine.dispose()


def write_spool_file(directory: Path, records: list[LogRecord]) -> Path:
    """A spool file as a writer that exited leaves it (the real spool code)."""
    spool = Spool(directory, max_bytes=2**40)
    spool.append([encode_line(record) for record in records], sync=True)
    path = spool.active_path
    spool.seal()
    return path


# ---- the same batch twice -----------------------------------------------------------------------


def test_a_batch_sent_twice_leaves_one_row_each(sink, migrated_url):
    database, _ = sink
    batch = [record for n in range(300) for record in (http_half(f"d-{n}"), usage_half(f"d-{n}"))]

    assert database.write(batch) == 600
    assert database.write(batch) == 600  # e.g. a crash after the commit, before the spool file went

    rows = stored(migrated_url)  # also asserts: no duplicate request or responses rows
    assert sorted(rows) == sorted(f"d-{n}" for n in range(300))
    for row in rows.values():
        assert_merged(row)


def test_a_spool_file_replayed_again_after_a_crash_adds_no_row(make_writer, migrated_url, spool_dir):
    records = [record for n in range(200) for record in (http_half(f"c-{n}"), usage_half(f"c-{n}"))]
    path = write_spool_file(spool_dir, records)
    kept = spool_dir.parent / "kept.jsonl"
    shutil.copy(path, kept)

    first = make_writer()
    wait_for(lambda: not spool_files(spool_dir))
    first.stop(10)
    shutil.copy(kept, path)  # the replayer died between its commit and the unlink
    second = make_writer()
    wait_for(lambda: not spool_files(spool_dir))

    rows = stored(migrated_url)
    assert len(rows) == 200
    for row in rows.values():
        assert_merged(row)
    assert first.stats()["replayed"] == second.stats()["replayed"] == 400


# ---- halves in separate batches, any order ------------------------------------------------------


@pytest.mark.parametrize("usage_first", [False, True], ids=["http-then-usage", "usage-then-http"])
def test_halves_in_separate_statements_keep_status_and_tokens(migrated_url, usage_first):
    halves = [http_half("sep", status=503), usage_half("sep")]
    if usage_first:
        halves.reverse()
    engine = make_engine(migrated_url)
    for half in halves:
        with engine.begin() as connection:
            write_records(connection, [half, LogRecord(request_id=f"other-{half.status_code}")])
    engine.dispose()

    row = stored(migrated_url)["sep"]
    assert (row["status_code"], row["route"], row["latency_ms"]) == (503, "/v1/chat/completions", 12.5)
    assert (row["model"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        "gpt-4o-mini",
        11,
        22,
        33,
    )


@pytest.mark.parametrize("usage_first", [False, True], ids=["http-then-usage", "usage-then-http"])
def test_halves_in_different_spool_files_merge_on_replay(make_writer, migrated_url, spool_dir, usage_first):
    ids = [f"h-{n}" for n in range(150)]
    first, second = [http_half(i) for i in ids], [usage_half(i) for i in ids]
    if usage_first:
        first, second = second, first
    write_spool_file(spool_dir, first)
    write_spool_file(spool_dir, second)

    make_writer()

    wait_for(lambda: not spool_files(spool_dir))
    rows = stored(migrated_url)
    assert sorted(rows) == sorted(ids)
    for row in rows.values():
        assert_merged(row)


def test_a_later_status_replaces_an_earlier_one_across_batches(sink, migrated_url):
    database, _ = sink
    database.write([http_half("late"), usage_half("late")])
    database.write([LogRecord(request_id="late", status_code=499, error_type="ClientDisconnected")])

    row = stored(migrated_url)["late"]
    assert (row["status_code"], row["error_type"], row["total_tokens"]) == (499, "ClientDisconnected", 33)


# ---- refused records --------------------------------------------------------------------------


def test_refused_records_in_a_big_batch_lose_none_of_the_others(sink, migrated_url):
    refuse_status_999(migrated_url)
    database, rejected = sink
    poisoned = {0, 777, 1999}
    batch = [http_half(f"b-{n}", status=999 if n in poisoned else 200) for n in range(2000)]

    assert database.write(batch) == 2000 - len(poisoned)

    assert sorted(stored(migrated_url)) == sorted(f"b-{n}" for n in range(2000) if n not in poisoned)
    assert sorted(record.request_id for record, _ in rejected) == sorted(f"b-{n}" for n in poisoned)
    assert all("ck_requests_test_status" in str(exc) for _, exc in rejected)


def test_a_refused_half_does_not_take_the_other_half_with_it(sink, migrated_url):
    refuse_status_999(migrated_url)
    database, rejected = sink

    database.write([usage_half("half"), http_half("half", status=999), http_half("fine")])

    rows = stored(migrated_url)
    assert sorted(rows) == ["fine", "half"]
    assert (rows["half"]["status_code"], rows["half"]["total_tokens"]) == (None, 33)
    assert [record.request_id for record, _ in rejected] == ["half"]


def test_unusable_spool_lines_are_rejected_and_the_rest_replayed(make_writer, migrated_url, spool_dir):
    spool_dir.mkdir()
    lines = [encode_line(http_half("good-1")), json.dumps({"request_id": "", "route": "/x"}).encode() + b"\n"]
    lines.append(encode_line(http_half("good-2")))
    (spool_dir / "pglog-1-0.jsonl").write_bytes(b"".join(lines))

    writer = make_writer()

    wait_for(lambda: not spool_files(spool_dir))
    assert sorted(stored(migrated_url)) == ["good-1", "good-2"]
    assert (writer.stats()["replayed"], writer.stats()["rejected"]) == (2, 1)
    (rejected,) = spool_dir.glob("rejected-*.jsonl")
    assert json.loads(rejected.read_text())["record"]["route"] == "/x"


# ---- big replays ------------------------------------------------------------------------------


def test_a_backlog_bigger_than_a_replay_batch_lands_once(make_writer, migrated_url, spool_dir):
    requests = BACKLOG_BATCH_SIZE  # two records each, and one record ahead of them all: the
    ids = [f"big-{n}" for n in range(requests)]  # two halves of a request straddle each batch end
    records = [http_half("big-lead")] + [record for i in ids for record in (http_half(i), usage_half(i))]
    write_spool_file(spool_dir, records)

    writer = make_writer()

    wait_for(lambda: not spool_files(spool_dir), timeout=60)
    rows = stored(migrated_url)
    assert len(rows) == requests + 1
    for request_id in ids:
        assert_merged(rows[request_id])
    assert writer.stats()["replayed"] == 2 * requests + 1


# ---- merging in memory ------------------------------------------------------------------------


def test_merge_rows_leaves_its_input_alone():
    earlier = datetime(2026, 1, 1, tzinfo=UTC)
    first = clean_values(LogRecord(request_id="m", status_code=200, created_at=earlier))
    second = clean_values(LogRecord(request_id="m", prompt_tokens=5, created_at=datetime.now(UTC)))
    before = dict(first), dict(second)

    (merged,) = merge_rows([first, second])

    assert (first, second) == before
    assert (merged["status_code"], merged["prompt_tokens"], merged["created_at"]) == (200, 5, earlier)


# ---- the JSON lines of journal and spool, the COPY text of a batch ----------------------------


@pytest.mark.parametrize("library", ["orjson", "stdlib"])
def test_journal_lines_are_the_same_with_or_without_orjson(monkeypatch, library):
    if library == "stdlib":
        monkeypatch.setattr(fastjson, "orjson", None)
    record = LogRecord(request_id="j", model="модель 🚀\n\t\\", latency_ms=1.5, stream=True, status_code=200)
    row = clean_values(record)
    line = encode_line(LogRecord(request_id="j", model="\ud800", latency_ms=float("nan")))

    assert encode_row(row).endswith(b"\n") and encode_row(row).count(b"\n") == 1
    assert decode_line(encode_row(row)) == LogRecord(**row)
    assert clean_values(decode_values(encode_row(row))) == row  # a replay's path: no LogRecord
    other = clean_values(LogRecord(request_id="not-a-uuid7", created_at=datetime(2026, 1, 2, tzinfo=UTC)))
    assert clean_values(decode_values(encode_row(other))) == other  # its own time, parsed back
    assert json.loads(encode_row(row)) == row | {"created_at": row["created_at"].isoformat()}
    assert fastjson.loads(line)["model"] == "\ud800"  # a line the standard library wrote, NaN included


def test_copy_text_escapes_what_copy_reads_as_syntax(make_writer, migrated_url):
    """Backslash, tab, newline and CR in a value reach PostgreSQL as they were (COPY text format)."""
    tricky = "a\\b\tc\nd\re \\N \\. end"
    writer = make_writer()
    writer.submit(LogRecord(request_id="copy-escapes", status_code=200, model=tricky, error_message="\\N"))
    writer.submit(LogRecord(request_id="copy-escapes", prompt_tokens=3))
    assert writer.flush(30)
    row = stored(migrated_url)["copy-escapes"]
    assert (row["model"], row["error_message"], row["prompt_tokens"]) == (tricky, "\\N", 3)
    assert "\\N" in copy_data([clean_values(LogRecord(request_id="x"))], [False]).decode()


def test_a_float_json_cannot_carry_is_stored_as_null(make_writer, migrated_url):
    writer = make_writer()
    writer.submit(LogRecord(request_id="nan", status_code=200, latency_ms=float("nan")))
    writer.submit(LogRecord(request_id="inf", status_code=200, latency_ms=float("inf")))
    assert writer.flush(30)

    rows = stored(migrated_url)
    assert (rows["nan"]["latency_ms"], rows["inf"]["latency_ms"]) == (None, None)
    assert writer.stats()["written"] == 2
