"""Which APT repository roles/postgres17 configures, per distribution, without an image.

The role runs for real (argument validation, distribution vars, its install tasks and
their conditions) in check mode against faked facts; only the modules that would touch
a host are replaced by recording stand-ins (run_playbook.py). The deb822 repository it
would write on Ubuntu 24.04 is compared with what PGDG documents
(https://wiki.postgresql.org/wiki/Apt):
    deb [signed-by=...] https://apt.postgresql.org/pub/repos/apt noble-pgdg main
    key: https://www.postgresql.org/media/keys/ACCC4CF8.asc
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

PGDG_URI = "https://apt.postgresql.org/pub/repos/apt"
PGDG_KEY_URL = "https://www.postgresql.org/media/keys/ACCC4CF8.asc"

UBUNTU_2404 = {
    "distribution": "Ubuntu",
    "distribution_release": "noble",
    "distribution_version": "24.04",
    "distribution_major_version": "24",
    "distribution_file_variety": "Debian",
    "os_family": "Debian",
    "system": "Linux",
    "architecture": "x86_64",
    "pkg_mgr": "apt",
    "service_mgr": "systemd",
    "lsb": {"id": "Ubuntu", "codename": "noble", "release": "24.04", "major_release": "24"},
    "default_ipv4": {"address": "192.0.2.19"},
    # What the tuning computes from (roles/postgres17 tasks/tune.yml, checked by tasks/assert.yml).
    "memtotal_mb": 4096,
    "processor_vcpus": 2,
}
DEBIAN_13 = {
    **UBUNTU_2404,
    "distribution": "Debian",
    "distribution_release": "trixie",
    "distribution_version": "13.2",
    "distribution_major_version": "13",
    "lsb": {"id": "Debian", "codename": "trixie", "release": "13.2", "major_release": "13"},
}


def run_role(tmp_path: Path, facts: dict, **extra_vars) -> list[dict]:
    """Run the role in check mode with these facts; return the recorded module calls."""
    record = tmp_path / "calls.jsonl"
    record.touch()
    extra = dict(extra_vars)
    env = {
        **os.environ,
        "PGDG_TEST_FACTS": json.dumps(facts),
        "PGDG_TEST_RECORD": str(record),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    command = [sys.executable, str(HERE / "run_playbook.py"), "-i", "fake,", "-c", "local", "--check"]
    proc = subprocess.run(
        [*command, "-e", json.dumps(extra), str(HERE / "role_install.yml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


def calls_of(calls: list[dict], module: str) -> list[dict]:
    return [call["args"] for call in calls if call["module"] == module]


def package_names(apt_args: dict) -> list[str]:
    names = apt_args["name"]
    return [names] if isinstance(names, str) else list(names)


def test_ubuntu_2404_gets_pgdg_as_documented(tmp_path):
    calls = run_role(tmp_path, UBUNTU_2404)

    repos = calls_of(calls, "deb822_repository")
    assert repos == [
        {
            "name": "pgdg",
            "types": "deb",
            "uris": PGDG_URI,
            "suites": ["noble-pgdg"],
            "components": ["main"],
            "signed_by": PGDG_KEY_URL,
            "state": "present",
        }
    ]
    # python3-debian (needed by deb822_repository) first, the repository, then
    # PostgreSQL 17 with a fresh package index (the repository was just added).
    order = [call["module"] for call in calls if call["module"] in ("apt", "deb822_repository")]
    assert order == ["apt", "deb822_repository", "apt"]
    helper, packages = calls_of(calls, "apt")
    assert package_names(helper) == ["python3-debian"]
    assert {"postgresql-17", "postgresql-client-17"} <= set(package_names(packages))
    assert packages["update_cache"] is True
    assert int(packages["cache_valid_time"]) == 0


def test_debian_13_uses_its_own_postgresql_17(tmp_path):
    calls = run_role(tmp_path, DEBIAN_13)

    assert calls_of(calls, "deb822_repository") == []
    (packages,) = calls_of(calls, "apt")
    assert {"postgresql-17", "postgresql-client-17"} <= set(package_names(packages))


def test_debian_13_with_use_pgdg_gets_the_trixie_suite(tmp_path):
    """What molecule/pgdg exercises on the lab image, pointed at its lab mirror."""
    calls = run_role(
        tmp_path,
        DEBIAN_13,
        postgres17_use_pgdg=True,
        postgres17_pgdg_uri="http://192.0.2.21/pub/repos/apt",
        postgres17_pgdg_key_url="http://192.0.2.21/media/keys/lab-pgdg.asc",
    )

    (repo,) = calls_of(calls, "deb822_repository")
    assert repo["suites"] == ["trixie-pgdg"]
    assert repo["uris"] == "http://192.0.2.21/pub/repos/apt"
    assert repo["signed_by"] == "http://192.0.2.21/media/keys/lab-pgdg.asc"


@pytest.mark.parametrize(
    ("name", "value"),
    [("postgres17_use_pgdg", "maybe"), ("postgres17_version", "seventeen")],
)
def test_argument_spec_rejects_bad_values_on_ubuntu(tmp_path, name, value):
    with pytest.raises(AssertionError, match="Validating arguments|argument"):
        run_role(tmp_path, UBUNTU_2404, **{name: value})
