#!/usr/bin/env python3
"""CPU per request of the logging code alone, in one process, without LiteLLM or a network.

The package's ASGI middleware wraps a stand-in app that answers every chat request at once with
an OpenAI-style body (usage included); the usage callback is called with what LiteLLM hands it.
Each request is driven through the ASGI interface in-process, so the figures are the middleware
(request id, body read and parsed, response observed), submit() of both records (clean, journal
write, queue) and the writer thread (batches into PostgreSQL), and nothing else:

  OFF   LITELLM_PGLOG_ENABLED=false: the middleware passes requests through untouched;
  ON    logging on, writer into a throwaway PostgreSQL.

CPU is the process's (every thread, time.process_time) per request, over alternating rounds;
ON minus OFF is what logging adds to a gateway worker's CPU per request. PostgreSQL's CPU per
logged request comes from its processes (pgcpu.py).

--baseline-src DIR runs the same in a child process with the package source in DIR first (e.g.
main's gateway/src): before and after, same machine, same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download attempt at import
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests" / "gateway")]
try:
    import litellm_pglog  # noqa: F401 - installed in the venv, or the --baseline-src on PYTHONPATH
except ImportError:  # running from a checkout
    sys.path.insert(0, str(REPO / "gateway" / "src"))

from litellm_pglog import callbacks  # noqa: E402
from litellm_pglog.middleware import CALL_ID_HEADER, RequestLogMiddleware  # noqa: E402
from litellm_pglog.runtime import GatewayRuntime, install  # noqa: E402
from litellm_pglog.schema import upgrade_schema  # noqa: E402
from litellm_pglog.settings import Settings  # noqa: E402
from pgcpu import ClusterCpu, throwaway_cluster  # noqa: E402

try:
    from litellm_pglog.gcfreeze import freeze_startup_heap
except ImportError:  # a --baseline-src from before the entry point froze the startup heap

    def freeze_startup_heap() -> int:
        return 0


from proxy_harness import GatewayKeys, chat_body  # noqa: E402

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    }
).encode()
BODY = json.dumps(chat_body("benchmark")).encode()


def stand_in_app(usage_logger: callbacks.UsageLogger):
    """Answers at once, then reports usage like LiteLLM's success callback (same event loop)."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        call_id = dict(scope["headers"]).get(CALL_ID_HEADER.encode(), b"").decode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})
        payload = {
            "model_group": "gpt-4o-mini",
            "prompt_tokens": 12,
            "completion_tokens": 30,
            "total_tokens": 42,
            "metadata": {"user_api_key_request_route": "/v1/chat/completions"},
        }
        kwargs = {"litellm_call_id": call_id, "standard_logging_object": payload}
        await usage_logger.async_log_success_event(kwargs, None, None, None)

    return app


async def one_request(app, key: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 4000),
    }
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message):
        return None

    await app(scope, receive, send)


def build(settings: Settings):
    runtime = install(GatewayRuntime(settings))
    usage_logger = callbacks.UsageLogger(lambda: runtime)
    return runtime, RequestLogMiddleware(stand_in_app(usage_logger), runtime)


async def drive(app, key: str, count: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        await one_request(app, key)
    return time.process_time() - cpu, time.perf_counter() - wall


def run(url: str, pg_data: Path | None, args: argparse.Namespace) -> dict[str, object]:
    upgrade_schema(url)
    pg_cpu = ClusterCpu(pg_data) if pg_data else None
    keys = GatewayKeys()
    with tempfile.TemporaryDirectory(prefix="pglog-request-path-") as work:
        keys_file = Path(work) / "api_keys.json"
        keys_file.write_text(keys.keys_file_content())
        common = {"keys_file": keys_file, "master_key": keys.master_key}
        on_runtime, on_app = build(Settings(db_url=url, spool_dir=Path(work) / "spool", **common))
        off_runtime, off_app = build(Settings(enabled=False, **common))
        install(on_runtime)  # the usage callback finds its runtime through the closure anyway

        async def main() -> dict[str, object]:
            for app in (on_app, off_app):
                await drive(app, keys.test_key, args.warmup)
            freeze_startup_heap()  # as the gateway's entry point does once LiteLLM started
            on_runtime.writer.flush(60)
            cpu = {"ON": [], "OFF": []}
            full_passes = {"ON": 0, "OFF": 0}  # the collector's generation-2 passes per mode
            mode = "OFF"

            def count_full_pass(phase: str, info: dict) -> None:
                if phase == "start" and info["generation"] == 2:
                    full_passes[mode] += 1

            gc.callbacks.append(count_full_pass)
            pg_seconds = 0.0
            for round_number in range(args.rounds):
                order = [("OFF", off_app), ("ON", on_app)]
                if round_number % 2:
                    order.reverse()
                for label, app in order:
                    pg_before = pg_cpu.seconds() if pg_cpu and label == "ON" else 0.0
                    mode = label
                    seconds, _ = await drive(app, keys.test_key, args.requests)
                    if label == "ON":  # the writer's work for this round counts too
                        started = time.process_time()
                        await asyncio.to_thread(on_runtime.writer.flush, 60)
                        seconds += time.process_time() - started
                        pg_seconds += pg_cpu.seconds() - pg_before if pg_cpu else 0.0
                    cpu[label].append(seconds * 1000 / args.requests)
            gc.callbacks.remove(count_full_pass)
            stats = on_runtime.writer.stats()
            on_runtime.stop(30)
            return {
                "on_ms": cpu["ON"],
                "off_ms": cpu["OFF"],
                "pg_ms": pg_seconds * 1000 / (args.rounds * args.requests),
                "full_gc_passes": full_passes,
                "stats": stats,
            }

        return asyncio.run(main())


def report(label: str, result: dict[str, object]) -> None:
    added = sorted(on - off for on, off in zip(result["on_ms"], result["off_ms"], strict=True))
    print(
        f"{label}: CPU ms/request OFF {statistics.median(result['off_ms']):.3f}, "
        f"ON {statistics.median(result['on_ms']):.3f}; added min / median / max "
        f"{added[0]:.3f} / {statistics.median(added):.3f} / {added[-1]:.3f} ms; "
        f"PostgreSQL CPU {result['pg_ms']:.4f} ms per logged request"
    )
    # A full collection walks the whole heap (LiteLLM's imports: ~250 ms here) and lands in some
    # rounds only, so the median of the added CPU depends on where they fall; the mean over all
    # rounds spreads them over every request.
    passes = result.get("full_gc_passes", {})
    print(
        f"{label}: added CPU mean over all rounds {statistics.mean(added):.3f} ms/request; "
        f"full garbage collections ON {passes.get('ON', '?')}, OFF {passes.get('OFF', '?')}"
    )
    print(f"{label}: writer stats {result['stats']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--db-url", help=argparse.SUPPRESS)  # for --baseline-src
    parser.add_argument("--pg-data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-src", type=Path, help="package source to compare with")
    args = parser.parse_args()
    if args.db_url:
        print("RESULT " + json.dumps(run(args.db_url, args.pg_data, args)))
        return 0
    with throwaway_cluster() as cluster:
        if args.baseline_src:
            command = [sys.executable, __file__, "--db-url", cluster.url_for(cluster.create_database())]
            command += ["--pg-data", str(cluster.data), "--requests", str(args.requests)]
            command += ["--rounds", str(args.rounds), "--warmup", str(args.warmup)]
            environment = os.environ | {"PYTHONPATH": str(args.baseline_src.resolve())}
            output = subprocess.run(
                command, env=environment, capture_output=True, text=True, check=True
            ).stdout
            line = next(line for line in output.splitlines() if line.startswith("RESULT "))
            report(f"before ({args.baseline_src})", json.loads(line.removeprefix("RESULT ")))
        result = run(cluster.url_for(cluster.create_database()), cluster.data, args)
        report(f"after ({Path(litellm_pglog.__file__).parent})", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
