"""The service's shape: ``uvicorn litellm_pglog.asgi:app --workers 2`` with CONFIG_FILE_PATH."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from proxy_harness import Gateway, LogReader, chat_body, running_gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, database_url) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway-workers"), database_url, workers=2) as gateway:
        yield gateway


def test_two_workers_load_the_config_and_log_every_request_once(gateway, database_url):
    def one(index: int) -> tuple[int, str]:
        key = gateway.keys.test_key if index % 2 else gateway.keys.poc_key
        with gateway.client(key) as client:  # a new connection each time: both workers get traffic
            response = client.post("/v1/chat/completions", json=chat_body(f"worker test {index}"))
        return response.status_code, response.headers["x-litellm-call-id"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    assert {status for status, _ in results} == {200}

    request_ids = {request_id for _, request_id in results}
    reader = LogReader(database_url)
    try:
        rows = reader.wait_for(request_ids, complete=lambda row: row["total_tokens"] is not None)
        assert {row["status_code"] for row in rows.values()} == {200}
        assert {row["api_key"] for row in rows.values()} == {"TEST_KEY", "POC_VALIDATION_KEY"}
        assert set(reader.count_per_request_id(request_ids).values()) == {1}
    finally:
        reader.dispose()

    worker_pids = {
        line.split("[")[1].split("]")[0]
        for line in gateway.log_path.read_text().splitlines()
        if line.startswith("INFO:     Started server process")
    }
    assert len(worker_pids) == 2
