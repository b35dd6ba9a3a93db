"""Bad input against the live lab gateway: a clear error status, and a log row with that status.

Each request is sent from the llm-upstream host to 192.168.10.18:4000 with the standard
library; the request (headers with the key included) travels on standard input, never in a
command line. Every answer must carry x-litellm-call-id, and exactly one ``requests`` row
(plus its ``responses`` row) must hold the status the client received.
"""

from __future__ import annotations

import json

import pytest
from conftest import (
    CA_FILE,
    GATEWAY_ADDRESS,
    UPSTREAM_HOST,
    docker_exec,
    lab_secret,
    logged_rows,
    sql_as_postgres,
)

TARGET = [GATEWAY_ADDRESS, "4000", "/v1/chat/completions"]  # HTTPS, verified with the lab's CA
MODEL = "gpt-4o-mini"
HOSTILE_TEXT = "Grüße 🚀 ∑ 日本語 ' OR '1'='1'; DROP TABLE requests; -- \" \\ %s $1 \u0000 <script>"
# What the writer stores for it: PostgreSQL text cannot hold NUL, the writer replaces it by U+FFFD.
HOSTILE_TEXT_STORED = HOSTILE_TEXT.replace("\x00", "\ufffd")
TEN_MB = 10 * 1024 * 1024
MALFORMED_JSON = '{"model": "gpt-4o-mini",\n "messages": ['
# Where Python's JSON parser (and so LiteLLM's error) places the fault in MALFORMED_JSON.
try:
    json.loads(MALFORMED_JSON)
except json.JSONDecodeError as exc:
    MALFORMED_AT = f"line {exc.lineno} column {exc.colno}"

# Sends one request described by a JSON document on stdin: {"headers": {...}, "body": str,
# "pad_to": bytes}. Prints status, x-litellm-call-id and the answer's JSON error (if any).
# A gateway that refuses an oversized body answers before reading it and closes the connection,
# so a failed write is followed by reading the answer anyway (as curl and httpx do).
_RAW_CLIENT = """
import http.client, json, ssl, sys
spec = json.load(sys.stdin)
body = spec["body"].encode()
if spec.get("pad_to"):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "x" * spec["pad_to"]}]}).encode()
host, port, path = sys.argv[1:4]
context = ssl.create_default_context(cadata=spec["ca"])
connection = http.client.HTTPSConnection(host, int(port), timeout=120, context=context)
connection.putrequest("POST", path)
for name, value in {**spec["headers"], "Content-Length": str(len(body))}.items():
    connection.putheader(name, value)
connection.endheaders()
try:
    for start in range(0, len(body), 65536):
        connection.send(body[start:start + 65536])
except (BrokenPipeError, ConnectionResetError):
    pass
response = connection.getresponse()
data = response.read()
try:
    error = json.loads(data).get("error")
except (ValueError, AttributeError):
    error = None
call_id = response.getheader("x-litellm-call-id")
print(json.dumps({"status": response.status, "call_id": call_id, "error": error}))
"""


def chat_body(**overrides) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "bad input matrix"}], "max_tokens": 20}
    return json.dumps(body | overrides)


JSON = "application/json"

# name: (headers without Authorization, use the TEST_KEY?, body, pad_to, expected status)
CASES = {
    "no Authorization header": ({"Content-Type": JSON}, None, chat_body(), 0, 401),
    "wrong key": ({"Content-Type": JSON}, "wrong-key-0123456789", chat_body(), 0, 401),
    "wrong model": ({"Content-Type": JSON}, "TEST_KEY", chat_body(model="no-such-model"), 0, 400),
    "malformed JSON": ({"Content-Type": JSON}, "TEST_KEY", MALFORMED_JSON, 0, 400),
    "empty body": ({"Content-Type": JSON}, "TEST_KEY", "", 0, 400),
    "no messages": ({"Content-Type": JSON}, "TEST_KEY", json.dumps({"model": MODEL}), 0, 400),
    # The body is JSON, so it is served whatever the header claims (LiteLLM parses the bytes).
    "wrong content type": ({"Content-Type": "text/plain"}, "TEST_KEY", chat_body(), 0, 200),
    "10 MB body": ({"Content-Type": JSON}, "TEST_KEY", "", TEN_MB, 413),
    # Passed through: validating max_tokens is the provider's job (the lab stub accepts it,
    # OpenAI answers 400); either way the row holds what the client got.
    "negative max_tokens": ({"Content-Type": JSON}, "TEST_KEY", chat_body(max_tokens=-5), 0, 200),
    "unicode and SQL metacharacters in messages and user": (
        {"Content-Type": JSON},
        "TEST_KEY",
        chat_body(messages=[{"role": "user", "content": HOSTILE_TEXT}], user=HOSTILE_TEXT),
        0,
        200,
    ),
    # The model name is stored (requests.model) and echoed in the error: it must round-trip.
    "unicode and SQL metacharacters in the model name": (
        {"Content-Type": JSON},
        "TEST_KEY",
        chat_body(model=HOSTILE_TEXT),
        0,
        400,
    ),
}

# The documented error messages (README, "Bad input"): a substring of the answer's error message.
MESSAGES = {
    "wrong model": "Invalid model name passed in model=no-such-model",
    "malformed JSON": MALFORMED_AT,
    "empty body": "Missing required parameter: 'messages'",
    "no messages": "Missing required parameter: 'messages'",
    "unicode and SQL metacharacters in the model name": "Invalid model name passed in model=",
}


def send(headers: dict[str, str], key: str | None, body: str, pad_to: int) -> dict:
    if key is not None:
        secret = lab_secret("test_key") if key == "TEST_KEY" else key
        headers = headers | {"Authorization": f"Bearer {secret}"}
    spec = json.dumps({"headers": headers, "body": body, "pad_to": pad_to, "ca": CA_FILE.read_text()})
    result = docker_exec(UPSTREAM_HOST, ["python3", "-c", _RAW_CLIENT, *TARGET], stdin=spec)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def table_sizes_before() -> int:
    return int(sql_as_postgres("SELECT count(*) FROM requests"))


@pytest.fixture(scope="module")
def answers(table_sizes_before) -> dict[str, dict]:
    return {name: send(headers, key, body, pad) for name, (headers, key, body, pad, _) in CASES.items()}


@pytest.fixture(scope="module")
def rows(answers) -> dict[str, dict]:
    return logged_rows([str(answer["call_id"]) for answer in answers.values() if answer["call_id"]])


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_the_expected_status_and_a_clear_error(answers, name):
    expected = CASES[name][-1]
    answer = answers[name]
    print(f"{name}: HTTP {answer['status']} {json.dumps(answer['error'])[:160]}")
    assert answer["status"] == expected
    if expected >= 400:
        assert isinstance(answer["error"], dict), "an error answer must be an OpenAI-style JSON error"
        assert answer["error"].get("message")
    if name in MESSAGES:
        assert MESSAGES[name] in str(answer["error"]["message"])


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_logged_once_with_the_status_the_client_got(answers, rows, name):
    call_id = answers[name]["call_id"]
    assert call_id, "the answer lacks x-litellm-call-id"
    row = rows.get(call_id)
    assert row is not None, f"{name}: no row in requests"
    assert row["status"] == answers[name]["status"]
    assert row["copies"] == 1
    assert row["responses"] == 1


def test_callers_are_logged_by_alias(answers, rows):
    assert rows[answers["no Authorization header"]["call_id"]]["api_key"] == ""
    assert rows[answers["wrong key"]["call_id"]]["api_key"] == "invalid"
    assert rows[answers["wrong model"]["call_id"]]["api_key"] == "TEST_KEY"
    assert rows[answers["wrong model"]["call_id"]]["model"] == "no-such-model"


def test_gateway_refusals_are_logged_with_their_reason(answers, rows):
    assert rows[answers["10 MB body"]["call_id"]]["error_type"] == "invalid_request_error"
    assert answers["10 MB body"]["error"]["code"] == "request_too_large"
    assert answers["malformed JSON"]["error"]["code"] == "invalid_json"
    assert rows[answers["malformed JSON"]["call_id"]]["error_type"] == "invalid_request_error"


def test_hostile_model_name_round_trips_through_the_model_column(answers, rows):
    row = rows[answers["unicode and SQL metacharacters in the model name"]["call_id"]]
    assert row["model"] == HOSTILE_TEXT_STORED


def test_error_answers_are_stored_with_their_message(answers, rows):
    """requests.error_message holds the message the client got (documented ones included)."""
    for name, message in MESSAGES.items():
        stored = rows[answers[name]["call_id"]]["error_message"]
        assert message in stored, f"{name}: {stored[:200]!r}"


def test_hostile_text_leaves_the_tables_intact(answers, rows, table_sizes_before):
    assert {"requests", "responses"} <= set(
        sql_as_postgres("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split()
    )
    assert int(sql_as_postgres("SELECT count(*) FROM requests")) >= table_sizes_before + len(rows)
