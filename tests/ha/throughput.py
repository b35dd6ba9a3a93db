"""Requests/s through the balancer with 1 and 2 gateways, in one run (same load, same machine).

With one gateway the other is put in maintenance at the balancer (runtime API on the balancer);
both are back in service at the end. Every container shares this machine's 2 cores, so the
ratio, not the absolute rate, is the figure.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import halab

SECONDS = 10
# The gateway put in maintenance for the one-gateway half.
SECOND = list(halab.GATEWAYS)[-1]
CONCURRENCY = 16


def set_state(server: str, state: str) -> None:
    subprocess.run(
        [
            "docker",
            "exec",
            halab.BALANCER_HOST,
            "python3",
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock');"
            " s.sendall(sys.argv[1].encode()+b'\\n'); print(s.recv(65536).decode())",
            f"set server litellm_gateways/{server} state {state}",
        ],
        check=True,
        capture_output=True,
    )


def main() -> int:
    halab.check_routes()
    base = f"https://{halab.BALANCER}:{halab.PORT}"
    figures = {}
    asyncio.run(halab.load(base, None, concurrency=4, duration=3))  # warm up both gateways
    try:
        set_state(SECOND, "maint")
        time.sleep(1)
        one = asyncio.run(halab.load(base, None, concurrency=CONCURRENCY, duration=SECONDS))
    finally:
        set_state(SECOND, "ready")
    time.sleep(6)  # rise 2 x inter 2 s
    two = asyncio.run(halab.load(base, None, concurrency=CONCURRENCY, duration=SECONDS))
    figures = {
        "1_gateway_rps": round(one.rate, 1),
        "2_gateways_rps": round(two.rate, 1),
        "ratio": round(two.rate / one.rate, 2) if one.rate else 0,
        "failed": len(one.failures) + len(two.failures),
        "concurrency": CONCURRENCY,
        "seconds_each": SECONDS,
    }
    halab.report("throughput through the balancer", figures)
    return 0 if figures["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
