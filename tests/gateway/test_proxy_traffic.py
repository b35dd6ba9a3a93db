"""End-to-end: real LiteLLM proxy + real PostgreSQL; every answer is logged with the status the client got."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from litellm_pglog.models import Request
from litellm_pglog.settings import Settings
from proxy_harness import CHAT_MODEL, ERROR_MODEL, SLOW_MODEL, Gateway, LogReader, chat_body, running_gateway

MAX_BODY_BYTES = Settings().max_body_bytes  # the proxy runs with the default limit


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, database_url) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway"), database_url) as gateway:
        yield gateway


def call_id(response: httpx.Response) -> str:
    request_id = response.headers.get("x-litellm-call-id")
    assert request_id, f"no x-litellm-call-id on a {response.status_code} answer"
    return request_id


def logged_row(logged: LogReader, response: httpx.Response, with_tokens: bool = False) -> dict:
    request_id = call_id(response)

    def complete(row: dict) -> bool:
        return not with_tokens or row["total_tokens"] is not None

    return logged.wait_for([request_id], complete)[request_id]


def sse_events(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: ") :]))
    return events


@pytest.mark.parametrize(
    ("key_name", "alias", "user_id"),
    [("test_key", "TEST_KEY", "poc-tester"), ("poc_key", "POC_VALIDATION_KEY", "poc-validator")],
)
def test_success_is_logged_with_alias_user_and_tokens(gateway, logged, key_name, alias, user_id):
    with gateway.client(getattr(gateway.keys, key_name)) as client:
        response = client.post("/v1/chat/completions", json=chat_body("hello from the tests"))
    assert response.status_code == 200
    usage = response.json()["usage"]

    row = logged_row(logged, response, with_tokens=True)
    assert row["status_code"] == 200
    assert (row["api_key"], row["user_id"]) == (alias, user_id)
    assert (row["route"], row["method"], row["model"], row["stream"]) == (
        "/v1/chat/completions",
        "POST",
        CHAT_MODEL,
        False,
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert row["error_type"] is None
    assert row["latency_ms"] > 0


def test_master_key_is_accepted_and_logged_as_master(gateway, logged):
    with gateway.client(gateway.keys.master_key) as client:
        response = client.post("/chat/completions", json=chat_body())
    assert response.status_code == 200
    row = logged_row(logged, response)
    assert (row["status_code"], row["api_key"], row["user_id"], row["route"]) == (
        200,
        "master",
        "litellm-admin",
        "/chat/completions",
    )


def test_stream_without_include_usage_gets_tokens_from_the_callback(gateway, logged):
    with (
        gateway.client(gateway.keys.test_key) as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        events = sse_events(response)
    assert response.status_code == 200
    assert events and not any(event.get("usage") for event in events)

    row = logged_row(logged, response, with_tokens=True)
    assert (row["status_code"], row["stream"], row["api_key"]) == (200, True, "TEST_KEY")
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]


def test_stream_with_include_usage_logs_the_usage_the_client_saw(gateway, logged):
    body = chat_body("count these five words", stream=True, stream_options={"include_usage": True})
    with (
        gateway.client(gateway.keys.poc_key) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        events = sse_events(response)
    assert response.status_code == 200
    usage = next(event["usage"] for event in events if event.get("usage"))

    row = logged_row(logged, response, with_tokens=True)
    assert (row["status_code"], row["stream"]) == (200, True)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )


def test_usage_the_answer_carried_is_not_submitted_twice(gateway, logged):
    before = gateway.quiet_metrics()
    with gateway.client(gateway.keys.test_key) as client:
        answers = [client.post("/v1/chat/completions", json=chat_body(f"one record {n}")) for n in range(5)]
    assert [response.status_code for response in answers] == [200] * 5

    ids = {call_id(response) for response in answers}
    rows = logged.wait_for(ids, lambda row: row["total_tokens"] is not None)
    for response in answers:
        row, tokens = rows[call_id(response)], response.json()["usage"]["total_tokens"]
        assert (row["status_code"], row["model"], row["total_tokens"]) == (200, CHAT_MODEL, tokens)
    # LiteLLM runs its success callbacks after the answer went out: the usage record of each
    # request repeats what the middleware read from the answer, and is merged on the host.
    after = gateway.quiet_metrics()
    assert after["pglog_records_merged_total"] - before["pglog_records_merged_total"] == len(answers)


def test_upstream_error_is_logged_with_the_status_the_client_got(gateway, logged):
    with gateway.client(gateway.keys.test_key) as client:
        response = client.post("/v1/chat/completions", json=chat_body(model=ERROR_MODEL))
    assert response.status_code == 500
    row = logged_row(logged, response)
    assert (row["status_code"], row["model"], row["api_key"]) == (500, ERROR_MODEL, "TEST_KEY")
    assert row["error_type"] and "Injected stub error 500" in row["error_message"]


def test_invalid_model_is_a_logged_400(gateway, logged):
    with gateway.client(gateway.keys.test_key) as client:
        response = client.post("/v1/chat/completions", json=chat_body(model="invalid-model"))
    assert response.status_code == 400
    assert "invalid-model" in response.json()["error"]["message"]
    row = logged_row(logged, response)
    assert (row["status_code"], row["model"]) == (400, "invalid-model")
    assert "invalid-model" in row["error_message"]


@pytest.mark.parametrize("presented", [None, "not-a-valid-key"], ids=["missing", "invalid"])
def test_rejected_keys_are_logged_401_without_the_key(gateway, logged, presented):
    with gateway.client(presented) as client:
        response = client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "auth_error"

    row = logged_row(logged, response)
    assert row["status_code"] == 401
    assert row["api_key"] == (None if presented is None else "invalid")
    assert row["user_id"] is None
    assert presented is None or presented not in json.dumps(row, default=str)


def test_malformed_json_is_a_clear_logged_400(gateway, logged):
    with gateway.client(gateway.keys.test_key) as client:
        response = client.post(
            "/v1/chat/completions",
            content=b'{"model": "gpt-4o-mini", "messages": [',
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]
    row = logged_row(logged, response)
    assert (row["status_code"], row["api_key"], row["model"]) == (400, "TEST_KEY", None)
    assert "not valid JSON" in row["error_message"]


# Just over the limit, and 10 MB: a client still sending must receive the 413, not a reset.
@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 10 * 1024 * 1024], ids=["limit+1", "10MB"])
def test_oversized_body_is_a_logged_413(gateway, logged, size):
    filler = "x" * size
    with gateway.client(gateway.keys.test_key) as client:
        response = client.post("/v1/chat/completions", json=chat_body(filler))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    row = logged_row(logged, response)
    assert (row["status_code"], row["api_key"]) == (413, "TEST_KEY")


@pytest.mark.parametrize(
    "content",
    [
        "'; DROP TABLE requests; -- \" \\ %s %(x)s $1",
        "Grüße, 你好, مرحبا, 🚀, \u202eRTL, zero\u200bwidth, NUL:\u0000",
        "word " * 200_000,  # a 1 MB prompt
    ],
    ids=["sql-metacharacters", "unicode", "1MB-prompt"],
)
def test_hostile_prompts_are_answered_and_logged(gateway, logged, content):
    with gateway.client(gateway.keys.test_key) as client:
        response = client.post("/v1/chat/completions", json=chat_body(content))
    assert response.status_code == 200
    row = logged_row(logged, response, with_tokens=True)
    assert row["status_code"] == 200
    assert row["prompt_tokens"] == response.json()["usage"]["prompt_tokens"]


def test_hostile_model_name_is_stored_verbatim(gateway, logged):
    model = "gpt'; DELETE FROM requests; -- Grüße 🚀"
    with gateway.client(gateway.keys.test_key) as client:
        response = client.post("/v1/chat/completions", json=chat_body(model=model))
    assert response.status_code == 400
    row = logged_row(logged, response)
    assert (row["status_code"], row["model"]) == (400, model)
    assert logged.count() > 0  # the table is still there and still holds the earlier rows


def test_model_list_is_logged(gateway, logged):
    with gateway.client(gateway.keys.poc_key) as client:
        response = client.get("/v1/models")
    assert response.status_code == 200
    assert CHAT_MODEL in {model["id"] for model in response.json()["data"]}
    row = logged_row(logged, response)
    assert (row["status_code"], row["method"], row["route"], row["api_key"]) == (
        200,
        "GET",
        "/v1/models",
        "POC_VALIDATION_KEY",
    )


def test_client_supplied_call_id_cannot_merge_two_requests(gateway, logged):
    reused = {"x-litellm-call-id": "client-chosen-id"}
    with gateway.client(gateway.keys.test_key) as client:
        responses = [client.post("/v1/chat/completions", json=chat_body(), headers=reused) for _ in range(2)]
    ids = {call_id(response) for response in responses}
    assert len(ids) == 2 and "client-chosen-id" not in ids
    assert set(logged.wait_for(ids)) == ids


def test_health_checks_are_not_logged_as_client_traffic(gateway, logged):
    before = logged.count()
    with gateway.client(gateway.keys.master_key) as client:
        health = client.get("/health")
        marker = client.post("/v1/chat/completions", json=chat_body("after the health check"))
    assert health.status_code == 200
    assert health.json()["healthy_endpoints"]  # the health check really called the upstream
    logged_row(logged, marker, with_tokens=True)
    # /health is logged like any request, the model calls it made are not: two rows added.
    assert logged.count() == before + 2
    assert logged.count(Request.route == "/health") >= 1
    assert logged.count(Request.route.is_(None)) == 0


def test_metrics_endpoint_counts_the_rows_the_writer_wrote(gateway, logged):
    before = gateway.quiet_metrics()  # no late half of an earlier test's request still on its way
    # Neither a model list nor a refused key fires LiteLLM's success callback: each of these
    # requests is exactly one record, hence exactly one row upserted.
    with gateway.client(gateway.keys.poc_key) as client:
        answers = [client.get("/v1/models") for _ in range(5)]
    with gateway.client("not-a-valid-key") as client:
        answers += [client.post("/v1/chat/completions", json=chat_body()) for _ in range(3)]
    assert [response.status_code for response in answers] == [200] * 5 + [401] * 3
    logged.wait_for({call_id(response) for response in answers})

    after = gateway.quiet_metrics()
    assert after["pglog_rows_written_total"] - before["pglog_rows_written_total"] == len(answers)
    assert after["pglog_records_spooled_total"] == before["pglog_records_spooled_total"]
    assert after["pglog_records_dropped_total"] == before["pglog_records_dropped_total"] == 0


def test_client_that_leaves_before_the_answer_is_logged_as_499(gateway, logged):
    with gateway.client(gateway.keys.test_key, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=chat_body(model=SLOW_MODEL))
    # The client never saw a request id; the slow model is used by this test only.
    deadline = time.monotonic() + 60
    while not (rows := logged.rows_where(Request.model == SLOW_MODEL)):
        assert time.monotonic() < deadline, "no log row for the abandoned request"
        time.sleep(0.2)
    [row] = rows
    assert (row["status_code"], row["error_type"], row["api_key"]) == (499, "client_disconnected", "TEST_KEY")


def test_the_package_s_info_lines_reach_the_gateway_s_output(gateway):
    """INFO lines of litellm_pglog (not only warnings) reach stderr, hence the journal."""
    output = gateway.log_text()
    assert "log writer started (pid" in output
    assert "startup heap frozen:" in output
