"""A TCP proxy in front of the test PostgreSQL that can stall: a database that hangs.

While stalled it neither reads, writes, accepts nor closes anything: the kernel still completes
TCP handshakes (listen backlog) and acknowledges what clients send, exactly what clients see
of a server whose process is stopped or whose host froze. Resumed, it forwards again.
"""

from __future__ import annotations

import selectors
import socket
import threading
from contextlib import suppress


class StallingProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stalling-proxy", daemon=True)

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        self._forwarding.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()

    def stall(self) -> None:
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            if not self._forwarding.wait(0.05):
                continue  # stalled: touch nothing
            for key, _ in self._selector.select(0.05):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            client.close()
            return
        for one, other in ((client, upstream), (upstream, client)):
            one.setblocking(True)
            self._selector.register(one, selectors.EVENT_READ, data=other)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            data = source.recv(65536)
            if data:
                target.sendall(data)
                return
        except OSError:
            pass
        for sock in (source, target):  # one side closed: close the pair
            with suppress(KeyError, ValueError):  # already closed in this round
                self._selector.unregister(sock)
            sock.close()
