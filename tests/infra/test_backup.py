"""Issue 12 on the live lab: continuous backups with pgBackRest (the restore itself is proven by
scripts/lab-restore-drill, which ./scripts/test runs after the fault drills).

After a fresh deploy plus one run of the full backup timer's job (the smoke play runs it when
there is no full backup), the repository on hx-backup-server holds a full backup and archived WAL,
encrypted; PostgreSQL archives through pgBackRest; the timers are scheduled.
"""

from __future__ import annotations

import json

import pytest
from conftest import BACKUP_HOST, POSTGRES_HOST, docker_exec, sql_as_postgres
from test_monitoring import query, wait_for


def pgbackrest_info() -> dict:
    argv = ["runuser", "-u", "pgbackrest", "--", "pgbackrest", "--output=json", "info"]
    result = docker_exec(BACKUP_HOST, argv)
    assert result.returncode == 0, result.stderr
    (stanza,) = json.loads(result.stdout)
    return stanza


def test_the_repository_holds_a_full_backup_and_archived_wal_encrypted():
    stanza = pgbackrest_info()
    assert stanza["name"] == "main" and stanza["status"]["code"] == 0, stanza["status"]
    assert [b for b in stanza["backup"] if b["type"] == "full"], stanza["backup"]
    assert stanza["archive"] and stanza["archive"][0]["max"], stanza["archive"]
    assert stanza["cipher"] == "aes-256-cbc"


def test_postgresql_archives_through_pgbackrest_and_the_last_attempt_succeeded():
    # A segment switched between archive_mode=on and stanza-create (first deploy) fails and is
    # retried: failures may exist, but the newest archive attempt must be a success.
    row = sql_as_postgres(
        "SELECT current_setting('archive_mode'), current_setting('archive_command'), archived_count > 0,"
        " last_archived_time > coalesce(last_failed_time, '-infinity') FROM pg_stat_archiver"
    )
    mode, command, archived, last_ok = row.split("|")
    assert (mode, archived, last_ok) == ("on", "t", "t")
    assert command == "pgbackrest --stanza=main archive-push %p"


@pytest.mark.parametrize("timer", ["pgbackrest-backup-full.timer", "pgbackrest-backup-diff.timer"])
def test_the_backup_timers_are_scheduled_on_the_repository_host(timer):
    argv = ["systemctl", "show", timer, "-P", "ActiveState", "-P", "UnitFileState"]
    result = docker_exec(BACKUP_HOST, argv)
    assert result.stdout.split() == ["active", "enabled"]


@pytest.mark.parametrize("host", [POSTGRES_HOST, BACKUP_HOST])
def test_the_configuration_with_the_cipher_passphrase_is_not_world_readable(host):
    result = docker_exec(host, ["stat", "-c", "%a %U", "/etc/pgbackrest/pgbackrest.conf"])
    assert result.stdout.split() == ["640", "root"]


def test_the_backup_age_is_published_for_the_alert_rules():
    # The smoke play's backup wrote the textfile seconds before this runs: the series exists
    # once Prometheus has scraped the repository host's node_exporter again (5 s in the lab).
    expr = 'time() - pgbackrest_last_backup_timestamp_seconds{stanza="main"}'
    ages = wait_for(lambda: query(expr), timeout=60)
    assert ages and 0 <= float(ages[0]["value"][1]) < 86400


def test_restarting_pgbackrest_on_the_database_host_keeps_postgresql_working():
    """The TLS server runs as postgres: with systemd's RemoveIPC its stop deleted PostgreSQL's
    shared memory, and every new connection then failed ("could not open shared memory segment").
    """
    result = docker_exec(POSTGRES_HOST, ["systemctl", "restart", "pgbackrest-server"])
    assert result.returncode == 0, result.stderr
    assert sql_as_postgres("SELECT 1") == "1"
    check = docker_exec(
        POSTGRES_HOST, ["runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=main", "check"]
    )
    assert check.returncode == 0, check.stdout[-2000:]
