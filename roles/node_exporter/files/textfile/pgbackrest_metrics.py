#!/usr/bin/env python3
"""Write the pgBackRest backup metrics for node_exporter's textfile collector.

Run by the backup job after each backup (and from a timer, so a stopped job shows as age):

    pgbackrest_metrics.py --max-age 93600 --output /var/lib/prometheus/node-exporter/pgbackrest.prom

- ``pgbackrest_last_backup_timestamp_seconds{stanza, type}``: when the newest backup of each type
  (full, diff, incr) stopped; pgBackRest lists completed backups only;
- ``pgbackrest_backup_max_age_seconds{stanza}``: ``--max-age``, what the schedule allows.

Reads ``pgbackrest --output=json info`` (``--info-json FILE`` reads a saved answer instead).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from promfile import Gauge, Sample, render, write_atomically


def read_info(saved: Path | None) -> list[dict[str, Any]]:
    if saved is not None:
        return json.loads(saved.read_text())
    done = subprocess.run(["pgbackrest", "--output=json", "info"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def gauges(info: list[dict[str, Any]], max_age: float) -> list[Gauge]:
    last = Gauge("pgbackrest_last_backup_timestamp_seconds", "Stop time of the newest backup of this type")
    allowed = Gauge("pgbackrest_backup_max_age_seconds", "How old the newest backup may be (the schedule)")
    for stanza in info:
        newest: dict[str, float] = {}
        for backup in stanza.get("backup", []):
            stop = float(backup["timestamp"]["stop"])
            newest[backup["type"]] = max(stop, newest.get(backup["type"], stop))
        last.samples.extend(
            Sample({"stanza": stanza["name"], "type": kind}, stop) for kind, stop in newest.items()
        )
        allowed.samples.append(Sample({"stanza": stanza["name"]}, max_age))
    return [last, allowed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write pgBackRest backup ages for the textfile collector.")
    parser.add_argument("--max-age", type=float, required=True, help="seconds the newest backup may be old")
    parser.add_argument("--output", type=Path, required=True, help="the .prom file to replace")
    parser.add_argument("--info-json", type=Path, help="a saved `pgbackrest --output=json info` answer")
    args = parser.parse_args(argv)
    try:
        info = read_info(args.info_json)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        # Nothing is written: the old file stays and the backup's age keeps growing.
        print(f"pgbackrest_metrics: cannot read pgbackrest info: {exc}", file=sys.stderr)
        return 1
    write_atomically(args.output, render(gauges(info, args.max_age)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
