"""The alerting path on loopback: Prometheus with our rules -> Alertmanager -> webhook receiver.

Alertmanager is configured from alertmanager.example.yml: its route and receiver are kept, only
the URL (the receiver's free port) and the waits (seconds instead of a minute) change.
Prometheus (Debian ``prometheus``) loads roles/prometheus/files/rules/*.yml and scrapes a stub
gateway exporter as job ``litellm_gateway``. Alertmanager is the Debian package
``prometheus-alertmanager``; these tests are skipped with the reason when it cannot be installed
(the lab's end-to-end test covers the same path).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@contextmanager
def service(command: list[str], url: str, log: Path) -> Iterator[str]:
    """Run ``command`` until the block ends; ``url``'s /-/ready must answer first."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: ready(url), f"{command[0]} to be ready (log: {log})")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def alertmanager(receiver: tuple[str, Path], tmp_path: Path) -> Iterator[str]:
    program = ensure_debian_package("prometheus-alertmanager", "prometheus-alertmanager")
    if program is None:
        pytest.skip("prometheus-alertmanager is missing and could not be installed (Debian package)")
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(lab_config(receiver[0])))
    address = f"127.0.0.1:{free_port()}"
    command = [program, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}"]
    command += [f"--web.listen-address={address}", "--cluster.listen-address="]  # no cluster port
    with service(command, f"http://{address}", tmp_path / "alertmanager.log") as url:
        yield url


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


# ---- Prometheus evaluating the real rules ----------------------------------------------------------

RULES = sorted((EXAMPLE.parents[2] / "roles" / "prometheus" / "files" / "rules").glob("*.yml"))


class StubExporter(ThreadingHTTPServer):
    """Serves /metrics like litellm-pglog-metrics, with a settable dropped-records count."""

    def __init__(self) -> None:
        self.dropped = 0
        super().__init__(("127.0.0.1", 0), _StubHandler)


class _StubHandler(BaseHTTPRequestHandler):
    server: StubExporter

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        body = (
            f"# TYPE pglog_records_dropped_total counter\npglog_records_dropped_total {self.server.dropped}\n"
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def stub_exporter() -> Iterator[StubExporter]:
    server = StubExporter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def prometheus(alertmanager: str, stub_exporter: StubExporter, tmp_path: Path) -> Iterator[str]:
    program = ensure_debian_package("prometheus", "prometheus")
    if program is None:
        pytest.skip("prometheus is missing and could not be installed (Debian package)")
    target = f"127.0.0.1:{stub_exporter.server_address[1]}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULES],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
        },
        "scrape_configs": [{"job_name": "litellm_gateway", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    command = [program, f"--config.file={tmp_path / 'prometheus.yml'}", f"--web.listen-address={address}"]
    command += [f"--storage.tsdb.path={tmp_path / 'prom-data'}"]
    with service(command, f"http://{address}", tmp_path / "prometheus.log") as url:
        yield url


def api(url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/{path}", timeout=10) as answer:
        return json.load(answer)["data"]


def test_prometheus_runs_the_rules_and_a_dropped_record_reaches_the_webhook(
    prometheus: str, stub_exporter: StubExporter, receiver: tuple[str, Path]
) -> None:
    groups = api(prometheus, "rules")["groups"]
    assert {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"} >= {
        "PglogRecordsDropped",
        "LiteLLMGatewayDown",
    }
    wait_until(
        lambda: bool(api(prometheus, "query?query=up%3D%3D1")["result"]), "the first scrape of the stub"
    )
    time.sleep(2)  # a few samples at 0, so that the increase is seen
    stub_exporter.dropped = 3
    output = receiver[1]
    wait_until(lambda: "firing" in statuses(output), "PglogRecordsDropped at the webhook")
    (notification,) = [json.loads(line) for line in output.read_text().splitlines()]
    (alert,) = notification["alerts"]
    assert (
        alert["labels"]["alertname"] == "PglogRecordsDropped" and alert["labels"]["job"] == "litellm_gateway"
    )
    assert all(
        rule["health"] == "ok" for group in api(prometheus, "rules")["groups"] for rule in group["rules"]
    )
