"""A request's usage half, dropped on the host when its HTTP half already holds the same values.

Each answered request can give the writer two records: the middleware's (the HTTP exchange,
with the model, stream flag and token counts it read from the answer) and the LiteLLM usage
callback's (model and token counts). For a non-streamed answer, and a stream that reported its
usage, the middleware has the counts already, and LiteLLM runs its success callbacks after the
answer was sent: the callback's record then repeats values the writer holds. Submitting it cost
a second clean, JSON line, journal write, queue entry and COPY row per request, about a fifth
of the logging code's CPU on a gateway worker (``scripts/lab-profile``).

``UsageHalves`` remembers the usage of the last records submitted with token counts; a usage
half that repeats one exactly is counted (``pglog_records_merged_total``) and not submitted.
Whatever differs (the callback came first, other counts, another model name, a streamed answer
without usage) is submitted as before and merged by the writer, so the row is the same either
way: the writer's merge keeps later non-NULL values, and equal values change nothing.
"""

from __future__ import annotations

import dataclasses
import operator
import threading

from litellm_pglog.records import LogRecord

# Enough for the callbacks of ~20 s of one worker's requests at 100/s; each entry ~250 bytes.
REMEMBERED_MAX = 2048

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
UsageValues = tuple[str | None, int | None, int | None, int | None]
usage_values = operator.attrgetter("model", *TOKEN_FIELDS)  # record -> UsageValues
# What a usage half leaves empty: every field but its key, its time and the usage itself, so a
# field added to LogRecord later counts as more than usage without a change here.
NOT_USAGE_FIELDS = tuple(
    field.name
    for field in dataclasses.fields(LogRecord)
    if field.name not in ("request_id", "created_at", "model", *TOKEN_FIELDS)
)


def is_usage_half(record: LogRecord) -> bool:
    """A record that holds nothing but a model and token counts (the usage callback's)."""
    return all(getattr(record, name) is None for name in NOT_USAGE_FIELDS)


class UsageHalves:
    """The token usage of recently submitted records, by request id (oldest forgotten first)."""

    def __init__(self, capacity: int = REMEMBERED_MAX) -> None:
        self._capacity = capacity
        self._usage: dict[str, UsageValues] = {}
        self._lock = threading.Lock()  # submit() may be called from any thread

    def remember(self, record: LogRecord) -> None:
        """Note the usage of a submitted record that has token counts and is no usage half."""
        usage = usage_values(record)
        if all(count is None for count in usage[1:]) or is_usage_half(record):
            return
        with self._lock:
            self._usage[record.request_id] = usage
            if len(self._usage) > self._capacity:
                del self._usage[next(iter(self._usage))]  # dicts keep insertion order

    def repeats(self, record: LogRecord) -> bool:
        """True for a usage half whose values a submitted record of the request already holds."""
        if not is_usage_half(record):
            return False
        with self._lock:
            held = self._usage.pop(record.request_id, None)
        return held is not None and held == usage_values(record)

    def __len__(self) -> int:
        return len(self._usage)
