"""The one record type that travels from the HTTP layer to the database writer.

A record is a partial view of one client request, keyed by ``request_id``.
Several records for the same request (the HTTP exchange seen by the ASGI
middleware, the token usage seen by the LiteLLM callback) are merged by the
writer with an upsert, so order of arrival and replays do not matter.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

UUID7_VERSION = 7


def new_request_id(unix_ms: int | None = None) -> tuple[str, datetime]:
    """A UUIDv7 (RFC 9562) and the creation time it embeds, from one clock reading.

    The time is the partition key of the log tables: every record of one request must carry
    the same, and a record that knows only the request id (the LiteLLM callback's) recovers
    it from the id (see ``request_id_time``). Millisecond precision, like the id.
    """
    if unix_ms is None:
        unix_ms = time.time_ns() // 1_000_000
    # 48 bits of milliseconds, then version, 74 random bits and the RFC 4122 variant.
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80 | random_bits & ~(0xF << 76) & ~(0x3 << 62)
    value |= UUID7_VERSION << 76 | 0x2 << 62
    digits = f"{value:032x}"  # str(uuid.UUID(int=value)), without the UUID object
    request_id = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    return request_id, datetime.fromtimestamp(unix_ms / 1000, UTC)


# The canonical text of a UUIDv7 with the RFC 9562 variant: what new_request_id() makes.
UUID7_TEXT = re.compile(
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)


@functools.lru_cache(maxsize=4096)
def request_id_time(request_id: str) -> datetime | None:
    """The creation time a UUIDv7 request id embeds; None for any other id (uuid4, made-up).

    Runs for every record (submit() and replays): one regular expression, no UUID object. Cached:
    the two records of a request (HTTP half, usage half) ask for the same id one after the other.
    """
    if len(request_id) != 36 or not UUID7_TEXT.fullmatch(request_id):
        return None
    unix_ms = int(request_id[:8] + request_id[9:13], 16)  # the first 48 bits
    return datetime.fromtimestamp(unix_ms / 1000, UTC)


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
