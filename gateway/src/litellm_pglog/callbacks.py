"""LiteLLM callback that reports token usage per request, keyed by LiteLLM's call id.

The ASGI middleware already logs every exchange with the status the client received; this
callback only fills in what the HTTP bytes may not show: token counts of streamed responses
when the client did not ask for ``stream_options.include_usage`` (LiteLLM counts them anyway).
The writer merges this partial record with the middleware's by ``request_id``.

LiteLLM loads ``usage_logger`` by name, so it finds the writer through the process's runtime
(``runtime.py``), looked up per call: the entry point installs it after this module may have
been imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from litellm.constants import LITTELM_INTERNAL_HEALTH_SERVICE_ACCOUNT_NAME
from litellm.integrations.custom_logger import CustomLogger

from litellm_pglog.records import LogRecord
from litellm_pglog.routes import HEALTH_PROBE_PATHS
from litellm_pglog.runtime import GatewayRuntime, current

logger = logging.getLogger(__name__)
PASSTHROUGH_CALL_TYPE = "pass_through_endpoint"


def is_client_traffic(payload: dict[str, Any]) -> bool:
    """False for LiteLLM's own health checks and for requests the middleware does not log.

    The middleware logs every route but the probes (whose handlers fire no callback anyway):
    a usage record for a route it skipped would be a row without its HTTP half.
    """
    metadata = payload.get("metadata") or {}
    if metadata.get("user_api_key_alias") == LITTELM_INTERNAL_HEALTH_SERVICE_ACCOUNT_NAME:
        return False
    if LITTELM_INTERNAL_HEALTH_SERVICE_ACCOUNT_NAME in (payload.get("request_tags") or ()):
        return False
    route = metadata.get("user_api_key_request_route")
    return isinstance(route, str) and route.rstrip("/") not in HEALTH_PROBE_PATHS


def usage_record(kwargs: dict[str, Any]) -> LogRecord | None:
    payload = kwargs.get("standard_logging_object")
    request_id = kwargs.get("litellm_call_id")
    if not isinstance(payload, dict) or not request_id or not is_client_traffic(payload):
        return None
    if PASSTHROUGH_CALL_TYPE in (kwargs.get("call_type"), payload.get("call_type")):
        # Pass-through routes log under an id LiteLLM makes up, not the middleware's: a usage
        # record would be a second row. The middleware reads their usage from the answer.
        return None
    # No created_at: the writer reads it from the middleware's UUIDv7 request id, so both
    # records of the request carry the same partition key and merge into one row.
    return LogRecord(
        request_id=request_id,
        model=payload.get("model_group") or payload.get("model") or None,
        prompt_tokens=payload.get("prompt_tokens"),
        completion_tokens=payload.get("completion_tokens"),
        total_tokens=payload.get("total_tokens"),
    )


class UsageLogger(CustomLogger):
    def __init__(self, runtime: Callable[[], GatewayRuntime] = current) -> None:
        super().__init__()
        self._runtime = runtime

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time) -> None:
        try:
            runtime = self._runtime()
            if not runtime.settings.enabled:  # LITELLM_PGLOG_ENABLED=false: no writer at all
                return
            record = usage_record(kwargs)
            if record is not None:
                runtime.writer.submit(record)
        except Exception:
            logger.warning("litellm_pglog: could not log token usage", exc_info=True)


usage_logger = UsageLogger()
