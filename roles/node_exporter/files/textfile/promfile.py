"""Writing node_exporter textfile-collector files (``*.prom``): escaped labels, atomic replace.

Shared by the writers in this directory; standard library only (they run with the hosts' python3).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str
    samples: list[Sample] = field(default_factory=list)


def escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(gauges: Iterable[Gauge]) -> str:
    lines = []
    for gauge in gauges:
        lines += [f"# HELP {gauge.name} {gauge.help}", f"# TYPE {gauge.name} gauge"]
        for sample in gauge.samples:
            labels = ",".join(f'{name}="{escape(value)}"' for name, value in sorted(sample.labels.items()))
            lines.append(f"{gauge.name}{{{labels}}} {sample.value:.17g}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step: node_exporter never reads half a file (same directory: rename)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)  # node_exporter runs as its own user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
