"""Bounded logs in the lab (issue 11): partitioned tables with days ahead, the daily job, tuning."""

from __future__ import annotations

from conftest import GATEWAY_HOST, docker_exec, sql_as_postgres

JOB = "litellm-pglog-maintenance"


def test_the_log_tables_are_partitioned_with_a_week_ahead_and_a_default_partition():
    for parent in ("requests", "responses"):
        assert sql_as_postgres(f"SELECT relkind FROM pg_class WHERE relname = '{parent}'") == "p"
        covered = sql_as_postgres(
            f"SELECT count(*) FROM generate_series(0, 7) AS ahead(days) WHERE EXISTS ("
            f" SELECT 1 FROM pg_partition_tree('{parent}') t JOIN pg_class c ON c.oid = t.relid"
            f" WHERE t.isleaf AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'"
            f" AND c.relname ~ '_p[0-9]{{8}}$' AND to_date(right(c.relname, 8), 'YYYYMMDD')"
            f" = (now() AT TIME ZONE 'UTC')::date + ahead.days)"
        )
        # Today may still be the legacy partition's (an upgraded lab): tomorrow .. +7 days exist.
        assert int(covered) >= 7
        default = sql_as_postgres(
            f"SELECT count(*) FROM pg_partition_tree('{parent}') t JOIN pg_class c ON"
            f" c.oid = t.relid WHERE pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'"
        )
        assert default == "1"


def test_the_partition_job_runs_daily_and_is_idempotent(gateway_host):
    timer = gateway_host.service(f"{JOB}.timer")
    assert timer.is_enabled and timer.is_running
    for _ in range(2):
        assert docker_exec(GATEWAY_HOST, ["systemctl", "start", f"{JOB}.service"]).returncode == 0
    last = docker_exec(GATEWAY_HOST, ["journalctl", "-u", JOB, "-o", "cat", "-n", "3", "--no-pager"]).stdout
    assert "litellm-pglog-maintain: nothing to do" in last
    settings = gateway_host.file("/etc/litellm/maintenance.env")
    assert (settings.user, settings.group, settings.mode) == ("root", "litellm", 0o640)


def test_postgresql_runs_with_the_tuned_settings_and_nothing_pending():
    values = dict(
        line.split("|")
        for line in sql_as_postgres(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
            " ('shared_buffers', 'wal_compression', 'max_wal_size', 'autovacuum_vacuum_insert_scale_factor')"
        ).splitlines()
    )
    # The lab plans for 2 GB of memory: shared_buffers is 25 % of it.
    assert values == {
        "shared_buffers": "512MB",
        "wal_compression": "lz4",
        "max_wal_size": "4GB",
        "autovacuum_vacuum_insert_scale_factor": "0.05",
    }
    assert sql_as_postgres("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
