"""Issue 12 item 5 (runbook Part 8) on the deployed lab, DESTRUCTIVE: ./scripts/test runs it after
the drills, then deploys the lab again from scratch (molecule converge) and runs the smoke play.

The tests run in file order: --check first (nothing may change), then the confirmed teardown with
PostgreSQL and the backups, then what must be gone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GATEWAY, POSTGRES, BACKUP = "hx-litellm-server", "hx-postgres-server", "hx-backup-server"
EVERYTHING = ["-e", "teardown_confirm=yes", "-e", "teardown_postgres=yes", "-e", "teardown_backups=yes"]
GATEWAY_PATHS = ["/opt/litellm", "/etc/litellm", "/var/log/litellm", "/var/lib/litellm"]
GATEWAY_UNITS = [
    "litellm-gateway.service",
    "litellm-gateway-metrics.service",
    "litellm-pglog-maintenance.timer",
]
POSTGRES_PATHS = ["/var/lib/postgresql", "/etc/postgresql", "/etc/pgbackrest"]
BACKUP_PATHS = ["/var/lib/pgbackrest", "/etc/pgbackrest"]
BACKUP_UNITS = ["pgbackrest-server.service", "pgbackrest-backup-full.timer", "pgbackrest-backup-diff.timer"]


def playbook(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(REPO / "scripts" / "lab-playbook"), "playbooks/teardown.yml", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)


def run(host: str, script: str) -> str:
    argv = ["docker", "exec", host, "sh", "-c", script]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    return result.stdout.strip()


def existing(host: str, paths: list[str]) -> list[str]:
    return run(host, " ".join(f"[ -e {p} ] && echo {p};" for p in paths) + " true").split()


def unit_files(host: str, units: list[str]) -> list[str]:
    return run(host, f"systemctl list-unit-files --no-legend {' '.join(units)} | cut -d' ' -f1").split()


def has_user(host: str, user: str) -> bool:
    return run(host, f"getent passwd {user} >/dev/null && echo yes") == "yes"


def test_check_mode_reports_but_changes_nothing():
    result = playbook("--check", *EVERYTHING)
    assert result.returncode == 0, result.stdout[-3000:]
    assert existing(GATEWAY, GATEWAY_PATHS) == GATEWAY_PATHS
    assert existing(POSTGRES, POSTGRES_PATHS) == POSTGRES_PATHS
    assert existing(BACKUP, BACKUP_PATHS) == BACKUP_PATHS
    assert sorted(unit_files(BACKUP, BACKUP_UNITS)) == sorted(BACKUP_UNITS)


def test_backups_cannot_go_without_postgresql():
    result = playbook("-e", "teardown_confirm=yes", "-e", "teardown_backups=yes")
    assert result.returncode != 0 and "Nothing was changed" in result.stdout
    assert existing(BACKUP, BACKUP_PATHS) == BACKUP_PATHS


def test_the_confirmed_teardown_runs():
    result = playbook(*EVERYTHING)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(
    ("host", "paths"), [(GATEWAY, GATEWAY_PATHS), (POSTGRES, POSTGRES_PATHS), (BACKUP, BACKUP_PATHS)]
)
def test_no_listed_path_is_left(host, paths):
    assert existing(host, paths) == []


@pytest.mark.parametrize(("host", "units"), [(GATEWAY, GATEWAY_UNITS), (BACKUP, BACKUP_UNITS)])
def test_no_unit_is_left(host, units):
    assert unit_files(host, units) == []


@pytest.mark.parametrize(("host", "user"), [(GATEWAY, "litellm"), (BACKUP, "pgbackrest")])
def test_no_service_user_is_left(host, user):
    assert not has_user(host, user)


@pytest.mark.parametrize("package", ["postgresql-17", "pgbackrest"])
def test_no_package_is_left_on_the_database_host(package):
    status = run(POSTGRES, f"dpkg-query -W -f '${{Status}}' {package} 2>/dev/null")
    assert status in ("", "deinstall ok not-installed", "unknown ok not-installed")
