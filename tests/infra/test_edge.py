"""The gateway's edge, tried from a client host the way a client with a valid key would.

- Route matrix: every route family LiteLLM serves answers something, and each answer leaves
  exactly one ``requests`` row with the status the client received (pass-through, management,
  UI and /metrics refusals included). The table is written to .lab/route-matrix.md for the README.
- Unauthenticated routes: what each answers without a key is a list here, not only a document.
- No cross-client lockout: one client's calls failing upstream (404, 500, 429, timeout) never
  take the shared deployment away from another client.
- Bounded upstream time: a stuck upstream is answered 408 within the configured timeout.
- Readiness reports the request log's state.
"""

from __future__ import annotations

import json

import pytest
from conftest import GATEWAY_HOST, LAB_DIR, docker_exec, lab_requests, logged_rows

MODEL = "gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, route matrix"}], "max_tokens": 5}
# The lab's litellm_gateway_request_timeout and the role's default litellm_gateway_num_retries.
REQUEST_TIMEOUT_S, NUM_RETRIES = 5, 1


def post(path: str, body: dict | None = None, key: str | None = "test_key", **extra) -> dict:
    spec = {"method": "POST", "path": path, "key": key, "json": CHAT if body is None else body}
    return {**spec, **extra}


def get(path: str, key: str | None = "test_key") -> dict:
    return {"method": "GET", "path": path, "key": key}


# Route family -> the request a client sends. Expected statuses are what the lab answers; the
# point of the test is that each answer is logged once with that status, and that none is a 500.
ROUTES: dict[str, dict] = {
    "chat completions (OpenAI)": post("/v1/chat/completions"),
    "chat completions, no /v1": post("/chat/completions"),
    "text completions": post("/v1/completions", {"model": MODEL, "prompt": "Say hi", "max_tokens": 5}),
    "embeddings": post("/v1/embeddings", {"model": MODEL, "input": "hello"}),
    "model list": get("/v1/models"),
    "model info": get("/v1/model/info"),
    "responses API": post("/v1/responses", {"model": MODEL, "input": "hello"}),
    "Anthropic messages": post(
        "/v1/messages",
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]},
    ),
    "moderations": post("/v1/moderations", {"model": MODEL, "input": "hello"}),
    "image generation": post("/v1/images/generations", {"model": MODEL, "prompt": "a cat"}),
    "audio transcription (multipart)": {
        "method": "POST",
        "path": "/v1/audio/transcriptions",
        "key": "test_key",
        "multipart": {"model": MODEL, "file": ["hello.wav", "RIFF....WAVE"]},
    },
    "rerank": post("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["a", "b"]}),
    "files": get("/v1/files"),
    "batches": post("/v1/batches", {"input_file_id": "file-x", "endpoint": "/v1/chat/completions"}),
    "unknown route": get("/v1/no-such-route"),
    "pass-through /openai (off)": post("/openai/v1/chat/completions"),
    "pass-through /anthropic (off)": post("/anthropic/v1/messages"),
    "pass-through /gemini (off)": get("/gemini/v1beta/models"),
    "management, client key": post("/key/generate", {}),
    "management, no key": post("/key/generate", {}, key=None),
    "admin UI": get("/ui/", key=None),
    "metrics on the API port": get("/metrics", key=None),
    "invalid key": post("/v1/chat/completions", key="not-a-key"),
}
# Refusals whose status is the contract (the rest is whatever LiteLLM answers the lab's stub).
REFUSALS = {
    "pass-through /openai (off)": 404,
    "pass-through /anthropic (off)": 404,
    "pass-through /gemini (off)": 404,
    "management, client key": 403,
    "management, no key": 401,
    "admin UI": 404,
    "metrics on the API port": 404,
    "invalid key": 401,
    "chat completions (OpenAI)": 200,
    "chat completions, no /v1": 200,
    "model list": 200,
}


@pytest.fixture(scope="module")
def matrix() -> dict[str, dict]:
    answers = dict(zip(ROUTES, lab_requests(list(ROUTES.values()), parallel=4), strict=True))
    rows = logged_rows([a["call_id"] for a in answers.values() if a["call_id"]])
    table = ["| route family | request | status in the lab | logged |", "|---|---|---|---|"]
    for name, answer in answers.items():
        row = rows.get(answer["call_id"] or "")
        answer["row"] = row
        logged = "yes" if row and row["copies"] == 1 and row["status"] == answer["status"] else "NO"
        request = f"{ROUTES[name]['method']} {ROUTES[name]['path']}"
        table.append(f"| {name} | `{request}` | {answer['status']} | {logged} |")
    (LAB_DIR / "route-matrix.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return answers


@pytest.mark.parametrize("name", ROUTES)
def test_every_route_is_answered_and_logged_once_with_its_status(matrix, name):
    answer = matrix[name]
    assert answer["status"] >= 200, answer
    assert answer["call_id"], f"{name}: no x-litellm-call-id, so no log row can be matched: {answer}"
    row = answer["row"]
    assert row is not None, f"{name}: answered {answer['status']} but left no requests row"
    assert row["copies"] == 1
    assert row["status"] == answer["status"]
    assert row["route"] == ROUTES[name]["path"].split("?")[0]


@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_and_core_routes_answer_their_contract_status(matrix, name):
    assert matrix[name]["status"] == REFUSALS[name], matrix[name]["body"]


# LiteLLM 1.106.12's own 500s for features the lab's model cannot offer; logged like any answer.
KNOWN_500 = {
    "rerank": "Unsupported provider: openai (LiteLLM has no OpenAI rerank)",
    "batches": "ModuleNotFoundError (LiteLLM's batches need modules outside litellm[proxy])",
}


def test_no_route_answers_a_client_500_except_litellms_known_ones(matrix):
    assert {name for name, a in matrix.items() if a["status"] >= 500} <= set(KNOWN_500)


def test_refusals_say_why_in_an_openai_error(matrix):
    refusals = ("pass-through /openai (off)", "management, client key", "admin UI", "metrics on the API port")
    for name in refusals:
        error = json.loads(matrix[name]["body"])["error"]
        assert error["message"], name


def test_model_is_recorded_where_the_body_names_one(matrix):
    assert matrix["embeddings"]["row"]["model"] == MODEL
    assert matrix["audio transcription (multipart)"]["row"] is not None


# -- what answers without a key ----------------------------------------------------------------

# Every route that answers a client without a key, and why that is acceptable. Anything else
# must answer 401 (or 404 when it is switched off).
UNAUTHENTICATED = {
    "/health/liveliness": (200, "liveness probe for systemd/load balancers: a fixed string"),
    "/health/liveness": (200, "the same probe, LiteLLM's second spelling"),
    "/health/readiness": (200, "ours: the request log's state (counts only, no keys, no usage)"),
}
CLOSED_WITHOUT_A_KEY = {
    "/": 401,  # Swagger UI off (litellm_gateway_api_docs_enabled); LiteLLM's route there wants a key
    "/redoc": 404,
    "/openapi.json": 404,
    "/docs": 404,
    # The admin UI's helpers (login page, UI config, logo, public model hub) go with the UI.
    "/sso/key/generate": 404,
    "/.well-known/litellm-ui-config": 404,
    "/litellm/.well-known/litellm-ui-config": 404,
    "/get_image": 404,
    "/public/model_hub": 404,
    "/public/providers": 404,
    "/routes": 401,
    "/health": 401,  # LiteLLM's deep health check calls every upstream: key required
    "/v1/models": 401,
    "/key/info": 401,
    "/metrics": 404,  # served by the exporter on its own listener
    "/ui/": 404,  # admin UI off by default
    "/openai/v1/models": 404,  # pass-through off by default
}


@pytest.fixture(scope="module")
def anonymous() -> dict[str, dict]:
    paths = [*UNAUTHENTICATED, *CLOSED_WITHOUT_A_KEY, *DOCUMENTED_OPEN]
    return dict(zip(paths, lab_requests([get(path, key=None) for path in paths], parallel=4), strict=True))


# Open by LiteLLM's design and harmless (no keys, no usage, no configuration values); listed so
# that a LiteLLM upgrade changing them shows up here.
DOCUMENTED_OPEN: dict[str, tuple[int, str]] = {}


@pytest.mark.parametrize("path", [*UNAUTHENTICATED, *DOCUMENTED_OPEN])
def test_routes_open_without_a_key_are_the_listed_ones(anonymous, path):
    expected, _why = {**UNAUTHENTICATED, **DOCUMENTED_OPEN}[path]
    assert anonymous[path]["status"] == expected


@pytest.mark.parametrize("path", CLOSED_WITHOUT_A_KEY)
def test_other_routes_refuse_a_caller_without_a_key(anonymous, path):
    assert anonymous[path]["status"] == CLOSED_WITHOUT_A_KEY[path], anonymous[path]["body"][:300]


def test_litellms_public_routes_are_closed_or_listed():
    """LiteLLM's own list of routes it serves without a key: each is listed above or refused."""
    from litellm.proxy._types import LiteLLMRoutes

    paths = sorted(p for p in LiteLLMRoutes.public_routes.value if "{" not in p)
    answers = lab_requests([get(path, key=None) for path in paths], parallel=4)
    open_ones = {p: a["status"] for p, a in zip(paths, answers, strict=True) if a["status"] < 400}
    assert set(open_ones) <= set(UNAUTHENTICATED) | set(DOCUMENTED_OPEN), open_ones


def test_open_routes_publish_no_key_material_or_usage(anonymous):
    for path in (*UNAUTHENTICATED, *DOCUMENTED_OPEN):
        body = anonymous[path]["body"]
        assert "hashed_api_key" not in body and "sk-" not in body, path


def test_readiness_reports_the_request_log(anonymous):
    report = json.loads(anonymous["/health/readiness"]["body"])
    assert report["status"] == "healthy"
    assert report["request_log"]["database"] == "reachable"
    assert report["request_log"]["dropped_records"] == 0


# -- one client cannot lock the model for the others ------------------------------------------

# How client A makes the shared deployment fail for its own calls (the stub reads the
# directive in the message text), and the status A then receives.
FAILURES = {
    "upstream 404": ("[stub-status=404]", 404),
    "upstream 500": ("[stub-status=500]", 500),
    "upstream 429": ("[stub-status=429]", 429),
    "upstream timeout": (f"[stub-slow-ms={(REQUEST_TIMEOUT_S + 5) * 1000}]", 408),
}
A_CALLS, B_CALLS = 6, 12


def failing_chat(directive: str) -> dict:
    body = {**CHAT, "messages": [{"role": "user", "content": f"client A {directive}"}]}
    return post("/v1/chat/completions", body, key="poc_validation_key")


@pytest.fixture(scope="module", params=FAILURES)
def lockout(request) -> tuple[str, list[dict], list[dict]]:
    directive, _status = FAILURES[request.param]
    # A's failing calls first, B's among and right after them; then B again once A's are done.
    chat_b = post("/v1/chat/completions")
    during = lab_requests([failing_chat(directive)] * A_CALLS + [chat_b] * B_CALLS, parallel=8)
    after = lab_requests([chat_b] * B_CALLS, parallel=4)
    return request.param, during[:A_CALLS], during[A_CALLS:] + after


def test_client_a_gets_the_upstream_failure(lockout):
    kind, a_answers, _ = lockout
    assert [a["status"] for a in a_answers] == [FAILURES[kind][1]] * A_CALLS, a_answers[0]["body"][:300]


def test_client_b_is_never_refused_while_a_fails(lockout):
    kind, _, b_answers = lockout
    failed = [a for a in b_answers if a["status"] != 200]
    assert failed == [], f"{kind}: {len(failed)} of client B's {len(b_answers)} requests failed"


def test_both_clients_are_logged_with_their_statuses(lockout):
    _, a_answers, b_answers = lockout
    answers = a_answers + b_answers
    rows = logged_rows([a["call_id"] for a in answers])
    assert {a["call_id"]: a["status"] for a in answers} == {i: r["status"] for i, r in rows.items()}


def test_a_stuck_upstream_is_answered_408_in_bounded_time(lockout):
    kind, a_answers, _ = lockout
    if kind != "upstream timeout":
        pytest.skip("the timeout case only")
    bound = (1 + NUM_RETRIES) * REQUEST_TIMEOUT_S + 5
    assert max(a["seconds"] for a in a_answers) <= bound


def test_the_router_never_cools_a_single_deployment_down():
    config = docker_exec(GATEWAY_HOST, ["cat", "/etc/litellm/config.yaml"]).stdout
    assert "disable_cooldowns: true" in config
    assert f"request_timeout: {REQUEST_TIMEOUT_S}" in config
