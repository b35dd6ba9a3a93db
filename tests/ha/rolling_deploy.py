"""Rolling deploy under load: 0 failed requests, 0 lost and 0 duplicated log rows.

Continuous requests through the balancer while playbooks/gateway.yml changes every gateway's
configuration (a new request timeout: the service restarts). The playbook drains each gateway at
the balancer first, one gateway at a time. Both gateways must have restarted.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import halab

CONCURRENCY = 8


def started_at(host: str) -> str:
    return subprocess.run(
        [
            "docker",
            "exec",
            host,
            "systemctl",
            "show",
            "-p",
            "ExecMainStartTimestampMonotonic",
            "litellm-gateway",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def main() -> int:
    halab.check_routes()
    base = f"https://{halab.BALANCER}:{halab.PORT}"
    before = {host: started_at(host) for host in halab.GATEWAYS}
    timeout = random.randint(11, 59)  # never the lab's own (5 s): every gateway's configuration changes
    background = halab.BackgroundLoad(base, CONCURRENCY).start()
    time.sleep(3)
    t0 = time.monotonic()
    rc, output = halab.ansible_playbook("gateway.yml", "-e", f"litellm_gateway_request_timeout={timeout}")
    deploy_s = time.monotonic() - t0
    time.sleep(3)
    result = background.finish()
    after = {host: started_at(host) for host in halab.GATEWAYS}
    restarted = [host for host in halab.GATEWAYS if before[host] != after[host]]
    missing, duplicated, waited = halab.rows_for(result.ids)
    figures = {
        "playbook_rc": rc,
        "deploy_s": round(deploy_s, 1),
        "gateways_restarted": len(restarted),
        "requests": result.sent,
        "ok": len(result.ids),
        "failed": len(result.failures),
        "rows_missing": len(missing),
        "rows_duplicated": duplicated,
        "rps": round(result.rate, 1),
    }
    halab.report("rolling deploy under load", figures)
    if rc != 0:
        print(output[-4000:])
    if result.failures:
        print("first failures:", result.failures[:5])
    ok = (
        rc == 0
        and len(restarted) == len(halab.GATEWAYS)
        and not result.failures
        and not missing
        and not duplicated
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
