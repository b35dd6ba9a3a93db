"""JSON for the writer's bulk paths: orjson when it is installed (litellm[proxy] brings it), else
the standard library, with the same results.

Only where the writer handles records by the thousand: spool lines read back by a replay and the
batch parameter of the upsert. Spool lines are still WRITTEN by the standard library (see
``spool.encode_line``): pure ASCII whatever they hold, which orjson cannot promise.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - the gateway's venv has it
    orjson = None


def _isoformat(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# One encoder for every batch: json.dumps() with any option builds a new one per call.
_BATCH_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_isoformat)


def loads(line: bytes) -> Any:
    """Parse one JSON document; ValueError when it is none."""
    if orjson is not None:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass  # NaN, lone surrogates: valid for the standard library, which wrote the line
    return json.loads(line)


def dumps_rows(rows: list[dict[str, Any]]) -> str:
    """Rows of str/int/finite float/bool/None/aware datetime values as a JSON array (UTF-8 text)."""
    if orjson is not None:
        return orjson.dumps(rows).decode()
    return _BATCH_ENCODER.encode(rows)
