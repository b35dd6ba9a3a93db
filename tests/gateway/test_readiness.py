"""/health/readiness reports the request-log state: the rules, then a real proxy with PostgreSQL down."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from litellm_pglog.health import RECENT_DROP_SECONDS, DropWatch, readiness
from litellm_pglog.writer import WriterState
from proxy_harness import Gateway, chat_body, running_gateway

HEALTHY = WriterState(
    running=True, database_down=False, queued=0, spooled_records=0, spool_bytes=0, dropped_records=0
)


@pytest.mark.parametrize(
    ("changes", "dropping", "status", "http_status"),
    [
        ({}, False, "healthy", 200),
        ({"database_down": True, "spooled_records": 3, "spool_bytes": 900}, False, "degraded", 200),
        ({"spool_bytes": 900}, False, "degraded", 200),  # PostgreSQL back, replay not finished
        ({"dropped_records": 2}, True, "unhealthy", 503),
        ({"dropped_records": 2}, False, "healthy", 200),  # lost long ago, nothing lost now
        ({"running": False}, False, "unhealthy", 503),
    ],
)
def test_readiness_rules(changes, dropping, status, http_status):
    state = dataclasses.replace(HEALTHY, **changes)
    code, body = readiness(state, dropping)
    assert (code, body["status"]) == (http_status, status)
    assert body["request_log"]["database"] == ("unreachable" if state.database_down else "reachable")
    assert body["request_log"]["dropped_records"] == state.dropped_records
    assert isinstance(body["pid"], int) and body["litellm_version"]


def test_without_a_writer_readiness_is_503():
    code, body = readiness(None, dropping=False)
    assert (code, body["status"]) == (503, "unhealthy")


def test_drops_count_as_recent_for_a_while():
    watch = DropWatch()
    assert not watch.dropping(0, now=100.0)
    assert watch.dropping(1, now=100.0)
    assert watch.dropping(1, now=100.0 + RECENT_DROP_SECONDS - 1)
    assert not watch.dropping(1, now=100.0 + RECENT_DROP_SECONDS + 1)
    assert watch.dropping(2, now=500.0)


# ---- a real proxy ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, database_url) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway-readiness"), database_url) as gateway:
        yield gateway


def readiness_until(gateway: Gateway, wanted: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with gateway.client() as client:
            response = client.get("/health/readiness")
        body = response.json()
        if body["status"] == wanted:
            assert response.status_code == 200
            return body
        assert time.monotonic() < deadline, f"readiness never became {wanted}: {body}"
        time.sleep(0.2)


def test_readiness_is_documented_json_without_a_key(gateway):
    with gateway.client() as client:
        response = client.get("/health/readiness")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert set(body["request_log"]) == {
        "database",
        "queued",
        "spooled_records",
        "spool_bytes",
        "dropped_records",
    }
    assert body["request_log"]["database"] == "reachable"
    assert body["litellm_version"] and body["pid"] > 0


def test_readiness_is_degraded_while_postgresql_is_down_then_healthy_again(gateway, logged, pg_cluster):
    pg_cluster.stop()
    try:
        with gateway.client(gateway.keys.test_key) as client:
            answered = client.post("/v1/chat/completions", json=chat_body("while the database is down"))
        assert answered.status_code == 200  # served, its record spooled

        degraded = readiness_until(gateway, "degraded")
        assert degraded["request_log"]["database"] == "unreachable"
        assert degraded["request_log"]["dropped_records"] == 0
    finally:
        pg_cluster.start()
    readiness_until(gateway, "healthy")
    request_id = answered.headers["x-litellm-call-id"]
    assert logged.wait_for([request_id])[request_id]["status_code"] == 200
