#!/usr/bin/env python3
"""A tiny Alertmanager webhook receiver: every POSTed notification becomes one line in a file.

Used in the lab, where the end-to-end alert test reads the file to see an alert arrive and
resolve. Standard library only (it runs with the lab host's python3, outside any venv).

    webhook_receiver.py --listen 0.0.0.0:9099 --output /var/lib/alert-webhook/alerts.jsonl

Each line is Alertmanager's JSON object (``status``, ``alerts``, ``groupLabels`` ...) with one
key added: ``receivedAt``, the receiver's UTC time in ISO 8601. A body that is not a JSON object
gets 400 and writes nothing. ``GET /health`` answers ``ok``. Alertmanager configuration:

    receivers:
      - name: lab-webhook
        webhook_configs:
          - url: http://HOST:9099/alerts
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:9099"
# Alertmanager batches alerts per group; 1 MiB holds thousands. Anything larger is not ours.
MAX_BODY_BYTES = 1 << 20


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], output: Path) -> None:
        self.output = output
        self.write_lock = threading.Lock()  # one line per notification, never interleaved
        super().__init__(address, _Handler)

    def append(self, notification: dict[str, Any]) -> None:
        line = json.dumps(notification, separators=(",", ":"), sort_keys=True) + "\n"
        with self.write_lock, self.output.open("a", encoding="utf-8") as file:
            file.write(line)


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        notification = self._read_json_object()
        if notification is None:
            return
        notification["receivedAt"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.server.append(notification)
        self._reply(200, "ok\n")

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/health":
            self._reply(200, "ok\n")
        else:
            self._reply(404, "POST Alertmanager notifications here; GET /health\n")

    def _read_json_object(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            self._reply(400 if length <= 0 else 413, "expected a JSON body of at most 1 MiB\n")
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if not isinstance(body, dict):
            self._reply(400, "expected a JSON object (an Alertmanager notification)\n")
            return None
        return body

    def _reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the file is the log


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Append Alertmanager webhook notifications to a file.")
    listen_help = f"host:port (default {DEFAULT_LISTEN}; port 0: any free port)"
    parser.add_argument("--listen", type=parse_listen, default=DEFAULT_LISTEN, help=listen_help)
    parser.add_argument("--output", type=Path, required=True, help="file to append one JSON line per POST to")
    args = parser.parse_args(argv)
    with ReceiverServer(args.listen, args.output) as server:
        host, port = server.server_address[:2]
        # The bound address (port 0 picks a free one): tests and people read it here.
        print(
            f"webhook_receiver: listening on {host}:{port}, writing {args.output}",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
