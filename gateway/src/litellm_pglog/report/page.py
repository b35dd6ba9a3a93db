"""The report as one self-contained HTML page: tables plus charts drawn by matplotlib as inline SVG.

Why matplotlib's SVG: it is already pinned in the project (benchmarks' plots), renders on the
server with no JavaScript, and the page then loads nothing from anywhere (no CDN, no fonts), so
it can be mailed or opened offline. It is an optional dependency: ``pip install
'litellm-pglog[report]'``; the terminal report works without it.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

from litellm_pglog.report.queries import GroupUsage, Usage
from litellm_pglog.report.tables import GROUP_HEADERS, group_cells

OK_COLOUR = "#4c72b0"
ERROR_COLOUR = "#c44e52"
SECOND_COLOUR = "#dd8452"
# The browser refuses any fetch and any script: the page is what the file holds.
CSP = "default-src 'none'; style-src 'unsafe-inline'"
MAX_BARS = 20  # the busiest keys/models; the tables list them all
TICK_LABEL_CHARS = 32  # longer names are cut on the charts (the tables show them whole)

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; }
td.num { text-align: right; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
"""


class PageUnavailable(RuntimeError):
    """matplotlib is not installed (the ``report`` extra)."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PageUnavailable(
            "--html needs matplotlib: pip install 'litellm-pglog[report]' (the terminal report does not)"
        ) from None
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: smaller, selectable, searchable
            "text.parse_math": False,  # a key alias with "$" is a name, not a formula
            "figure.figsize": (7, 3.6),
        }
    )
    return plt


def _svg(plt: Any, name: str, draw: Callable[[Any], None]) -> str:
    # A per-chart salt: matplotlib derives element ids from it, and all charts share one DOM.
    plt.rcParams["svg.hashsalt"] = name
    figure, axes = plt.subplots()
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    finally:
        plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # inline: without the XML declaration and DOCTYPE


def _hourly_chart(usage: Usage) -> Callable[[Any], None]:
    def draw(axes: Any) -> None:
        from matplotlib.dates import DateFormatter  # imported by _pyplot() already: optional

        hours = [bucket.hour for bucket in usage.hourly]
        errors = [bucket.errors for bucket in usage.hourly]
        ok = [bucket.requests - bucket.errors for bucket in usage.hourly]
        width = 1 / 24 * 0.9  # days, matplotlib's date unit; "edge": each bar covers its hour
        axes.bar(hours, ok, width, align="edge", color=OK_COLOUR, label="ok")
        axes.bar(hours, errors, width, align="edge", bottom=ok, color=ERROR_COLOUR, label="error (4xx/5xx)")
        axes.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M", tz=UTC))
        axes.set_title("Requests per hour (UTC)")
        axes.legend()
        axes.figure.autofmt_xdate()

    return draw


def _tick_label(name: str) -> str:
    """A model or alias is client-chosen text: a long one would squeeze the plot to nothing."""
    return name if len(name) <= TICK_LABEL_CHARS else name[: TICK_LABEL_CHARS - 1] + "\u2026"


def _requests_chart(groups: Sequence[GroupUsage], title: str) -> Callable[[Any], None]:
    shown = list(groups[:MAX_BARS])[::-1]  # busiest on top

    def draw(axes: Any) -> None:
        # Positions, not names, on the axis: two names cut to the same label stay two bars.
        positions = list(range(len(shown)))
        ok = [group.requests - group.errors for group in shown]
        axes.barh(positions, ok, color=OK_COLOUR, label="ok")
        axes.barh(positions, [group.errors for group in shown], left=ok, color=ERROR_COLOUR, label="error")
        axes.set_yticks(positions, [_tick_label(group.name) for group in shown])
        axes.set_title(title)
        axes.legend()

    return draw


def _paired_chart(
    groups: Sequence[GroupUsage], title: str, series: tuple[tuple[str, Callable[[GroupUsage], float]], ...]
) -> Callable[[Any], None]:
    """Two bars per group side by side (p50/p95 latency, prompt/completion tokens)."""
    shown = list(groups[:MAX_BARS])[::-1]

    def draw(axes: Any) -> None:
        positions = range(len(shown))
        height = 0.4
        for offset, (label, value), colour in zip(
            (-0.2, 0.2), series, (OK_COLOUR, SECOND_COLOUR), strict=True
        ):
            axes.barh(
                [p + offset for p in positions], [value(g) for g in shown], height, label=label, color=colour
            )
        axes.set_yticks(list(positions), [_tick_label(group.name) for group in shown])
        axes.set_title(title)
        axes.legend()

    return draw


def _charts(usage: Usage) -> list[tuple[str, Callable[[Any], None]]]:
    models = usage.by_model
    return [
        ("requests-per-hour", _hourly_chart(usage)),
        ("requests-per-key", _requests_chart(usage.by_key, "Requests per API key alias")),
        ("requests-per-model", _requests_chart(models, "Requests per model")),
        (
            "latency-per-model",
            _paired_chart(
                models,
                "Latency per model (ms)",
                (("p50", lambda g: g.p50_ms or 0.0), ("p95", lambda g: g.p95_ms or 0.0)),
            ),
        ),
        (
            "tokens-per-model",
            _paired_chart(
                models,
                "Tokens per model",
                (("prompt", lambda g: g.prompt_tokens), ("completion", lambda g: g.completion_tokens)),
            ),
        ),
    ]


def _html_table(title: str, groups: Sequence[GroupUsage], usage: Usage) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (title, *GROUP_HEADERS))
    rows = []
    for group in groups:
        name, *numbers = group_cells(group, usage.window)
        cells = [
            f"<td>{html.escape(name)}</td>",
            *(f'<td class="num">{html.escape(n)}</td>' for n in numbers),
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(usage: Usage) -> str:
    plt = _pyplot()
    figures = "".join(
        f'<figure class="chart" id="{name}">{_svg(plt, name, draw)}</figure>' for name, draw in _charts(usage)
    )
    title = f"Gateway usage {usage.window.describe()}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<div class="charts">{figures}</div>
<h2>Total</h2>{_html_table("total", [usage.total], usage)}
<h2>Per API key alias</h2>{_html_table("api key alias", usage.by_key, usage)}
<h2>Per model</h2>{_html_table("model", usage.by_model, usage)}
</body></html>
"""
