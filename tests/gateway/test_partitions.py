"""Partitioned log tables against a real PostgreSQL: revision 0003, the maintenance job, the writer.

The job takes ``today`` as a parameter: the tests move its clock instead of waiting for days.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from alembic import command
from litellm_pglog.db import make_engine
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.partitions import (
    Partition,
    Policy,
    day_start,
    free_parts,
    partitions_of,
    run,
    wanted_spans,
)
from litellm_pglog.records import LogRecord, new_request_id, request_id_time
from litellm_pglog.schema import _config, render_upgrade_sql, upgrade_schema
from litellm_pglog.sink import DatabaseSink, upsert_rows, write_records
from runbook_sql import PART_4_3, PART_4_4, PART_5_1
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from test_schema import run_concurrently

TODAY = datetime.now(UTC).date()
POLICY = Policy()  # premake 7 days, retention 90 days, daily


def day_name(parent: str, day: date) -> str:
    return f"{parent}_p{day:%Y%m%d}"


def names(url: str, parent: str = "requests") -> set[str]:
    engine = make_engine(url)
    with engine.connect() as connection:
        connection.execute(text("SET TimeZone = 'UTC'"))
        found = {partition.name for partition in partitions_of(connection, parent)}
    engine.dispose()
    return found


def where_rows_are(engine: Engine, table: str = "requests") -> dict[str, str]:
    """request_id (or request_id_fk) -> the partition holding the row."""
    key = "request_id" if table == "requests" else "request_id_fk::text"
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT {key}, tableoid::regclass::text FROM {table}"))
        return dict(rows.all())


def record_at(request_id: str, when: datetime) -> LogRecord:
    return LogRecord(request_id=request_id, created_at=when, route="/v1/chat/completions", status_code=200)


def write(url: str, records: list[LogRecord]) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        write_records(connection, records)
    engine.dispose()


def linked_rows(engine: Engine, where: str = "TRUE") -> int:
    """Requests joined to their responses row over the two-column link."""
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM requests JOIN responses ON request_id_fk = requests.id "
                f"AND responses.created_at = requests.created_at WHERE {where}"
            )
        ).scalar_one()


def noon(day: date) -> datetime:
    return day_start(day) + timedelta(hours=12)


# ---- request ids and spans (no database) ------------------------------------------------------


def test_uuid7_request_ids_embed_their_creation_time():
    request_id, created_at = new_request_id(1_795_000_000_123)
    parsed = uuid.UUID(request_id)

    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert created_at == datetime(2026, 11, 18, 11, 6, 40, 123000, tzinfo=UTC)
    assert request_id_time(request_id) == created_at
    assert request_id_time(str(uuid.uuid4())) is None and request_id_time("req-1") is None
    assert len({new_request_id()[0] for _ in range(1000)}) == 1000


def test_weekly_spans_fill_the_gap_after_the_legacy_partition():
    legacy = Partition("requests_legacy", None, day_start(date(2026, 11, 28)))
    spans = wanted_spans(date(2026, 11, 27), Policy(premake_days=7, interval_days=7))

    parts = [part for span in spans for part in free_parts(span, [legacy])]

    # Weeks are aligned on 1970-01-01 (a Thursday): the first one is cut at the legacy bound.
    assert [(p.lower.date(), p.upper.date()) for p in parts] == [
        (date(2026, 11, 28), date(2026, 12, 3)),
        (date(2026, 12, 3), date(2026, 12, 10)),
    ]


# ---- revision 0003 and the days ahead ---------------------------------------------------------


def test_upgrade_creates_partitions_ahead_and_a_second_run_changes_nothing(migrated_url):
    ahead = {day_name("requests", TODAY + timedelta(days=n)) for n in range(1, 8)}

    assert names(migrated_url) == ahead | {"requests_legacy", "requests_default"}
    assert names(migrated_url, "responses") == {
        n.replace("requests", "responses") for n in names(migrated_url)
    }
    assert run(migrated_url, POLICY, TODAY) == []
    assert run(migrated_url, POLICY, TODAY, apply=False) == []


def test_job_creates_the_next_days_and_check_mode_only_tells(migrated_url):
    later = TODAY + timedelta(days=3)

    planned = run(migrated_url, POLICY, later, apply=False)
    assert day_name("requests", later + timedelta(days=7)) not in names(migrated_url)
    done = run(migrated_url, POLICY, later)

    expected_days = [later + timedelta(days=n) for n in (5, 6, 7)]
    assert [line.split()[1] for line in done] == [
        day_name(parent, day) for day in expected_days for parent in ("requests", "responses")
    ]
    assert [line.replace("would create", "created") for line in planned] == done
    assert run(migrated_url, POLICY, later) == []


def test_old_and_future_records_land_with_their_usage(migrated_url):
    engine = make_engine(migrated_url)
    now = datetime.now(UTC)
    cases = {
        "old": now - timedelta(days=3),
        "tomorrow": now + timedelta(days=1),
        "far": now + timedelta(days=30),
    }
    ids = {name: new_request_id(int(when.timestamp() * 1000))[0] for name, when in cases.items()}

    # The middleware's half, then the callback's (no timestamp) in another transaction.
    write(
        migrated_url, [LogRecord(request_id=i, created_at=cases[n], status_code=200) for n, i in ids.items()]
    )
    write(migrated_url, [LogRecord(request_id=i, total_tokens=5) for i in ids.values()])

    placed = where_rows_are(engine)
    assert placed == {
        ids["old"]: "requests_legacy",
        ids["tomorrow"]: day_name("requests", (now + timedelta(days=1)).date()),
        ids["far"]: "requests_default",  # no partition that far ahead yet: the default takes it
    }
    joined = linked_rows(engine, "total_tokens = 5 AND status_code = 200")
    engine.dispose()
    assert joined == 3


def test_rows_in_the_default_partition_move_into_a_new_partition(migrated_url):
    engine = make_engine(migrated_url)
    later = TODAY + timedelta(days=20)
    write(migrated_url, [record_at("early-bird", noon(later))])
    assert where_rows_are(engine) == {"early-bird": "requests_default"}
    with engine.connect() as connection:
        before = connection.execute(text("SELECT id FROM requests")).scalar_one()

    lines = run(migrated_url, POLICY, later - timedelta(days=2))

    assert f"created {day_name('requests', later)}" in "\n".join(lines)
    assert "moving 1 row(s) from requests_default" in "\n".join(lines)
    assert where_rows_are(engine) == {"early-bird": day_name("requests", later)}
    (fk,) = where_rows_are(engine, "responses")
    assert where_rows_are(engine, "responses")[fk] == day_name("responses", later)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM requests")).scalar_one() == before
    engine.dispose()


def links(engine: Engine) -> dict[str, str]:
    """Foreign keys of the responses tables: referencing table -> referenced table."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                "WHERE contype = 'f' AND conrelid::regclass::text LIKE 'responses%'"
            )
        )
        return dict(rows.all())


def test_each_responses_partition_is_linked_to_the_requests_partition_of_its_range(migrated_url):
    engine = make_engine(migrated_url)
    later = TODAY + timedelta(days=20)
    write(migrated_url, [record_at("in-default", noon(later))])
    run(migrated_url, POLICY, later)  # creates later's partitions, moves the row out of the default

    found = links(engine)
    expected = {name.replace("requests", "responses", 1): name for name in names(migrated_url, "requests")}
    assert found == expected  # every pair, the default and the new ones included; none on the parent
    with pytest.raises(IntegrityError), engine.begin() as connection:  # no request with that key
        connection.execute(
            text("INSERT INTO responses (request_id_fk, created_at) VALUES (-1, :at)"), {"at": noon(later)}
        )
    with engine.begin() as connection:  # ON DELETE CASCADE, from the moved row's new partition
        connection.execute(text("DELETE FROM requests WHERE request_id = 'in-default'"))
    assert where_rows_are(engine, "responses") == {}
    engine.dispose()


# ---- retention --------------------------------------------------------------------------------


def test_retention_drops_exactly_the_expired_partitions(migrated_url):
    engine = make_engine(migrated_url)
    run(migrated_url, POLICY, TODAY + timedelta(days=7))  # partitions up to today + 14 days
    days = [TODAY + timedelta(days=n) for n in range(-3, 15)]
    write(migrated_url, [record_at(f"day{n}", noon(day)) for n, day in enumerate(days)])

    # 95 days later with 90 days of retention: everything before today + 5 days has expired.
    later = TODAY + timedelta(days=95)
    lines = run(migrated_url, POLICY, later)

    expired = ["legacy"] + [f"p{TODAY + timedelta(days=n):%Y%m%d}" for n in range(1, 5)]
    dropped = [line.split()[1] for line in lines if line.startswith("dropped")]
    assert dropped == [f"responses_{s}" for s in expired] + [f"requests_{s}" for s in expired]
    kept = {f"day{n}" for n, day in enumerate(days) if day >= TODAY + timedelta(days=5)}
    assert set(where_rows_are(engine)) == kept
    assert len(where_rows_are(engine, "responses")) == len(kept)
    assert day_name("requests", TODAY + timedelta(days=5)) in names(migrated_url)
    assert run(migrated_url, POLICY, later) == []
    engine.dispose()


def test_retention_deletes_expired_rows_of_the_default_partition_only(migrated_url):
    engine = make_engine(migrated_url)
    later = TODAY + timedelta(days=200)
    run(migrated_url, POLICY, later)  # drops the legacy partition: old rows now go to the default
    write(
        migrated_url, [record_at("stale", noon(TODAY)), record_at("recent", noon(later - timedelta(days=30)))]
    )

    lines = run(migrated_url, POLICY, later)

    assert lines == [
        f"deleted 1 row(s) older than {later - timedelta(days=90):%Y-%m-%d} from responses_default",
        f"deleted 1 row(s) older than {later - timedelta(days=90):%Y-%m-%d} from requests_default",
    ]
    assert where_rows_are(engine) == {"recent": "requests_default"}
    engine.dispose()


def test_retention_zero_keeps_everything(migrated_url):
    lines = run(migrated_url, Policy(retention_days=0), TODAY + timedelta(days=1000))

    assert not [line for line in lines if not line.startswith("created")]
    assert "requests_legacy" in names(migrated_url)


def test_concurrent_runs_apply_once(migrated_url):
    results = run_concurrently(lambda: run(migrated_url, POLICY, TODAY + timedelta(days=100)))

    assert all(isinstance(result, list) for result in results), results
    assert sorted(len(result) for result in results)[:2] == [0, 0]  # the later runs found it done
    assert max(len(result) for result in results) > 0


# ---- the console script -----------------------------------------------------------------------


def maintain_cli(url: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")} | env
    if url is not None:
        environment["LITELLM_DB_URL"] = url
    command = [
        sys.executable,
        "-c",
        "import sys; from litellm_pglog.partitions import main; sys.exit(main())",
    ]
    return subprocess.run([*command, *args], env=environment, capture_output=True, text=True, timeout=60)


def test_cli_prints_one_line_per_action(migrated_url):
    check = maintain_cli(migrated_url, "--check", "--premake-days", "8")
    apply = maintain_cli(migrated_url, LITELLM_PGLOG_PREMAKE_DAYS="8")
    again = maintain_cli(migrated_url, LITELLM_PGLOG_PREMAKE_DAYS="8")

    day = f"{TODAY + timedelta(days=8):%Y%m%d}"
    assert (check.returncode, check.stderr) == (0, "")
    assert check.stdout.splitlines()[0].startswith(f"litellm-pglog-maintain: would create requests_p{day} ")
    assert (apply.returncode, len(apply.stdout.splitlines())) == (0, 2)
    assert again.stdout == "litellm-pglog-maintain: nothing to do (premake 8 days, retention 90)\n"


def test_cli_errors_are_one_line_without_the_password(pg_cluster, migrated_url):
    database = migrated_url.rsplit("/", 1)[1]
    wrong = pg_cluster.url_for(database, password="not-the-password!@:/#%")

    refused = maintain_cli(wrong)
    missing = maintain_cli(None)
    bad_env = maintain_cli(migrated_url, LITELLM_PGLOG_RETENTION_DAYS="ninety")

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.count("\n") == 1 and "password authentication failed" in refused.stderr
    assert "not-the-password" not in refused.stderr and pg_cluster.password not in refused.stderr
    assert missing.stderr == "litellm-pglog-maintain: error: LITELLM_DB_URL is not set\n"
    assert bad_env.returncode == 1 and "LITELLM_PGLOG_RETENTION_DAYS" in bad_env.stderr


# ---- in-place conversion of a populated 0002 database -----------------------------------------


ROWS = 3000


@pytest.fixture
def populated_0002(pg_url: str) -> str:
    """A 0002 database with rows over 10 past days; some responses carry a created_at that
    differs from their request's (0002's least() merge never updated the responses row)."""
    engine = make_engine(pg_url)
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0002")
        connection.execute(
            text(
                "INSERT INTO requests (request_id, created_at, status_code, route) "
                "SELECT 'old-' || g, now() - (g % 10) * interval '1 day' - g * interval '1 second', "
                "CASE WHEN g % 7 = 0 THEN 500 ELSE 200 END, '/v1/chat/completions' "
                "FROM generate_series(1, :rows) g"
            ),
            {"rows": ROWS},
        )
        connection.execute(
            text(
                "INSERT INTO responses (request_id_fk, created_at, total_tokens) "
                "SELECT id, created_at + CASE WHEN id % 3 = 0 THEN interval '2 seconds' "
                "ELSE interval '0' END, 7 "
                "FROM requests"
            )
        )
    engine.dispose()
    return pg_url


def snapshot(engine: Engine) -> dict[str, object]:
    with engine.connect() as connection:

        def scalar(sql: str) -> object:
            return connection.execute(text(sql)).scalar_one()

        return {
            "requests": scalar("SELECT count(*) FROM requests"),
            "responses": scalar("SELECT count(*) FROM responses"),
            "request_ids": scalar(
                "SELECT md5(string_agg(request_id, ',' ORDER BY request_id)) FROM requests"
            ),
            "pairs": scalar(
                "SELECT md5(string_agg(request_id || ':' || total_tokens, ',' ORDER BY request_id)) "
                "FROM requests JOIN responses ON request_id_fk = requests.id"
            ),
            "max_id": scalar("SELECT max(id) FROM requests"),
        }


def test_in_place_upgrade_of_a_populated_database_loses_nothing(populated_0002):
    engine = make_engine(populated_0002)
    before = snapshot(engine)

    status = upgrade_schema(populated_0002)

    assert status.pending == ["0003", "0004"]
    assert snapshot(engine) == before
    assert links(engine)["responses_legacy"] == "requests_legacy"
    with engine.connect() as connection:
        where = (
            connection.execute(text("SELECT DISTINCT tableoid::regclass::text FROM requests")).scalars().all()
        )
    assert linked_rows(engine) == ROWS and where == ["requests_legacy"]
    write(populated_0002, [record_at("new-row", datetime.now(UTC))])
    with engine.connect() as connection:
        new_id = connection.execute(text("SELECT id FROM requests WHERE request_id = 'new-row'")).scalar_one()
    assert new_id == before["max_id"] + 1
    for script in (PART_4_3, PART_4_4, PART_5_1):  # the runbook's SQL, unchanged
        with engine.connect() as connection:
            for statement in filter(str.strip, script.split(";\n")):
                connection.exec_driver_sql(statement).all()
    engine.dispose()


def test_offline_sql_of_0003_is_what_runs():
    sql = render_upgrade_sql("0002", "0003")

    assert sql.count("CREATE TABLE requests (") == 1 and "ATTACH PARTITION" in sql
    assert "%%" not in sql and str(TODAY.year) not in sql  # dates are computed when it runs


# ---- the runbook's Part 7 ("Database Maintenance"), verbatim, on the partitioned tables --------

PART_7 = """\
SELECT 
    schemaname,
    tablename,
    attname,
    n_distinct,
    correlation
FROM pg_stats 
WHERE schemaname = 'public';

ANALYZE requests;
ANALYZE responses;

SELECT 
    pid,
    now() - pg_stat_activity.query_start AS duration,
    query 
FROM pg_stat_activity 
WHERE (now() - pg_stat_activity.query_start) > interval '5 minutes';"""


def test_runbook_part_7_runs_on_the_partitioned_tables(migrated_url):
    engine = make_engine(migrated_url)
    write(migrated_url, [record_at(f"r{n}", noon(TODAY + timedelta(days=n % 3))) for n in range(30)])

    statements = PART_7.split(";\n")
    with engine.connect() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
        stats = connection.exec_driver_sql(statements[0]).all()
    engine.dispose()

    # ANALYZE of a partitioned table samples every partition: the parents have statistics.
    assert {"requests", "responses"} <= {row.tablename for row in stats}


def test_a_writer_connection_routes_into_partitions_created_after_it_prepared_its_merge(migrated_url):
    """The merge is prepared once per connection; a partition made later still gets its rows."""
    later = TODAY + timedelta(days=20)
    when = noon(later)
    first, second = (new_request_id(int(when.timestamp() * 1000) + n)[0] for n in range(2))
    engine = make_engine(migrated_url, poolclass=StaticPool)  # one connection throughout
    sink = DatabaseSink(engine, WriterMetrics(), lambda record, exc: None, timeout=10)
    assert sink.write([LogRecord(request_id=first, status_code=200)]) == 1
    with engine.connect() as connection:
        prepared = (
            "SELECT count(*) FROM pg_prepared_statements WHERE name IN ('pglog_merge', 'pglog_merge_lookup')"
        )
        assert connection.execute(text(prepared)).scalar_one() == 2
    assert where_rows_are(engine) == {first: "requests_default"}

    run(migrated_url, POLICY, later - timedelta(days=2))
    assert sink.write([LogRecord(request_id=second, status_code=200, total_tokens=3)]) == 1

    assert where_rows_are(engine) == {first: day_name("requests", later), second: day_name("requests", later)}
    assert linked_rows(engine, "status_code = 200") == 2
    engine.dispose()


def locked_requests_partitions(engine: Engine, request_id: str) -> set[str]:
    """The requests tables a one-record batch's transaction holds locks on, before it commits."""
    sink = DatabaseSink(engine, WriterMetrics(), lambda record, exc: None, timeout=10)
    rows = sink.rows_of([LogRecord(request_id=request_id, status_code=200)])
    with engine.begin() as connection:
        upsert_rows(connection, rows)
        locked = connection.execute(
            text(
                "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE l.pid = pg_backend_pid() AND c.relkind IN ('r', 'p') AND c.relname LIKE 'requests%'"
            )
        )
        return set(locked.scalars())


def test_a_batch_of_uuid7_ids_locks_only_the_partition_it_writes(migrated_url):
    """The lookup for other ids names every partition; a batch without such an id skips it, so
    its cost does not grow with the retention (90 daily partitions by default)."""
    run(migrated_url, POLICY, TODAY + timedelta(days=30))  # more partitions than the first days
    engine = make_engine(migrated_url, poolclass=StaticPool)
    request_id = new_request_id()[0]

    locked = locked_requests_partitions(engine, request_id)

    assert locked == {"requests", where_rows_are(engine)[request_id]}
    everything = names(migrated_url) | {"requests"}
    assert locked_requests_partitions(engine, "not-a-uuid7") == everything  # the lookup ran
    engine.dispose()
