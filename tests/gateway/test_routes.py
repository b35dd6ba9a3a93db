"""Log by default, exclude by list: the route policy alone, then every route family through a real proxy.

The proxy of this module enables the ``openai`` pass-through family only (pointed at the stub, so
no request leaves the machine) and keeps every other default: the admin UI off, /metrics refused.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from litellm.proxy._types import ProxyException
from litellm_pglog import runtime as runtime_module
from litellm_pglog.auth import user_api_key_auth
from litellm_pglog.keys import Identity, public_key_id, sha256_hex
from litellm_pglog.middleware import RequestLogMiddleware, caller_refusal, wants_json_parse
from litellm_pglog.models import Request
from litellm_pglog.routes import LiteLLMSurface, RouteClass, RoutePolicy, first_segment, static_prefix
from litellm_pglog.runtime import GatewayRuntime
from litellm_pglog.settings import Settings, SettingsError, load_settings
from proxy_harness import CHAT_MODEL, Gateway, GatewayKeys, LogReader, Stub, chat_body
from starlette.requests import Request as StarletteRequest

# ---- the policy as a pure function ---------------------------------------------------------------

SURFACE = LiteLLMSurface(
    passthrough_families=frozenset({"openai", "anthropic", "gemini", "vertex_ai"}),
    served_under_families=(re.compile(r"^/openai/deployments/(?P<model>.*)/chat/completions$"),),
    served_prefixes_under_families=("/openai/v1/realtime",),
    ui_static_prefixes=("/_next", "/litellm-asset-prefix/_next", "/ui"),
    ui_helper_prefixes=("/login", "/sso/key/generate"),
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", RouteClass.LOGGED),
        ("/v1/messages", RouteClass.LOGGED),
        ("/v1/files/file-abc/content", RouteClass.LOGGED),
        ("/no/such/route", RouteClass.LOGGED),
        ("/", RouteClass.LOGGED),
        ("/health", RouteClass.LOGGED),  # calls every model: logged, unlike the probes
        ("/health/liveliness", RouteClass.UNLOGGED),
        ("/health/liveness/", RouteClass.UNLOGGED),
        ("/health/readiness", RouteClass.READINESS),
        ("/metrics", RouteClass.METRICS),
        ("/metrics/", RouteClass.METRICS),
        ("/metricsfoo", RouteClass.LOGGED),
        ("/anthropic/v1/messages", RouteClass.PASSTHROUGH_DISABLED),
        ("/gemini/v1beta/models/x:generateContent", RouteClass.PASSTHROUGH_DISABLED),
        ("/vertex_ai", RouteClass.PASSTHROUGH_DISABLED),
        ("/openai/v1/chat/completions", RouteClass.LOGGED),  # enabled below
        ("/openai/deployments/gpt-4o/chat/completions", RouteClass.LOGGED),  # model list, not pass-through
        ("/openai/v1/realtime/calls", RouteClass.LOGGED),
        ("/anthropicx/v1", RouteClass.LOGGED),
        ("/ui", RouteClass.UI_DISABLED),
        ("/ui/login/", RouteClass.UI_DISABLED),
        ("/_next/static/app.js", RouteClass.UI_DISABLED),
        ("/sso/key/generate", RouteClass.UI_DISABLED),
        ("/login", RouteClass.UI_DISABLED),
        ("/key/generate", RouteClass.LOGGED),  # refused by custom_auth for client keys, still logged
    ],
)
def test_paths_are_classified(path, expected):
    assert RoutePolicy(SURFACE, enabled_families={"openai"}).classify(path) is expected


def test_enabled_ui_serves_its_assets_unlogged_and_its_helpers_logged():
    policy = RoutePolicy(SURFACE, ui_enabled=True)
    assert policy.classify("/ui/") is RouteClass.UNLOGGED
    assert policy.classify("/litellm-asset-prefix/_next/x.css") is RouteClass.UNLOGGED
    assert policy.classify("/login") is RouteClass.LOGGED
    assert policy.classify("/openai/v1/chat/completions") is RouteClass.PASSTHROUGH_DISABLED


def test_classification_is_cached_per_path():
    policy = RoutePolicy(SURFACE)
    for _ in range(3):
        policy.classify("/v1/chat/completions")
    info = policy.classify.cache_info()
    assert (info.hits, info.misses) == (2, 1)


def test_disabled_family_websockets_are_closed_before_accept():
    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def receive():
        return {"type": "websocket.connect"}

    sent = []

    async def send(message):
        sent.append(message)

    middleware = RequestLogMiddleware(app, GatewayRuntime(Settings()), RoutePolicy(SURFACE))
    for path in ("/vertex_ai/live", "/openai/v1/realtime"):
        asyncio.run(middleware({"type": "websocket", "path": path}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert reached == ["/openai/v1/realtime"]  # the model list's realtime route, not pass-through


@pytest.mark.parametrize(
    ("route", "caller", "status"),
    [
        ("/v1/chat/completions", "client", None),
        ("/v1/files/file-1/content", "client", None),
        ("/model/info", "client", None),
        ("/key/generate", "client", 403),
        ("/health", "client", 403),
        ("/key/generate", "master", None),
        ("/no/such/route", "client", None),  # LiteLLM's 404
        ("/config/yaml", "client", None),  # not a management route by LiteLLM's lists: auth.py's 403
        ("/key/generate", "unknown", 401),
        ("/v1/chat/completions", "unknown", 401),
        ("/public/model_hub", "unknown", None),  # LiteLLM's to decide: it may need no key
    ],
)
def test_callers_are_refused_before_litellm_where_auth_py_would_refuse_them(route, caller, status):
    identities = {
        "client": Identity("TEST_KEY", "u", "a" * 64),
        "master": Identity("master", None, "b" * 64, is_master=True),
    }
    refusal = caller_refusal(route, identities.get(caller))
    assert (refusal.status if refusal else None) == status


def test_auth_hook_gives_a_public_key_id_and_refuses_admin_routes(tmp_path):
    keys = GatewayKeys()
    (tmp_path / "keys.json").write_text(keys.keys_file_content())
    settings = Settings(keys_file=tmp_path / "keys.json", master_key=keys.master_key)
    previous = runtime_module.current()
    runtime_module.install(GatewayRuntime(settings))
    try:
        chat = asyncio.run(user_api_key_auth(http_request("/v1/chat/completions"), keys.test_key))
        with pytest.raises(ProxyException) as refused:
            asyncio.run(user_api_key_auth(http_request("/key/generate"), keys.test_key))
        master = asyncio.run(user_api_key_auth(http_request("/key/generate"), keys.master_key))
    finally:
        runtime_module.install(previous)
    assert chat.api_key == public_key_id(sha256_hex(keys.test_key), keys.master_key)
    assert chat.key_alias == "TEST_KEY"
    assert refused.value.code == "403"
    assert master.api_key.startswith("kid-")


def http_request(path: str) -> StarletteRequest:
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    return StarletteRequest(scope)


def test_path_helpers():
    assert first_segment("/eu.assemblyai/v2/x") == "eu.assemblyai"
    assert first_segment("/") == ""
    assert static_prefix("/openai/{endpoint:path}") == "/openai"
    assert static_prefix("/sso/cli/poll/{key_id}") == "/sso/cli/poll"


@pytest.mark.parametrize(
    ("content_type", "body", "parsed"),
    [
        ("application/json", b"{", True),
        ("application/json; charset=utf-8", b"{}", True),
        ("application/vnd.api+json", b"{}", True),
        (None, b'  {"model": "x"}', True),
        (None, b"[1]", True),
        (None, b"model=x", False),
        ("multipart/form-data; boundary=x", b"--x\r\n", False),
        ("application/x-www-form-urlencoded", b"model=x", False),
        ("text/plain", b"{", False),
    ],
)
def test_only_json_bodies_are_parsed(content_type, body, parsed):
    assert wants_json_parse(content_type, body) is parsed


def test_route_settings_are_read_and_checked():
    settings = load_settings(
        {
            "LITELLM_PGLOG_PASSTHROUGH": "openai, anthropic,,eu.assemblyai",
            "LITELLM_PGLOG_UI_ENABLED": "true",
            "LITELLM_PGLOG_METRICS_ON_API_PORT": "yes",
        }
    )
    assert settings.passthrough == {"openai", "anthropic", "eu.assemblyai"}
    assert settings.ui_enabled and settings.metrics_on_api_port
    defaults = load_settings({})
    assert not (defaults.passthrough or defaults.ui_enabled or defaults.metrics_on_api_port)
    with pytest.raises(SettingsError, match="LITELLM_PGLOG_PASSTHROUGH: 'OpenAI' is not a family name"):
        load_settings({"LITELLM_PGLOG_PASSTHROUGH": "OpenAI"})
    with pytest.raises(SettingsError, match="LITELLM_PGLOG_UI_ENABLED"):
        load_settings({"LITELLM_PGLOG_UI_ENABLED": "maybe"})


def test_public_key_id_is_short_stable_and_not_the_keys_file_hash():
    key_hash = sha256_hex("tk-some-client-key")
    kid = public_key_id(key_hash, "mk-master")
    assert re.fullmatch(r"kid-[0-9a-f]{16}", kid)
    assert kid == public_key_id(key_hash, "mk-master")
    assert kid != public_key_id(key_hash, "mk-other-deployment")
    assert key_hash[:16] not in kid


# ---- every route family through a real proxy ------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, database_url) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway-routes")
    stub = Stub(workdir).start()
    gateway = Gateway(
        workdir,
        stub,
        database_url,
        extra_env={
            "LITELLM_PGLOG_PASSTHROUGH": "openai",
            "OPENAI_API_BASE": f"http://127.0.0.1:{stub.port}",  # the openai pass-through's target
            "LITELLM_PGLOG_METRICS_ON_API_PORT": "false",
        },
        # Upstream 404s of the families the stub lacks must not put the model in cooldown.
        config_overrides={"router_settings": {"disable_cooldowns": True}},
    )
    try:
        yield gateway.start()
    finally:
        gateway.stop()
        stub.stop()


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    status: int
    key: str | None = "test_key"  # attribute of GatewayKeys, or None for no key
    json: dict | None = None
    files: dict | None = None
    data: dict | None = None
    error_code: str | None = None  # for the middleware's own refusals


AUDIO = {"file": ("hello.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav")}
MESSAGES = [{"role": "user", "content": "hi"}]

MATRIX = {
    "chat": Call("POST", "/v1/chat/completions", 200, json=chat_body()),
    "completions": Call("POST", "/v1/completions", 200, json={"model": CHAT_MODEL, "prompt": "hi"}),
    "embeddings": Call("POST", "/v1/embeddings", 200, json={"model": CHAT_MODEL, "input": "hi"}),
    "models": Call("GET", "/v1/models", 200),
    # The stub serves chat, completions, embeddings, responses and models only: the other families reach it
    # and get its 404 (or LiteLLM's own error); what matters is one row with that status.
    "responses": Call("POST", "/v1/responses", 200, json={"model": CHAT_MODEL, "input": "hi"}),
    "messages": Call(
        "POST", "/v1/messages", 200, json={"model": CHAT_MODEL, "max_tokens": 8, "messages": MESSAGES}
    ),
    "moderations": Call("POST", "/v1/moderations", 404, json={"model": CHAT_MODEL, "input": "hi"}),
    "images": Call("POST", "/v1/images/generations", 404, json={"model": CHAT_MODEL, "prompt": "a cat"}),
    "audio-multipart": Call("POST", "/v1/audio/transcriptions", 400, files=AUDIO, data={"model": CHAT_MODEL}),
    "rerank": Call("POST", "/v1/rerank", 500, json={"model": CHAT_MODEL, "query": "q", "documents": ["a"]}),
    "files-multipart": Call("POST", "/v1/files", 400, files=AUDIO, data={"purpose": "batch"}),
    "batches": Call("GET", "/v1/batches", 500),
    "unknown-path": Call("GET", "/no/such/route", 404),
    "passthrough-disabled": Call(
        "POST", "/anthropic/v1/messages", 404, json={"model": "claude"}, error_code="passthrough_disabled"
    ),
    "passthrough-enabled": Call("POST", "/openai/v1/chat/completions", 200, json=chat_body()),
    "admin-client-key": Call("POST", "/key/generate", 403, json={}),
    "admin-no-key": Call("POST", "/key/generate", 401, key=None, json={}),
    "admin-unknown-key": Call("POST", "/key/generate", 401, key="not-a-key", json={}),
    "ui": Call("GET", "/ui/", 404, key=None, error_code="ui_disabled"),
    "metrics": Call("GET", "/metrics", 404, key=None, error_code="metrics_on_monitoring_listener"),
}


def send(gateway: Gateway, call: Call) -> httpx.Response:
    key = getattr(gateway.keys, call.key, call.key) if call.key else None
    with gateway.client(key) as client:
        return client.request(call.method, call.path, json=call.json, files=call.files, data=call.data)


@pytest.mark.parametrize("name", list(MATRIX))
def test_each_route_family_is_answered_and_logged_once(gateway, logged: LogReader, name):
    call = MATRIX[name]
    response = send(gateway, call)
    assert response.status_code == call.status, response.text[:500]
    if call.error_code:
        assert response.json()["error"]["code"] == call.error_code
    assert "not valid JSON" not in response.text  # multipart bodies reach LiteLLM untouched

    request_id = response.headers["x-litellm-call-id"]
    row = logged.wait_for([request_id])[request_id]
    assert logged.count_per_request_id([request_id]) == {request_id: 1}
    assert (row["route"], row["method"], row["status_code"]) == (call.path, call.method, call.status)
    assert row["model"] == (call.json or {}).get("model")  # JSON bodies only, multipart not parsed
    if call.key:
        assert row["api_key"] == ("TEST_KEY" if call.key == "test_key" else "invalid")


def test_invalid_json_is_still_a_400_on_any_route(gateway, logged):
    with gateway.client(gateway.keys.test_key) as client:
        body = b'{"model": "x",\n "input": ['
        response = client.post("/v1/responses", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "line 2 column" in response.json()["error"]["message"]
    request_id = response.headers["x-litellm-call-id"]
    assert logged.wait_for([request_id])[request_id]["status_code"] == 400


def test_probes_and_readiness_are_not_logged(gateway, logged):
    paths = ("/health/liveliness", "/health/liveness", "/health/readiness")
    with gateway.client() as client:
        statuses = {path: client.get(path).status_code for path in paths}
        marker = client.get("/v1/models")  # logged (401): its row proves the writer caught up
    assert statuses["/health/liveliness"] == 200 and statuses["/health/readiness"] == 200
    logged.wait_for([marker.headers["x-litellm-call-id"]])
    assert logged.count(Request.route.in_(paths)) == 0


def test_master_key_keeps_litellm_behaviour_on_admin_routes(gateway, logged):
    with gateway.client(gateway.keys.master_key) as client:
        response = client.get("/health")
    assert response.status_code == 200
    request_id = response.headers["x-litellm-call-id"]
    assert logged.wait_for([request_id])[request_id]["api_key"] == "master"


def test_refused_keys_are_logged_with_the_client_address_and_never_the_key(gateway):
    unknown = "sk-refused-key-" + "x" * 20
    assert (
        send(gateway, Call("POST", "/v1/chat/completions", 401, key=unknown, json=chat_body())).status_code
        == 401
    )
    assert send(gateway, Call("POST", "/key/generate", 403, json={})).status_code == 403
    deadline = time.monotonic() + 10
    while "refused key TEST_KEY" not in gateway.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = gateway.log_text()
    assert "refused unknown key from 127.0.0.1: POST '/v1/chat/completions' -> 401" in log
    assert "refused key TEST_KEY from 127.0.0.1: POST '/key/generate' -> 403" in log
    assert unknown not in log and gateway.keys.test_key not in log
