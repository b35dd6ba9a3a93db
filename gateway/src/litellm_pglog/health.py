"""``GET /health/readiness``: the request-log state of this worker, answered by us, not logged.

LiteLLM's own readiness reports its Prisma database, which this gateway does not use ("db":
"Not connected" while logging to PostgreSQL works). This one answers::

    {"status": "healthy" | "degraded" | "unhealthy",
     "request_log": {"database": "reachable" | "unreachable", "queued": 0,
                     "spooled_records": 0, "spool_bytes": 0, "dropped_records": 0},
     "litellm_version": "1.106.12", "pid": 1234}

- healthy (200): the writer runs and PostgreSQL took the last batch; nothing waits in the spool.
- degraded (200): requests are served and every record is kept, but in the spool: PostgreSQL is
  unreachable or the spool still holds records to replay. A load balancer keeps sending traffic.
- unhealthy (503): records are being lost (a drop within the last ``RECENT_DROP_SECONDS``, e.g.
  spool full) or the writer is not running.

``queued`` is the in-memory queue; ``spooled_records`` and ``dropped_records`` count what this
worker spooled and lost since it started; ``spool_bytes`` is what waits in the spool directory
(every worker's files). "reachable" means the last attempt succeeded (or none failed yet): the
probe never opens a database connection itself.
"""

from __future__ import annotations

import os
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from litellm_pglog.runtime import GatewayRuntime
from litellm_pglog.writer import WriterState

# A drop this recent makes the worker unhealthy; afterwards the count alone does not.
RECENT_DROP_SECONDS = 60.0


def _litellm_version() -> str:
    try:
        return version("litellm")
    except PackageNotFoundError:
        return "unknown"


LITELLM_VERSION = _litellm_version()


class DropWatch:
    """Remembers when the dropped count last grew, as seen by the probes."""

    def __init__(self) -> None:
        self._count = 0
        self._grew_at: float | None = None

    def dropping(self, count: int, now: float) -> bool:
        if count > self._count:
            self._count, self._grew_at = count, now
        return self._grew_at is not None and now - self._grew_at < RECENT_DROP_SECONDS


def readiness(state: WriterState | None, dropping: bool) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for a writer state (None: no writer could be built)."""
    if state is None:
        body = {"status": "unhealthy", "request_log": {"database": "unknown", "writer": "not running"}}
        return 503, _with_process(body)
    if not state.running or dropping:
        status = "unhealthy"
    elif state.database_down or state.spool_bytes > 0:
        status = "degraded"
    else:
        status = "healthy"
    request_log = {
        "database": "unreachable" if state.database_down else "reachable",
        "queued": state.queued,
        "spooled_records": state.spooled_records,
        "spool_bytes": state.spool_bytes,
        "dropped_records": state.dropped_records,
    }
    body = {"status": status, "request_log": request_log}
    return (503 if status == "unhealthy" else 200), _with_process(body)


def _with_process(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "litellm_version": LITELLM_VERSION, "pid": os.getpid()}


class ReadinessEndpoint:
    """The ASGI app the middleware hands /health/readiness to."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self.runtime = runtime
        self.drops = DropWatch()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            state = self.runtime.writer.state()
        except Exception:  # e.g. LITELLM_DB_URL missing: the same error failed the startup
            state = None
        dropping = state is not None and self.drops.dropping(state.dropped_records, time.monotonic())
        status, body = readiness(state, dropping)
        response = JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})
        await response(scope, receive, send)
