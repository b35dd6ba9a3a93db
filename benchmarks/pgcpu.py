"""Helpers shared by the writer benchmarks: a throwaway cluster and its CPU use.

``ClusterCpu`` reads /proc: the postmaster's own CPU time, that of the children it already
reaped (backends that exited: cutime/cstime) and that of every live child (backends, WAL
writer, checkpointer, autovacuum). That is "PostgreSQL CPU" as an operator's top would add it
up, not only the writer's own backend. It needs the cluster on this machine and root (or the
cluster's owner) to read its postmaster.pid.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat from the state on (field 3), whatever the command name holds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


class ClusterCpu:
    """CPU seconds used so far by every process of one PostgreSQL cluster."""

    def __init__(self, data_dir: Path) -> None:
        self.postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])

    def seconds(self) -> float:
        # Offsets into _stat_fields(): ppid is field 4, utime..cstime are fields 14..17.
        own = _stat_fields(self.postmaster)
        ticks = sum(int(value) for value in own[11:15])
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = _stat_fields(entry.name)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile: now in the postmaster's cutime/cstime
            if int(fields[1]) == self.postmaster:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / TICKS_PER_SECOND


@contextmanager
def throwaway_cluster() -> Iterator[object]:
    """A PostgreSQL cluster of tests/gateway/pgcluster.py (fsync=off), destroyed afterwards."""
    sys.path.insert(0, str(REPO / "tests" / "gateway"))
    from pgcluster import PgCluster

    cluster = PgCluster().create()
    try:
        yield cluster
    finally:
        cluster.destroy()
