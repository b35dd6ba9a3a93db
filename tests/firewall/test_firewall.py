"""Checks of roles/firewall on the molecule/firewall scenario (run by `molecule verify`).

fwtest-server (192.168.77.10) runs the role with 5432 and SSH allowed from
fwtest-allowed (.11) only; fwtest-denied (.12) is every other host. Listeners (see
molecule/firewall/prepare.yml): 5432 and 8080 on the server, 8000 on fwtest-denied.
A dropped connection times out (a scan sees "filtered"); a refused one would mean a
reset came back. The tests run in file order: the playbook runs at the end change the
server and the last one converges it back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONVERGE = REPO / "molecule" / "firewall" / "converge.yml"
INVENTORY = Path(__file__).with_name("inventory.yml")
SERVER, ALLOWED, DENIED = "fwtest-server", "fwtest-allowed", "fwtest-denied"
SERVER_ADDRESS, DENIED_ADDRESS = "192.168.77.10", "192.168.77.12"
TABLE = "litellm_firewall"
CANDIDATE = f"/var/lib/{TABLE}/candidate.nft"
INSTALLED = f"/etc/nftables.d/{TABLE}.nft"
DROP_TIMEOUT = 3.0

# Prints open, refused or timeout for one TCP connection attempt.
_CONNECT_PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


def run_on(host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", host, *argv], capture_output=True, text=True, check=check, timeout=60
    )


def connect(client: str, address: str, port: int) -> str:
    return run_on(
        client, "python3", "-c", _CONNECT_PROBE, address, str(port), str(DROP_TIMEOUT)
    ).stdout.strip()


def live_table() -> str:
    return run_on(SERVER, "nft", "-s", "list", "table", "inet", TABLE).stdout


def rendered_table(path: str = CANDIDATE) -> str:
    """The table a rendered file defines, as nft lists it: loaded into a scratch network namespace."""
    script = 'nft -f "$1" && nft -s list table inet "$2"'
    return run_on(SERVER, "unshare", "--net", "sh", "-c", script, "sh", path, TABLE).stdout


def playbook(*extra: str, extra_vars: dict | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ansible-playbook", "-i", str(INVENTORY), str(CONVERGE), *extra]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def recap_changed(output: str) -> int:
    match = re.search(rf"{SERVER}\s*:\s*ok=\d+\s+changed=(\d+)", output)
    assert match, output[-2000:]
    return int(match.group(1))


def test_allowed_port_connects_from_the_allowed_client() -> None:
    assert connect(ALLOWED, SERVER_ADDRESS, 5432) == "open"


def test_allowed_port_is_dropped_for_other_hosts() -> None:
    assert connect(DENIED, SERVER_ADDRESS, 5432) == "timeout"


@pytest.mark.parametrize("client", [ALLOWED, DENIED])
@pytest.mark.parametrize("port", [8080, 9999, 22])
def test_other_ports_are_dropped_not_refused(client: str, port: int) -> None:
    # 8080 has a listener, 9999 has none (would be "refused" without the firewall), 22 is
    # allowed from fwtest-allowed but nothing listens: the rule lets the reset through.
    expected = "refused" if (client, port) == (ALLOWED, 22) else "timeout"
    assert connect(client, SERVER_ADDRESS, port) == expected


def test_loopback_is_allowed() -> None:
    assert connect(SERVER, "127.0.0.1", 8080) == "open"


def test_replies_to_outbound_connections_come_in() -> None:
    # The server's own connection to fwtest-denied: its SYN-ACK and data are inbound
    # packets from a host that may not connect, accepted as established traffic.
    page = run_on(
        SERVER,
        "python3",
        "-c",
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)",
        f"http://{DENIED_ADDRESS}:8000/",
    )
    assert page.stdout.strip() == "200"


def test_running_table_is_the_rendered_one() -> None:
    assert live_table() == rendered_table()
    assert run_on(SERVER, "cmp", CANDIDATE, INSTALLED).returncode == 0


def test_only_the_roles_table_is_managed() -> None:
    # Docker's embedded DNS keeps its own NAT table inside the container: still there.
    tables = run_on(SERVER, "nft", "list", "tables").stdout.split("\n")
    assert f"table inet {TABLE}" in tables
    assert "table ip nat" in tables


def test_boot_configuration_includes_the_rule_file() -> None:
    conf = run_on(SERVER, "cat", "/etc/nftables.conf").stdout
    assert f'include "{INSTALLED}"' in conf.splitlines()
    run_on(SERVER, "nft", "-c", "-f", "/etc/nftables.conf")
    assert run_on(SERVER, "systemctl", "is-enabled", "nftables").stdout.strip() == "enabled"


def test_no_rollback_left_armed() -> None:
    timers = run_on(
        SERVER, "systemctl", "list-timers", "--all", "--no-legend", f"{TABLE}-rollback.timer"
    ).stdout
    assert timers.strip() == ""


def test_check_diff_on_the_converged_host_changes_nothing() -> None:
    result = playbook("--check", "--diff")
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap_changed(result.stdout) == 0


def test_a_broken_rule_is_refused_before_installation() -> None:
    before, candidate = live_table(), run_on(SERVER, "cat", CANDIDATE).stdout
    broken = [{"port": 5432, "sources": ["192.168.77.300"], "comment": "not an address"}]
    result = playbook(extra_vars={"firewall_allowed": broken})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    failed_task = output[: output.index("fatal:")].rsplit("TASK [", 1)[1]
    assert failed_task.startswith("firewall : Render the candidate rule set")
    assert "validate" in output
    assert "192.168.77.300" in output
    assert live_table() == before
    assert run_on(SERVER, "cat", CANDIDATE).stdout == candidate
    assert connect(ALLOWED, SERVER_ADDRESS, 5432) == "open"


def test_an_unconfirmed_rule_set_is_rolled_back_by_the_timer() -> None:
    # firewall_trial leaves the rollback armed, as a run that lost the host would.
    before = live_table()
    trial = {
        "firewall_trial": True,
        "firewall_rollback_seconds": 12,
        "firewall_connection_timeout": 5,
        "firewall_allowed": [{"port": [5432, 8080], "sources": ["192.168.77.11"], "comment": "trial"}],
    }
    started = time.monotonic()
    result = playbook(extra_vars=trial)
    assert result.returncode == 0, result.stdout[-3000:]
    assert live_table() != before
    assert connect(ALLOWED, SERVER_ADDRESS, 8080) == "open"
    while live_table() != before:
        assert time.monotonic() - started < 60, "the rollback did not restore the previous table"
        time.sleep(1)
    assert connect(ALLOWED, SERVER_ADDRESS, 8080) == "timeout"
    assert connect(ALLOWED, SERVER_ADDRESS, 5432) == "open"
    # Never installed for boot: the installed file still defines the previous table.
    assert rendered_table(INSTALLED) == before


def test_converging_again_reloads_the_configured_rule_set() -> None:
    first = playbook()
    assert first.returncode == 0, first.stdout[-3000:]
    assert recap_changed(first.stdout) > 0
    assert live_table() == rendered_table()
    second = playbook()
    assert recap_changed(second.stdout) == 0
