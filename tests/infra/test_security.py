"""Secrets and hardening checks not covered by test_gateway.py / test_postgres.py.

Already elsewhere (not repeated here): pg_hba refusing a non-gateway host and a wrong password
(test_postgres.py); the gateway's env/config/keys modes, its unit properties, process arguments,
journal on the gateway host, its exposure score (test_gateway.py).
Added here: the Ansible output itself (-v), every lab host's processes (after converge and
sampled every ~0.5 s during it by scripts/test), full journal, log files and world-readable files
on the whole filesystem, PostgreSQL's configuration modes, the control node's secret files,
the repository, and the stub's exposure score.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import (
    LAB_CONTAINERS,
    LAB_DIR,
    POSTGRES_HOST,
    REPO,
    UPSTREAM_HOST,
    ScannedText,
    docker_exec,
    secrets_in,
    world_readable_files_with_secrets,
)

MAX_EXPOSURE = 3.0
ANSIBLE_TIMEOUT_SECONDS = 900


@pytest.fixture(scope="module")
def ansible_verbose_output() -> ScannedText:
    """The Ansible output of the lab's converges: the logs ./scripts/test kept (the first converge and
    the second and --check, all with -v --diff), or else a converge with -v --diff run here
    exactly as molecule runs it (its inventory and config)."""
    kept = os.environ.get("LITELLM_CONVERGE_LOGS")
    if kept:
        return ScannedText("\n".join(kept_converge_log(Path(path)) for path in kept.split(":")))
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("needs molecule's inventory: run through `molecule verify`")
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    result = subprocess.run(
        ["ansible-playbook", "-v", "--diff", "-i", inventory, str(REPO / "site.yml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=ANSIBLE_TIMEOUT_SECONDS,
        check=False,
    )
    output = ScannedText(result.stdout + result.stderr)
    assert result.returncode == 0, output[-3000:]
    return output


def kept_converge_log(path: Path) -> str:
    """One kept log: a whole run (its recap), with the result bodies -v prints."""
    assert path.exists(), f"{path} is missing: ./scripts/test writes it before verify"
    text = path.read_text(errors="replace")
    assert re.search(r"^[^ ]+ +: ok=\d+ +changed=\d+", text, re.MULTILINE), f"{path}: no play recap"
    assert re.search(r"^ok: \[[^]]+\] => ", text, re.MULTILINE), f"{path}: not a -v run"
    return text


def test_no_secret_in_verbose_ansible_output(ansible_verbose_output, secrets):
    assert "PLAY RECAP" in ansible_verbose_output
    assert secrets_in(ansible_verbose_output, secrets) == []


PS_LOG = LAB_DIR / "ps-during-converge.log"
# scripts/test samples every ~0.5 s during converge (a few minutes): a few hundred samples per host.
MIN_PS_SAMPLES_PER_HOST = 60


@pytest.fixture(scope="module")
def ps_during_converge() -> ScannedText:
    if not PS_LOG.exists():
        if os.environ.get("LITELLM_PS_SAMPLES_REQUIRED"):
            pytest.fail(f"{PS_LOG} is missing: the ps sampler of scripts/test did not run")
        pytest.skip(f"no {PS_LOG.name}: written by ./scripts/test while molecule converge runs")
    return ScannedText(PS_LOG.read_text(errors="replace"))


@pytest.mark.parametrize("container", LAB_CONTAINERS)
def test_ps_was_sampled_often_during_converge(ps_during_converge, container):
    samples = re.findall(rf"^=== ps sample {re.escape(container)} \d", ps_during_converge, re.MULTILINE)
    print(f"{container}: {len(samples)} ps samples during converge")
    assert len(samples) > MIN_PS_SAMPLES_PER_HOST


def test_no_secret_in_process_arguments_during_converge(ps_during_converge, secrets):
    assert secrets_in(ps_during_converge, secrets) == []


@pytest.mark.parametrize("container", LAB_CONTAINERS)
def test_no_secret_in_any_process_arguments_on_lab_hosts(container, secrets):
    result = docker_exec(container, ["ps", "-eo", "args"])
    assert result.returncode == 0, result.stderr
    assert secrets_in(result.stdout, secrets) == []


def test_no_secret_in_process_arguments_on_the_control_node(secrets):
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert secrets_in(processes, secrets) == []


@pytest.mark.parametrize("container", LAB_CONTAINERS)
def test_no_secret_in_the_whole_journal(container, secrets):
    result = docker_exec(container, ["journalctl", "--no-pager", "-o", "cat"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "empty journal: nothing was checked"
    assert secrets_in(result.stdout, secrets) == []


def test_no_secret_in_postgresql_logs(secrets):
    result = docker_exec(POSTGRES_HOST, ["sh", "-c", "cat /var/log/postgresql/*.log"])
    assert result.returncode == 0, result.stderr
    assert secrets_in(result.stdout, secrets) == []


# A lab host's root filesystem holds tens of thousands of files (the gateway's venv alone); fewer
# means the scan did not cover the whole filesystem.
MIN_FILES_SCANNED = 5000


@pytest.mark.parametrize("container", LAB_CONTAINERS)
def test_no_secret_in_world_readable_files_on_lab_hosts(container, secrets):
    """The whole filesystem (`find / -xdev` minus /proc /sys /dev) plus /run and the docker-mounted caches."""
    scanned, found = world_readable_files_with_secrets(container, secrets)
    print(f"{container}: {scanned} world-readable files read")
    assert scanned > MIN_FILES_SCANNED
    assert found == []


@pytest.mark.parametrize(
    ("path", "owner", "mode"),
    [
        ("/etc/postgresql/17/main/pg_hba.conf", "postgres:postgres", "640"),
        ("/etc/postgresql/17/main/pg_ident.conf", "postgres:postgres", "640"),
        ("/var/lib/postgresql/17/main", "postgres:postgres", "700"),
    ],
)
def test_postgresql_access_files_are_private(path, owner, mode):
    result = docker_exec(POSTGRES_HOST, ["stat", "-c", "%U:%G %a", path])
    assert result.stdout.strip() == f"{owner} {mode}"


def test_gateway_unit_file_is_root_owned_and_not_writable_by_others():
    result = docker_exec(
        "hx-litellm-server", ["stat", "-c", "%U:%G %a", "/etc/systemd/system/litellm-gateway.service"]
    )
    assert result.stdout.strip() == "root:root 644"


def test_control_node_secret_files_are_private():
    directory = LAB_DIR / "secrets"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert files, "no lab secrets found"
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} is readable by others"


def test_no_lab_secret_in_tracked_files(secrets):
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    leaking = []
    for name in filter(None, tracked):
        path = REPO / name.decode()
        if path.is_file():
            data = path.read_bytes()
            leaking += [f"{name.decode()}: {n}" for n, value in secrets.items() if value.encode() in data]
    assert leaking == []


def test_stub_exposure_is_at_most_3():
    result = docker_exec(UPSTREAM_HOST, ["systemd-analyze", "security", "llm-stub.service", "--no-pager"])
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout).group(1))
    print(f"systemd-analyze exposure of llm-stub: {exposure}")
    assert exposure <= MAX_EXPOSURE
