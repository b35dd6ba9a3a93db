"""Requests through the balancer are answered by both gateways and logged once each."""

from __future__ import annotations

import asyncio
import sys

import halab


def main() -> int:
    halab.check_routes()
    base = f"https://{halab.BALANCER}:{halab.PORT}"
    result = asyncio.run(halab.load(base, None, concurrency=4, duration=5))
    missing, duplicated, waited = halab.rows_for(result.ids)
    servers = halab.psql("SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE usename = 'litellm_user';")
    halab.report(
        "balancer smoke",
        {
            "requests": result.sent,
            "ok": len(result.ids),
            "failed": len(result.failures),
            "rows_missing": len(missing),
            "rows_duplicated": duplicated,
            "log_wait_s": round(waited, 1),
            "db_sessions": int(servers[0][0]) if servers else 0,
        },
    )
    ok = result.ids and not result.failures and not missing and not duplicated
    if result.failures:
        print("first failures:", result.failures[:5])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
