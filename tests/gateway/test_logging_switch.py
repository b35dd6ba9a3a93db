"""LITELLM_PGLOG_ENABLED=false turns the package into a pass-through (the load test's baseline)."""

from __future__ import annotations

import asyncio

import pytest
from litellm_pglog import callbacks, middleware
from litellm_pglog.runtime import GatewayRuntime
from litellm_pglog.settings import Settings, SettingsError, load_settings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", True), ("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("off", False)],
)
def test_enabled_flag_is_parsed(raw, expected):
    assert load_settings({"LITELLM_PGLOG_ENABLED": raw}).enabled is expected


def test_enabled_flag_rejects_other_words():
    with pytest.raises(SettingsError, match="LITELLM_PGLOG_ENABLED"):
        load_settings({"LITELLM_PGLOG_ENABLED": "maybe"})


class NoWriterRuntime(GatewayRuntime):
    """Logging off; any attempt to reach the log writer or the key store fails the test."""

    def __init__(self) -> None:
        super().__init__(Settings(enabled=False))

    @property
    def writer(self):
        raise AssertionError("the log writer must not be used when logging is off")

    def start(self) -> None:
        raise AssertionError("nothing is started when logging is off")


def test_disabled_middleware_passes_requests_and_lifespan_through_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    sent = []

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        sent.append(message)

    http_scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    wrapped = middleware.RequestLogMiddleware(app, NoWriterRuntime())
    asyncio.run(wrapped({"type": "lifespan"}, receive, send))
    asyncio.run(wrapped(http_scope, receive, send))

    assert seen[1] is http_scope  # no call-id header added, nothing read or replaced
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "http.response.start",
        "http.response.body",
    ]
    assert sent[1]["headers"] == []


class RecordingWriter:
    def __init__(self) -> None:
        self.records = []

    def submit(self, record) -> None:
        self.records.append(record)


class RecordingRuntime(GatewayRuntime):
    def __init__(self, enabled: bool) -> None:
        super().__init__(Settings(enabled=enabled))
        self.recorder = RecordingWriter()

    @property
    def writer(self):
        return self.recorder


@pytest.mark.parametrize(("enabled", "submitted"), [(True, 1), (False, 0)])
def test_usage_callback_submits_only_when_enabled(enabled, submitted):
    runtime = RecordingRuntime(enabled)
    kwargs = {
        "litellm_call_id": "id-1",
        "standard_logging_object": {
            "model_group": "gpt-4o-mini",
            "total_tokens": 3,
            "metadata": {"user_api_key_request_route": "/v1/chat/completions"},
        },
    }
    asyncio.run(callbacks.UsageLogger(lambda: runtime).async_log_success_event(kwargs, None, None, None))
    assert len(runtime.recorder.records) == submitted
