"""roles/alert_webhook/files/webhook_receiver.py: one JSON line per Alertmanager notification."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

NOTIFICATION = {
    "version": "4",
    "status": "firing",
    "receiver": "lab-webhook",
    "groupLabels": {"alertname": "PglogRecordsSpooling"},
    "alerts": [{"status": "firing", "labels": {"alertname": "PglogRecordsSpooling", "instance": "gw1:9464"}}],
}


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_each_post_is_one_line(receiver: tuple[str, Path]) -> None:
    url, output = receiver
    resolved = {**NOTIFICATION, "status": "resolved"}
    assert post(f"{url}/alerts", json.dumps(NOTIFICATION).encode()) == 200
    assert post(f"{url}/alerts", json.dumps(resolved).encode()) == 200
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line.pop("receivedAt")[:2] for line in lines] == ["20", "20"]  # ISO 8601 times
    assert lines == [NOTIFICATION, resolved]


def test_bad_bodies_are_refused_and_not_written(receiver: tuple[str, Path]) -> None:
    url, output = receiver
    assert post(url, b"not json") == 400
    assert post(url, b"[1, 2]") == 400  # JSON, but not a notification
    assert post(url, b"") == 400
    assert not output.exists()
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        assert answer.read() == b"ok\n"


def test_concurrent_posts_never_interleave(receiver: tuple[str, Path]) -> None:
    url, output = receiver
    big = {**NOTIFICATION, "commonAnnotations": {"description": "x" * 50_000}}
    threads = [threading.Thread(target=post, args=(url, json.dumps(big).encode())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = output.read_text().splitlines()
    assert len(lines) == 8 and all(
        json.loads(line)["commonAnnotations"] == big["commonAnnotations"] for line in lines
    )
