"""Schema management against a real PostgreSQL: db_init, migrations, the runbook's queries."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import litellm_pglog
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from litellm_pglog.db import make_engine
from litellm_pglog.models import Base, Request, Response, include_name
from litellm_pglog.records import LogRecord
from litellm_pglog.schema import (
    SchemaError,
    _config,
    _script,
    inspect_schema,
    render_upgrade_sql,
    upgrade_schema,
)
from litellm_pglog.sink import write_records
from runbook_sql import PART_4_3, PART_4_4, PART_5_1
from sqlalchemy import MetaData, Table, insert, select, text

REPO = Path(__file__).resolve().parents[2]
DB_INIT = REPO / "files" / "db_init.py"
PACKAGE_ROOT = str(Path(litellm_pglog.__file__).resolve().parents[1])


def run_db_init(url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "LITELLM_DB_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    if url is not None:
        env["LITELLM_DB_URL"] = url
    return subprocess.run(
        [sys.executable, str(DB_INIT), *args], env=env, capture_output=True, text=True, timeout=60
    )


def head_revision() -> str:
    return _script().get_current_head()


# ---- db_init ----------------------------------------------------------------------------------


def test_db_init_creates_schema_then_reports_no_change(pg_url):
    head = head_revision()

    first = run_db_init(pg_url)
    second = run_db_init(pg_url)

    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout == f"db_init: upgraded schema None -> {head} (created tables requests, responses)\n"
    assert (second.returncode, second.stderr) == (0, "")
    assert second.stdout == f"db_init: schema up to date at revision {head} (no change)\n"
    assert inspect_schema(pg_url).up_to_date


def test_db_init_check_changes_nothing(pg_url):
    result = run_db_init(pg_url, "--check")

    assert result.returncode == 0
    assert result.stdout.startswith("db_init: schema at revision None, would upgrade to")
    assert inspect_schema(pg_url).current is None


def _bad_urls(pg_cluster, pg_url):
    database = pg_url.rsplit("/", 1)[1]
    return {
        "password refused": pg_cluster.url_for(database, password="not-the-password!@:/#%"),
        "server down": pg_cluster.url_for(database, port=1),
        "database missing": pg_cluster.url_for("no_such_database"),
        "bad syntax": f"postgresql+psycopg2://litellm_user:{pg_cluster.password}@127.0.0.1:port/x",
        "not postgres": "sqlite:////tmp/x.db",
    }


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("password refused", "password authentication failed"),
        ("server down", "Connection refused"),
        ("database missing", 'database "no_such_database" does not exist'),
        ("bad syntax", "invalid database URL"),
        ("not postgres", "not a PostgreSQL URL"),
    ],
)
def test_db_init_errors_are_one_clear_line(pg_cluster, pg_url, case, expected):
    url = _bad_urls(pg_cluster, pg_url)[case]

    result = run_db_init(url)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("db_init: error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    for secret in (pg_cluster.password, quote(pg_cluster.password, safe=""), "not-the-password"):
        assert secret not in result.stderr


def test_db_init_without_url_fails_clearly():
    result = run_db_init(None)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "db_init: error: LITELLM_DB_URL is not set\n"


def test_inspect_raises_schema_error_with_masked_url(pg_cluster, pg_url):
    url = _bad_urls(pg_cluster, pg_url)["password refused"]

    with pytest.raises(SchemaError) as caught:
        inspect_schema(url)

    assert "litellm_user:***@127.0.0.1" in str(caught.value)


def test_tables_created_by_another_tool_are_not_touched(pg_url):
    engine = make_engine(pg_url)
    Base.metadata.create_all(engine)
    engine.dispose()

    result = run_db_init(pg_url)

    assert result.returncode == 1
    assert "exist without an Alembic revision" in result.stderr


# ---- migrations -------------------------------------------------------------------------------


def test_upgrade_from_0001_keeps_rows(pg_url):
    engine = make_engine(pg_url)
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0001")
        old_requests = Table("requests", MetaData(), autoload_with=connection)
        old_responses = Table("responses", MetaData(), autoload_with=connection)
        ids = connection.execute(
            insert(old_requests).returning(old_requests.c.id),
            [
                {"request_id": f"old-{n}", "route": "/v1/chat/completions", "status_code": 200}
                for n in range(3)
            ],
        ).scalars()
        connection.execute(insert(old_responses), [{"request_id_fk": pk, "total_tokens": 7} for pk in ids])

    result = run_db_init(pg_url)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"db_init: upgraded schema 0001 -> {head_revision()} (applied 0002, 0003, 0004)\n"
    with engine.connect() as connection:
        rows = connection.execute(
            select(Request.request_id, Request.error_message, Response.total_tokens)
            .join(Request.response)
            .order_by(Request.request_id)
        ).all()
    engine.dispose()
    assert rows == [(f"old-{n}", None, 7) for n in range(3)]


def test_models_match_head_revision(migrated_url):
    engine = make_engine(migrated_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": include_name,
            },
        )
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()

    assert differences == []


def run_concurrently(action: Callable[[], object], times: int = 3) -> list[object]:
    """What action returned (or raised) in each of several threads started at once."""
    results: list[object] = []

    def attempt() -> None:
        try:
            results.append(action())
        except Exception as exc:  # collected for the caller's assertions
            results.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_upgrades_apply_once(pg_url):
    results = run_concurrently(lambda: upgrade_schema(pg_url))

    assert all(not isinstance(result, Exception) for result in results), results
    assert sorted(len(result.pending) for result in results) == [0, 0, 4]


def test_render_upgrade_sql_is_offline_and_complete():
    head = head_revision()

    full = render_upgrade_sql(None, head)
    step = render_upgrade_sql("0001", "0002")
    partitioning = render_upgrade_sql("0002", head)

    assert "CREATE TABLE requests" in full and "CREATE TABLE responses" in full
    assert "CREATE TABLE" not in step and "ALTER TABLE requests ADD COLUMN error_message TEXT" in step
    # Static SQL, shown exactly as it runs: the dates are computed by the DO block.
    assert "ATTACH PARTITION" in partitioning and "PARTITION BY RANGE (created_at)" in partitioning
    assert "%%" not in partitioning
    assert render_upgrade_sql(head, head) == ""


def test_downgrade_to_0003_links_the_parents_again(migrated_url):
    engine = make_engine(migrated_url)
    with engine.begin() as connection:
        command.downgrade(_config(connection), "0003")
    with engine.connect() as connection:
        links = connection.execute(
            text(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                "WHERE contype = 'f'"
            )
        ).all()
    engine.dispose()
    assert ("responses", "requests") in links
    assert not [
        link for link in links if link[0].startswith("responses_") and link[1].startswith("requests_")
    ]
    assert upgrade_schema(migrated_url).pending == ["0004"]


# ---- the runbook's own queries ----------------------------------------------------------------


@pytest.fixture
def logged_requests(migrated_url):
    now = datetime.now(UTC)
    records = [
        LogRecord(
            request_id="ok-1",
            created_at=now - timedelta(seconds=3),
            route="/v1/chat/completions",
            method="POST",
            model="gpt-4o-mini",
            status_code=200,
            user_id="poc-tester",
            api_key="TEST_KEY",
            latency_ms=23.5,
            prompt_tokens=12,
            completion_tokens=30,
            total_tokens=42,
        ),
        LogRecord(
            request_id="bad-key",
            created_at=now - timedelta(seconds=2),
            route="/v1/chat/completions",
            model="gpt-4o-mini",
            status_code=401,
            error_type="AuthenticationError",
        ),
        LogRecord(
            request_id="bad-model",
            created_at=now - timedelta(seconds=1),
            route="/v1/chat/completions",
            model="invalid-model",
            status_code=400,
            api_key="TEST_KEY",
        ),
        LogRecord(
            request_id="last-week",
            created_at=now - timedelta(days=7),
            route="/v1/chat/completions",
            model="gpt-4o-mini",
            status_code=200,
        ),
    ]
    engine = make_engine(migrated_url)
    with engine.begin() as connection:
        write_records(connection, records)
    yield engine
    engine.dispose()


def run_verbatim(engine, script: str) -> list[list[dict]]:
    """Each statement of a psql script, run as written; returns the rows of each."""
    statements = [part for part in script.split(";\n") if part.strip()]
    with engine.connect() as connection:
        return [[dict(row._mapping) for row in connection.exec_driver_sql(s)] for s in statements]


def test_runbook_part_4_3_queries(logged_requests):
    requests, responses, summary = run_verbatim(logged_requests, PART_4_3)

    assert [row["request_id"] for row in requests] == ["bad-model", "bad-key", "ok-1", "last-week"]
    assert requests[2]["user_id"] == "poc-tester" and requests[2]["api_key"] == "TEST_KEY"
    assert [row["request_id"] for row in responses] == ["bad-model", "bad-key", "ok-1", "last-week"]
    ok = responses[2]
    assert (ok["latency_ms"], ok["prompt_tokens"], ok["completion_tokens"], ok["total_tokens"]) == (
        23.5,
        12,
        30,
        42,
    )
    assert responses[0]["total_tokens"] is None
    (stats,) = summary
    assert stats["total_requests"] == 4
    assert stats["unique_models"] == 2
    assert float(stats["success_rate"]) == 50.0


def test_runbook_part_4_4_lists_errors(logged_requests):
    (rows,) = run_verbatim(logged_requests, PART_4_4)

    assert [(row["request_id"], row["status_code"]) for row in rows] == [("bad-model", 400), ("bad-key", 401)]


def test_runbook_part_5_1_counts_recent_requests(logged_requests):
    ((stats,),) = run_verbatim(logged_requests, PART_5_1)

    assert stats["total_requests"] == 3
    assert stats["successful_requests"] == 1
    assert stats["first_request"] < stats["last_request"]


def test_runbook_queries_use_the_indexes(logged_requests):
    plans = {}
    with logged_requests.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")
        for name, script in {"4.4": PART_4_4, "5.1": PART_5_1}.items():
            rows = connection.exec_driver_sql("EXPLAIN " + script.rstrip(";")).scalars().all()
            plans[name] = "\n".join(rows)

    # Partitioned: each partition's copy of the index (requests_legacy_failed_created_at_idx,
    # requests_p20261128_created_at_idx1, ...) is used, or the partition is pruned.
    assert "Seq Scan" not in plans["4.4"] and "failed_created_at_idx" in plans["4.4"]
    assert "Seq Scan" not in plans["5.1"] and "created_at_idx" in plans["5.1"]
