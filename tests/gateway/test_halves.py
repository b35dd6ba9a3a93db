"""UsageHalves: which usage records repeat what a submitted record of the request holds."""

from __future__ import annotations

import pytest
from litellm_pglog.halves import UsageHalves
from litellm_pglog.records import LogRecord

USAGE = {"model": "gpt-4o-mini", "prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}


def answered(request_id: str, **usage) -> LogRecord:
    http = {"route": "/v1/chat/completions", "method": "POST", "status_code": 200}
    return LogRecord(request_id=request_id, **http, **usage)


def usage(request_id: str, **changes) -> LogRecord:
    return LogRecord(request_id=request_id, **USAGE | changes)


def test_a_usage_half_that_repeats_the_answer_is_recognised_once():
    halves = UsageHalves()
    halves.remember(answered("a", **USAGE))

    assert halves.repeats(usage("a"))
    assert not halves.repeats(usage("a"))  # forgotten once matched: a second copy is submitted
    assert len(halves) == 0


@pytest.mark.parametrize(
    "changes",
    [{"total_tokens": 34}, {"prompt_tokens": None}, {"model": "gpt-4o"}, {"model": None}],
    ids=["other-total", "missing-count", "other-model", "no-model"],
)
def test_a_usage_half_with_other_values_is_not_a_repeat(changes):
    halves = UsageHalves()
    halves.remember(answered("a", **USAGE))

    assert not halves.repeats(usage("a", **changes))


def test_only_records_with_token_counts_that_are_no_usage_half_are_remembered():
    halves = UsageHalves()
    halves.remember(answered("no-usage", model="gpt-4o-mini"))  # a stream without usage
    halves.remember(usage("usage-first"))  # the callback came first: nothing to compare with later

    assert len(halves) == 0
    assert not halves.repeats(usage("no-usage"))
    assert not halves.repeats(usage("usage-first"))


def test_a_record_with_more_than_usage_is_never_a_repeat():
    halves = UsageHalves()
    halves.remember(answered("a", **USAGE))

    assert not halves.repeats(usage("a", status_code=499))
    assert not halves.repeats(usage("a", error_type="client_disconnected"))


def test_the_oldest_usage_is_forgotten_beyond_the_capacity():
    halves = UsageHalves(capacity=3)
    for name in "abcd":
        halves.remember(answered(name, **USAGE))

    assert len(halves) == 3
    assert not halves.repeats(usage("a"))
    assert all(halves.repeats(usage(name)) for name in "bcd")
