"""Markdown and PNG output of the lab runs, written into the git-ignored results/ folder."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from labctl import RESULTS  # noqa: E402


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """min, median, max."""
    return min(values), statistics.median(values), max(values)


def spread_text(values: tuple[float, float, float], spec: str = "+.2f") -> str:
    return " / ".join(format(value, spec) for value in values)


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def save(figure, path: Path) -> Path:
    """Write a figure; results/ is git-ignored, so a fresh clone does not have it yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write(name: str, markdown: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(markdown)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return path


def latency_cdf_plot(path: Path, title: str, panels: list[tuple[str, dict[str, list[float]]]]) -> Path:
    """One panel per (subtitle, {label: latencies_ms}): latency against the share of requests."""
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (subtitle, series) in zip(axes[0], panels, strict=True):
        for label, values in series.items():
            ordered = sorted(values)
            if not ordered:
                continue
            share = [100 * (index + 1) / len(ordered) for index in range(len(ordered))]
            axis.plot(share, ordered, label=f"{label} (n={len(ordered)})")
        axis.set_title(subtitle)
        axis.set_xlabel("requests answered within (percentile)")
        axis.set_ylabel("latency (ms)")
        axis.set_xlim(0, 100)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return save(figure, path)


def timeline_plot(path: Path, title: str, samples, events: list[tuple[float, str]]) -> Path:
    """Latency of every request over time, errors in red, scenario events as vertical lines."""
    if not samples:
        return path
    origin = min(s.started for s in samples)
    figure, axis = plt.subplots(figsize=(10, 4.5))
    good = [(s.started - origin, s.latency_ms) for s in samples if s.status == 200]
    bad = [(s.started - origin, max(s.latency_ms, 0.1)) for s in samples if s.status != 200]
    if good:
        axis.scatter(*zip(*good, strict=True), s=4, label=f"HTTP 200 ({len(good)})")
    if bad:
        axis.scatter(*zip(*bad, strict=True), s=8, color="red", label=f"error / no answer ({len(bad)})")
    for when, label in events:
        axis.axvline(when - origin, color="gray", linestyle="--")
        axis.annotate(label, (when - origin, 1), rotation=90, fontsize=8, va="bottom", ha="right")
    axis.set_yscale("log")
    axis.set_xlabel("seconds since the load started")
    axis.set_ylabel("latency (ms, log)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(loc="upper right")
    return save(figure, path)
