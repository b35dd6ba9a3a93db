"""Optional modules LiteLLM imports on every request, blocked once when they cannot load.

LiteLLM imports some optional integrations inside per-request code, in ``try/except`` blocks.
Python does not remember a failed import: every request finds the module again, loads its
bytecode and runs it up to the failing line, then LiteLLM's ``except`` swallows the error. An
entry of ``None`` in ``sys.modules`` is Python's documented way to make an import fail at once
(``ModuleNotFoundError``, the same exception type); ``block_unloadable`` puts it there for each
module below that cannot be imported at startup, and leaves importable ones alone.

- ``litellm.integrations.otel.logger``: LiteLLM's OpenTelemetry V2 needs ``opentelemetry-sdk``,
  which the gateway does not install; ``user_api_key_auth`` (``_seed_request_destinations``)
  imported it on every request. 5.3 % of the gateway's samples in the lab profile; 0.15 ms of
  CPU per attempt in a warm process; blocked: 0.001 ms.
- ``prisma``: the runbook replaces LiteLLM's Prisma database; the prometheus callback's error
  path (``is_exception_related_to_db``) imported ``prisma.errors`` on every request (0.5 %).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterable

log = logging.getLogger("litellm_pglog")

PER_REQUEST_OPTIONAL_MODULES = ("litellm.integrations.otel.logger", "prisma")


def block_unloadable(names: Iterable[str] = PER_REQUEST_OPTIONAL_MODULES) -> list[str]:
    """Try each module once; block those that raise ImportError. Returns the blocked names."""
    blocked = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            sys.modules[name] = None  # type: ignore[assignment]  # None: "fail at once"
            blocked.append(name)
            log.info("optional module %s cannot be imported (%s): later imports fail at once", name, exc)
    return blocked
