"""The report as plain-text tables for a terminal (no colour, no dependency: it goes into mails)."""

from __future__ import annotations

from collections.abc import Sequence

from litellm_pglog.report.queries import GroupUsage, HourBucket, Usage
from litellm_pglog.report.window import Window

GROUP_HEADERS = (
    "requests",
    "errors",
    "error %",
    "by status",
    "p50 ms",
    "p95 ms",
    "prompt tok",
    "compl tok",
    "req/h",
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned (a name), the others right."""
    widths = [max(len(cells[i]) for cells in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(cells) for cells in rows)])


def format_statuses(by_status: dict[int | None, int]) -> str:
    """``200:7 429:1 500:2``; a request without a status (never answered) shows as ``-``."""
    known = sorted((status, count) for status, count in by_status.items() if status is not None)
    parts = [f"{status}:{count}" for status, count in known]
    if None in by_status:
        parts.append(f"-:{by_status[None]}")
    return " ".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def group_cells(group: GroupUsage, window: Window) -> list[str]:
    return [
        group.name,
        str(group.requests),
        str(group.errors),
        f"{100 * group.error_rate:.1f}",
        format_statuses(group.by_status),
        _ms(group.p50_ms),
        _ms(group.p95_ms),
        str(group.prompt_tokens),
        str(group.completion_tokens),
        f"{group.per_hour(window):.2f}",
    ]


def group_table(title: str, groups: Sequence[GroupUsage], window: Window) -> str:
    rows = [group_cells(group, window) for group in groups]
    return format_table((title, *GROUP_HEADERS), rows)


def hourly_table(buckets: Sequence[HourBucket]) -> str:
    """Hours with traffic only: a 90-day window would print 2160 lines (the HTML chart has them all)."""
    rows = [[f"{b.hour:%Y-%m-%d %H:00}", str(b.requests), str(b.errors)] for b in buckets if b.requests]
    return format_table(("hour (UTC)", "requests", "errors"), rows) + "\n(hours without requests omitted)"


def render_text(usage: Usage) -> str:
    window = usage.window
    return "\n\n".join(
        [
            f"Gateway usage {window.describe()} ({window.hours:g} h)",
            group_table("total", [usage.total], window),
            group_table("api key alias", usage.by_key, window),
            group_table("model", usage.by_model, window),
            hourly_table(usage.hourly),
        ]
    )
