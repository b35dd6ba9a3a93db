"""A real Alertmanager, configured from alertmanager.example.yml, notifies the webhook receiver.

The example's route and receiver are kept; only the URL (the receiver's free port) and the
waits (seconds instead of a minute) change. Alertmanager is the Debian package
``prometheus-alertmanager`` (program ``prometheus-alertmanager``); the test is skipped with the
reason when it cannot be installed: the lab's end-to-end test covers the same path.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from debian_tools import ensure_debian_package

EXAMPLE = Path(__file__).resolve().parents[2] / "monitoring" / "alertmanager" / "alertmanager.example.yml"
ALERT = {"alertname": "PglogRecordsSpooling", "instance": "gw1:9464", "severity": "warning"}
WAIT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {WAIT_SECONDS} s waiting for {what}")


def lab_config(receiver_url: str) -> dict:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["route"] |= {"group_wait": "1s", "group_interval": "1s"}
    (receiver,) = config["receivers"]
    (webhook,) = receiver["webhook_configs"]
    webhook["url"] = f"{receiver_url}/alerts"
    return config


@pytest.fixture
def alertmanager(receiver: tuple[str, Path], tmp_path: Path) -> Iterator[str]:
    program = ensure_debian_package("prometheus-alertmanager", "prometheus-alertmanager")
    if program is None:
        pytest.skip("prometheus-alertmanager is missing and could not be installed (Debian package)")
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(lab_config(receiver[0])))
    address = f"127.0.0.1:{free_port()}"
    command = [program, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}"]
    command += [f"--web.listen-address={address}", "--cluster.listen-address="]  # no cluster port
    log = (tmp_path / "alertmanager.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: ready(f"http://{address}"), "Alertmanager to be ready")
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def send_alert(url: str, **times: str) -> None:
    body = json.dumps([{"labels": ALERT, **times}]).encode()
    request = urllib.request.Request(
        f"{url}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def statuses(output: Path) -> list[str]:
    if not output.exists():
        return []
    return [json.loads(line)["status"] for line in output.read_text().splitlines()]


def test_alert_arrives_and_resolves_at_the_webhook(alertmanager: str, receiver: tuple[str, Path]) -> None:
    output = receiver[1]
    now = datetime.now(UTC).isoformat()
    send_alert(alertmanager, startsAt=now)
    wait_until(lambda: "firing" in statuses(output), "the firing notification")
    send_alert(alertmanager, startsAt=now, endsAt=datetime.now(UTC).isoformat())
    wait_until(lambda: "resolved" in statuses(output), "the resolved notification")
    firing = json.loads(output.read_text().splitlines()[0])
    assert firing["receiver"] == "lab-webhook" and firing["groupLabels"] == {
        "alertname": "PglogRecordsSpooling",
        "instance": "gw1:9464",
    }
    assert firing["alerts"][0]["labels"] == ALERT and firing["receivedAt"].startswith("20")
