"""Fixtures of the monitoring tests.

``promtool``: its path (Debian package ``prometheus``); ``receiver``: the webhook receiver
script running on a free loopback port, as (base URL, output file).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from debian_tools import ensure_debian_package

RECEIVER = Path(__file__).resolve().parents[2] / "roles" / "alert_webhook" / "files" / "webhook_receiver.py"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Fails (not skips) without promtool: the rules would ship untested."""
    found = ensure_debian_package("prometheus", "promtool")
    if found is None:
        pytest.fail("promtool is missing and could not be installed: apt-get install prometheus")
    return found


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The script run as the lab runs it, on a free loopback port."""
    output = tmp_path / "alerts.jsonl"
    command = [sys.executable, str(RECEIVER), "--listen", "127.0.0.1:0", "--output", str(output)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stderr.readline()  # "webhook_receiver: listening on HOST:PORT, writing ..."
        address = banner.split("listening on ")[1].split(",")[0]
        yield f"http://{address}", output
    finally:
        process.terminate()
        process.wait(timeout=10)
