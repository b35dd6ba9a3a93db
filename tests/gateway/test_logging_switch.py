"""LITELLM_PGLOG_ENABLED=false turns the package into a pass-through (the load test's baseline)."""

from __future__ import annotations

import asyncio

import pytest
from litellm_pglog import callbacks, middleware
from litellm_pglog.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", True), ("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("off", False)],
)
def test_enabled_flag_is_parsed(raw, expected):
    assert load_settings({"LITELLM_PGLOG_ENABLED": raw}).enabled is expected


def test_enabled_flag_rejects_other_words():
    with pytest.raises(SettingsError, match="LITELLM_PGLOG_ENABLED"):
        load_settings({"LITELLM_PGLOG_ENABLED": "maybe"})


@pytest.fixture
def no_writer(monkeypatch):
    """Any attempt to reach the log writer fails the test."""

    def forbidden():
        raise AssertionError("the log writer must not be used when logging is off")

    monkeypatch.setattr(middleware, "get_writer", forbidden)
    monkeypatch.setattr(callbacks, "get_writer", forbidden)
    monkeypatch.setenv("LITELLM_PGLOG_ENABLED", "false")


def test_disabled_middleware_passes_requests_and_lifespan_through_untouched(no_writer):
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
    wrapped = middleware.RequestLogMiddleware(app)
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


@pytest.mark.parametrize(("enabled", "submitted"), [("true", 1), ("false", 0)])
def test_usage_callback_submits_only_when_enabled(monkeypatch, enabled, submitted):
    writer = RecordingWriter()
    monkeypatch.setattr(callbacks, "get_writer", lambda: writer)
    monkeypatch.setenv("LITELLM_PGLOG_ENABLED", enabled)
    kwargs = {
        "litellm_call_id": "id-1",
        "standard_logging_object": {
            "model_group": "gpt-4o-mini",
            "total_tokens": 3,
            "metadata": {"user_api_key_request_route": "/v1/chat/completions"},
        },
    }
    asyncio.run(callbacks.UsageLogger().async_log_success_event(kwargs, None, None, None))
    assert len(writer.records) == submitted
