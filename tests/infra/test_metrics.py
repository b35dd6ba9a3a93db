"""Metrics: only the monitoring path reads them, all workers summed, no key material in labels.

Scrapes go from the monitoring host (the only host besides the admins' that the firewall lets
reach port 9464) to the exporter's listener on the gateway's lab address, with and without the
scrape token; /metrics on the API port is asked from llm-upstream, a client.
"""

from __future__ import annotations

import re

import pytest
from conftest import GATEWAY_ADDRESS, GATEWAY_URL, MONITORING_HOST, UPSTREAM_HOST, lab_requests, logged_rows
from prometheus_client.parser import text_string_to_metric_families

EXPORTER_URL = f"http://{GATEWAY_ADDRESS}:9464"
SCRAPES = 8
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "metrics"}], "max_tokens": 5}
CHAT_REQUEST = {"method": "POST", "path": "/v1/chat/completions", "key": "test_key", "json": CHAT}


def scrape(
    key: str | None = "metrics_token",
    path: str = "/metrics",
    base: str = EXPORTER_URL,
    client: str = MONITORING_HOST,
) -> dict:
    """From the monitoring host by default: the firewall lets only it (and admins) reach 9464."""
    request = {"method": "GET", "path": path, "key": key, "full": True}
    return lab_requests([request], base=base, client=client)[0]


def counters(text: str) -> dict[tuple, float]:
    """(sample name, labels) -> value of every counter sample (the *_total ones)."""
    values = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def label_values(text: str) -> set[str]:
    families = text_string_to_metric_families(text)
    return {value for family in families for sample in family.samples for value in sample.labels.values()}


@pytest.fixture(scope="module")
def scrapes() -> list[str]:
    """8 consecutive scrapes with the token, client traffic in between (so workers' counts move)."""
    texts = []
    for _ in range(SCRAPES):
        lab_requests([CHAT_REQUEST] * 6, parallel=3)
        answer = scrape()
        assert answer["status"] == 200, answer["body"][:300]
        texts.append(answer["body"])
    return texts


def test_the_gateway_runs_one_worker_per_vcpu(gateway_host):
    vcpus = int(gateway_host.run("nproc").stdout)
    unit = gateway_host.run("systemctl show -p ExecStart --value litellm-gateway").stdout
    assert f"--workers {min(vcpus, 8)} " in unit


def test_counters_never_decrease_across_scrapes(scrapes):
    previous = counters(scrapes[0])
    assert any(name == "pglog_rows_written_total" for name, _ in previous)
    for text in scrapes[1:]:
        current = counters(text)
        went_back = {k: (previous[k], v) for k, v in current.items() if k in previous and v < previous[k]}
        assert went_back == {}
        previous = current


def rows_written(text: str) -> float:
    return counters(text)[("pglog_rows_written_total", ())]


def test_rows_written_grow_with_the_traffic():
    # Counted once the rows are in PostgreSQL, not right after the answers: the writer ships in
    # batches, and a scrape that follows the answers at once may still miss a batch or two.
    before = rows_written(scrape()["body"])
    answers = lab_requests([CHAT_REQUEST] * 12, parallel=3)
    assert len(logged_rows([answer["call_id"] for answer in answers])) == len(answers)
    # Each request row is upserted at least once (its two halves merged in one batch: once).
    assert rows_written(scrape()["body"]) - before >= len(answers)


def test_no_label_value_is_a_sha256(scrapes):
    assert {v for text in scrapes for v in label_values(text) if SHA256_HEX.match(v)} == set()


@pytest.mark.parametrize("key", [None, "test_key", "master_key", "wrong-token"])
def test_the_exporter_refuses_anyone_without_the_scrape_token(key):
    answer = scrape(key)
    assert answer["status"] == 401
    assert "pglog_" not in answer["body"] and "litellm_" not in answer["body"]


@pytest.mark.parametrize("key", [None, "test_key"])
def test_the_api_port_serves_no_metrics(key):
    answer = scrape(key, base=GATEWAY_URL, client=UPSTREAM_HOST)
    assert answer["status"] == 404
    assert "pglog_" not in answer["body"]
