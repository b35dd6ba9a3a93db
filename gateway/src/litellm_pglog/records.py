"""The one record type that travels from the HTTP layer to the database writer.

A record is a partial view of one client request, keyed by ``request_id``.
Several records for the same request (the HTTP exchange seen by the ASGI
middleware, the token usage seen by the LiteLLM callback) are merged by the
writer with an upsert, so order of arrival and replays do not matter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class LogRecord:
    request_id: str
    created_at: datetime | None = None
    route: str | None = None
    method: str | None = None
    model: str | None = None
    status_code: int | None = None
    user_id: str | None = None
    api_key: str | None = None  # the key's alias or a hash, never the key
    stream: bool | None = None
    error_type: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.created_at is not None:
            data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> LogRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("created_at"):
            values["created_at"] = datetime.fromisoformat(values["created_at"])
        return cls(**values)
