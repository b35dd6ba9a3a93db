"""The report's time range: ``--since`` and ``--until`` as durations before now or timestamps."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DURATION = re.compile(r"(\d+)([mhdw])")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WINDOW_SHAPE = "a duration before now (90m, 24h, 7d, 2w) or an ISO 8601 time (2026-11-27T09:00:00Z)"


class WindowError(ValueError):
    """A --since/--until value that is neither a duration nor a timestamp, or an empty range."""


@dataclass(frozen=True)
class Window:
    """The half-open range [start, end): rows with start <= created_at < end."""

    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def describe(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} UTC"


def parse_moment(value: str, now: datetime, option: str) -> datetime:
    """``24h`` -> now - 24 h; an ISO 8601 time (UTC when it has no offset) -> that time."""
    text = value.strip()
    duration = DURATION.fullmatch(text)
    if duration:
        amount, unit = duration.groups()
        return now - timedelta(seconds=int(amount) * UNIT_SECONDS[unit])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise WindowError(f"{option} {value!r}: expected {WINDOW_SHAPE}") from None
    # A naive time would be read in the server's time zone by PostgreSQL: say UTC explicitly.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_window(since: str, until: str | None, now: datetime | None = None) -> Window:
    now = now or datetime.now(UTC)
    start = parse_moment(since, now, "--since")
    end = parse_moment(until, now, "--until") if until else now
    if start >= end:
        raise WindowError(f"empty time range: --since {since!r} is not before --until {until or 'now'!r}")
    return Window(start.astimezone(UTC), end.astimezone(UTC))
