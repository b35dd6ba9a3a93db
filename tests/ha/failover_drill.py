"""Failover drill: the primary dies under load; playbooks/failover.yml promotes the standby.

Load goes through the balancer the whole time. Asserts 0 failed client requests and, on the new
primary, one row per answered request (matched by x-litellm-call-id = requests.request_id):
0 lost, 0 duplicated. Measures the seconds from the kill until the standby is promoted and
the time during which the gateways spooled records instead of writing them. Then (unless
HA_DRILL_REBUILD=0) the old primary is started again and rebuilt as the new primary's standby.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import halab

CONCURRENCY = 4


class Watch(threading.Thread):
    """Polls the gateways' readiness and the standby's recovery state every 0.5 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.spooling: list[float] = []
        self.spooled: dict[tuple[str, int], int] = {}
        self.promoted_at: float | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            for name, address in halab.GATEWAYS.items():
                try:
                    state = halab.readiness(address)
                except Exception:  # noqa: BLE001 - a restarting gateway answers nothing for a while
                    continue
                log = state.get("request_log", {})
                if log.get("database") == "unreachable" or log.get("spool_bytes", 0) > 0:
                    self.spooling.append(now)
                key = (name, int(state.get("pid", 0)))
                self.spooled[key] = max(self.spooled.get(key, 0), int(log.get("spooled_records", 0)))
            if self.promoted_at is None:
                try:
                    rows = halab.psql("SELECT pg_is_in_recovery();", halab.STANDBY)
                    if rows and rows[0][0] == "f":
                        self.promoted_at = now
                except subprocess.CalledProcessError:
                    pass
            time.sleep(0.5)


def in_recovery(host: str) -> bool:
    return halab.psql("SELECT pg_is_in_recovery();", host)[0][0] == "t"


def main() -> int:
    halab.check_routes()
    if not in_recovery(halab.STANDBY):
        raise SystemExit(f"{halab.STANDBY} is not a standby: converge the scenario first")
    base = f"https://{halab.BALANCER}:{halab.PORT}"
    watch = Watch()
    watch.start()
    background = halab.BackgroundLoad(base, CONCURRENCY).start()
    time.sleep(5)
    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", halab.PRIMARY], check=True, capture_output=True)
    rc, output = halab.ansible_playbook(
        "failover.yml", "-e", f"failover_primary={halab.STANDBY}", "--limit", f"!{halab.PRIMARY}"
    )
    playbook_s = time.monotonic() - killed_at
    time.sleep(5)
    result = background.finish()
    missing, duplicated, waited = halab.rows_for(result.ids, host=halab.STANDBY)
    watch.stop.set()
    watch.join()
    figures = {
        "playbook_rc": rc,
        "promoted_after_kill_s": round(watch.promoted_at - killed_at, 1) if watch.promoted_at else None,
        "failover_playbook_s": round(playbook_s, 1),
        "spooling_s": round(watch.spooling[-1] - watch.spooling[0], 1) if watch.spooling else 0,
        "records_spooled": sum(watch.spooled.values()),
        "requests": result.sent,
        "ok": len(result.ids),
        "failed": len(result.failures),
        "rows_missing": len(missing),
        "rows_duplicated": duplicated,
        "log_catch_up_s": round(waited, 1),
    }
    ok = rc == 0 and not result.failures and not missing and not duplicated and watch.promoted_at is not None
    if rc != 0:
        print(output[-4000:])
    if result.failures:
        print("first failures:", result.failures[:5])
    if os.environ.get("HA_DRILL_REBUILD", "1") != "0":
        subprocess.run(["docker", "start", halab.PRIMARY], check=True, capture_output=True)
        time.sleep(5)
        started = time.monotonic()
        rc2, output2 = halab.ansible_playbook(
            "failover.yml",
            "-e",
            f"failover_primary={halab.STANDBY}",
            "-e",
            f"failover_rebuild={halab.PRIMARY}",
        )
        figures["rebuild_rc"] = rc2
        figures["rebuild_s"] = round(time.monotonic() - started, 1)
        figures["old_primary_in_recovery"] = rc2 == 0 and in_recovery(halab.PRIMARY)
        if rc2 != 0:
            print(output2[-4000:])
        ok = ok and figures["old_primary_in_recovery"]
    halab.report("failover drill", figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
