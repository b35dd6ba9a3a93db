"""JSON for the writer's bulk paths: orjson when it is installed (litellm[proxy] brings it), else
the standard library, with the same results.

Where the writer handles records by the thousand or once per request: journal and spool lines
of cleaned records (``spool.encode_row``, submit() runs it), lines read back by a replay, and
the request and response bodies the middleware reads a model, usage or an error from.
``spool.encode_line`` (records not cleaned yet: lone surrogates, NaN) stays with the standard
library, pure ASCII whatever a record holds.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - the gateway's venv has it
    orjson = None


def loads(line: bytes) -> Any:
    """Parse one JSON document; ValueError when it is none."""
    if orjson is not None:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass  # NaN, lone surrogates, UTF-16, big integers: the standard library decides
    return json.loads(line)


def dumps_line(row: dict[str, Any]) -> bytes | None:
    """One row of str/int/finite float/bool/None/aware datetime values as a JSON line (UTF-8);
    None when orjson is missing or refuses it (the caller then uses the standard library)."""
    if orjson is None:
        return None
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a value of another type
        return None
