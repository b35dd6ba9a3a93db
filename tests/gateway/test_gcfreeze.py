"""FreezeAfterStartup: the startup heap leaves the collector's full passes when the app has started."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from litellm_pglog.gcfreeze import FreezeAfterStartup


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test run keeps the collector as it was


def lifespan_app(seen_frozen: list[int]):
    async def app(scope, receive, send):
        assert (await receive())["type"] == "lifespan.startup"
        seen_frozen.append(gc.get_freeze_count())  # during the app's startup: nothing frozen yet
        await send({"type": "lifespan.startup.complete"})

    return app


def test_the_heap_is_frozen_before_the_server_hears_the_startup_is_complete():
    during_startup: list[int] = []
    frozen_when_sent: list[tuple[str, int]] = []

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        frozen_when_sent.append((message["type"], gc.get_freeze_count()))

    asyncio.run(FreezeAfterStartup(lifespan_app(during_startup))({"type": "lifespan"}, receive, send))

    assert during_startup == [0]
    [(kind, frozen)] = frozen_when_sent
    assert kind == "lifespan.startup.complete" and frozen > 1000  # this test process's own heap


def test_requests_reach_the_app_untouched():
    calls = []

    async def app(scope, receive, send):
        calls.append((scope, receive, send))

    async def receive():
        return {}

    async def send(message):
        return None

    scope = {"type": "http", "path": "/v1/models"}
    asyncio.run(FreezeAfterStartup(app)(scope, receive, send))

    assert calls == [(scope, receive, send)] and gc.get_freeze_count() == 0
