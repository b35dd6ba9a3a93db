"""The writer's counts: per writer for ``stats()``, and the process's Prometheus series.

Who writes and who reads the pglog_* series:

- each gateway worker's writer increments them here (one ``PrometheusSeries`` per process);
- with ``--workers N`` the gateway runs with PROMETHEUS_MULTIPROC_DIR set (systemd
  Environment=, so it is in place before prometheus_client is first imported: the client picks
  its value store at import time). Every worker then writes its values to files named after its
  pid in that directory, and ``exposition.py`` sums them over the workers for the scraper.
  Without the variable (one worker, the tests) the series live in the process's default registry.

Counters need nothing for multiprocess mode: the files of all workers, dead ones included, are
summed, so a total never goes backwards when uvicorn replaces a worker. A gauge does: its
``multiprocess_mode`` says how the workers' values combine. The queue depth is "livesum": the
records waiting in memory in all living workers (a dead worker's file is removed by
``prometheus_client.multiprocess.mark_process_dead``, see ``exposition.py``).
"""

from __future__ import annotations

import threading
from typing import Any

COUNT_NAMES = ("submitted", "merged", "written", "spooled", "replayed", "dropped", "rejected", "db_errors")

# How the workers' pglog_queue_depth values combine in multiprocess mode (see the docstring).
QUEUE_DEPTH_MULTIPROCESS_MODE = "livesum"


class PrometheusSeries:
    """The process's pglog_* series, created once (several writers may exist, e.g. in tests)."""

    def __init__(self) -> None:
        try:
            from prometheus_client import Counter, Gauge
        except ImportError:  # metrics are best effort
            self.rows_written = self.spooled = self.dropped = self.merged = self.queue_depth = None
            return
        self.rows_written = _get_or_create(Counter, "pglog_rows_written", "Request rows upserted")
        self.spooled = _get_or_create(Counter, "pglog_records_spooled", "Records written to the spool")
        self.dropped = _get_or_create(Counter, "pglog_records_dropped", "Records lost: spool full")
        self.merged = _get_or_create(
            Counter, "pglog_records_merged", "Usage records not submitted: the request's record held them"
        )
        self.queue_depth = _get_or_create(
            Gauge,
            "pglog_queue_depth",
            "Records waiting in memory",
            multiprocess_mode=QUEUE_DEPTH_MULTIPROCESS_MODE,
        )


def _get_or_create(kind: type, name: str, documentation: str, **options: Any) -> Any:
    try:
        return kind(name, documentation, **options)
    except ValueError:  # already registered, e.g. module re-imported under another name
        from prometheus_client import REGISTRY

        return REGISTRY._names_to_collectors.get(name)  # no public lookup exists


SERIES = PrometheusSeries()


class WriterMetrics:
    """One writer's counts; those with a Prometheus series are mirrored into it.

    pglog_rows_written counts request rows upserted (two halves of one request merged in a
    batch are one row), while the ``written`` count is of records: see ``rows_written()``.
    """

    def __init__(self, series: PrometheusSeries = SERIES) -> None:
        self._series = series
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNT_NAMES, 0)
        self._mirrors = {"spooled": series.spooled, "dropped": series.dropped, "merged": series.merged}

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount
        _increment(self._mirrors.get(name), amount)

    def rows_written(self, rows: int) -> None:
        _increment(self._series.rows_written, rows)

    def queue_depth(self, depth: int) -> None:
        if self._series.queue_depth is not None:
            self._series.queue_depth.set(depth)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _increment(metric: Any, amount: int) -> None:
    if metric is not None and amount:
        metric.inc(amount)
