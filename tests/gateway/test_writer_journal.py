"""The writer's journal: records a killed process still held in memory are replayed, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from litellm_pglog.records import LogRecord
from litellm_pglog.spool import JOURNAL_GLOB, encode_line
from test_writer import (
    FLUSH_TIMEOUT,
    down_url,
    http_half,
    make_writer,
    spool_dir,
    spool_files,
    stored,
    wait_for,
)

__all__ = ["down_url", "make_writer", "spool_dir"]  # fixtures shared with test_writer.py

# Submits ``count`` records (the first ``flush_after`` of them flushed), then dies by SIGKILL.
# Nothing is due before that: a one-hour flush interval and batches larger than ``count``.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from litellm_pglog.records import LogRecord
from litellm_pglog.settings import Settings
from litellm_pglog.writer import LogWriter

count, flush_after = int(sys.argv[1]), int(sys.argv[2])
settings = Settings(
    db_url=os.environ["PGLOG_TEST_DB_URL"],
    spool_dir=Path(os.environ["PGLOG_TEST_SPOOL_DIR"]),
    flush_interval=3600,
    batch_size=count + 1,
)
writer = LogWriter(settings)
writer.start()
for n in range(count):
    writer.submit(LogRecord(request_id=f"k-{n}", route="/v1/chat/completions", status_code=200))
    if n + 1 == flush_after:
        assert writer.flush(30)
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_killed_writer(db_url: str, spool_dir: Path, count: int, flush_after: int = 0) -> None:
    environment = os.environ | {"PGLOG_TEST_DB_URL": db_url, "PGLOG_TEST_SPOOL_DIR": str(spool_dir)}
    process = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(count), str(flush_after)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr


def journal_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob(JOURNAL_GLOB))


def wait_for_rows(url: str, request_ids: list[str], timeout: float = 30) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while (rows := stored(url)).keys() != set(request_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    missing = set(request_ids) - rows.keys()
    assert not missing, f"{len(missing)} of {len(request_ids)} records lost, e.g. {sorted(missing)[:3]}"
    return rows


# ---- a killed writer --------------------------------------------------------------------------


def test_records_in_memory_at_sigkill_are_replayed_once(make_writer, migrated_url, spool_dir):
    run_killed_writer(migrated_url, spool_dir, count=500)
    assert stored(migrated_url) == {}, "the killed writer was not supposed to write anything"

    successor = make_writer()

    rows = wait_for_rows(migrated_url, [f"k-{n}" for n in range(500)])
    assert {row["status_code"] for row in rows.values()} == {200}  # stored() also checks: no duplicates
    wait_for(lambda: not journal_files(spool_dir) and not spool_files(spool_dir))
    assert successor.stats()["replayed"] == 500


def test_sigkill_while_database_down_loses_and_duplicates_nothing(
    make_writer, down_url, migrated_url, spool_dir
):
    # The first half reaches the spool (PostgreSQL down), the second is only in memory at the kill.
    run_killed_writer(down_url, spool_dir, count=400, flush_after=200)
    assert spool_files(spool_dir)

    make_writer()

    wait_for_rows(migrated_url, [f"k-{n}" for n in range(400)])
    wait_for(lambda: not journal_files(spool_dir) and not spool_files(spool_dir))
    assert len(stored(migrated_url)) == 400


# ---- a living writer --------------------------------------------------------------------------


def test_journals_are_deleted_once_their_records_are_written(make_writer, migrated_url, spool_dir):
    writer = make_writer()
    seen: set[Path] = set()
    ids = [f"j-{n}" for n in range(600)]

    for start in range(0, len(ids), 20):  # about 3 s of traffic: the journal rotates meanwhile
        for request_id in ids[start : start + 20]:
            writer.submit(http_half(request_id))
        seen.update(journal_files(spool_dir))
        time.sleep(0.1)
    assert writer.flush(FLUSH_TIMEOUT)

    assert len(seen) >= 2, "the journal was never rotated"
    wait_for(lambda: not journal_files(spool_dir))  # the last one is retired and deleted too
    assert sorted(stored(migrated_url)) == sorted(ids)
    assert writer.stats()["replayed"] == 0


@pytest.mark.parametrize("database", ["up", "down"])
def test_stop_deletes_the_journal(make_writer, migrated_url, down_url, spool_dir, database):
    writer = make_writer(migrated_url if database == "up" else down_url, flush_interval=3600)
    for n in range(50):
        writer.submit(http_half(f"s-{n}"))
    assert journal_files(spool_dir)

    writer.stop(10)

    assert not journal_files(spool_dir)
    kept = stored(migrated_url) if database == "up" else spooled_ids(spool_dir)
    assert sorted(kept) == sorted(f"s-{n}" for n in range(50))


def test_live_writers_journal_is_not_replayed_by_another(make_writer, migrated_url, spool_dir):
    live = make_writer(flush_interval=3600, batch_size=1000)
    live.submit(http_half("in-memory"))
    (journal,) = journal_files(spool_dir)

    other = make_writer()
    other.submit(http_half("other"))
    assert other.flush(FLUSH_TIMEOUT)
    time.sleep(0.3)

    assert journal.exists() and list(stored(migrated_url)) == ["other"]
    assert live.flush(FLUSH_TIMEOUT)
    assert sorted(stored(migrated_url)) == ["in-memory", "other"]
    assert other.stats()["replayed"] == 0


def test_journal_lines_use_the_spool_format():
    record = http_half("format")
    record.model = "modèle \ud800 \x00"

    assert json.loads(encode_line(record)) == json.loads(json.dumps(record.to_json_dict()))
    assert LogRecord.from_json_dict(json.loads(encode_line(record))) == record


def spooled_ids(spool_dir: Path) -> list[str]:
    return [json.loads(line)["request_id"] for path in spool_files(spool_dir) for line in path.open("rb")]
