"""Durable overflow for log records: JSON-lines files in the spool directory.

Every writer appends to a file of its own (process id and a token in the name) and holds an
exclusive flock on it while it appends, so several uvicorn workers never interleave lines and
a replayer never reads a file that is still growing. Files left by a previous process carry
no lock and are claimed by the first writer that replays them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from litellm_pglog.records import LogRecord

log = logging.getLogger("litellm_pglog")

SPOOL_GLOB = "pglog-*.jsonl"
REJECTED_PREFIX = "rejected-"


def encode_line(record: LogRecord) -> bytes:
    # ensure_ascii keeps every line pure ASCII, whatever the record holds (lone surrogates included).
    return json.dumps(record.to_json_dict(), separators=(",", ":")).encode("ascii") + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ClaimedFile:
    """A spool file this process holds the lock on until remove() or release()."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def batches(self, size: int, on_bad_line: Callable[[int, str], None]) -> Iterator[list[LogRecord]]:
        batch: list[LogRecord] = []
        with open(self._fd, "rb", closefd=False) as stream:
            for number, line in enumerate(stream, start=1):
                try:
                    batch.append(LogRecord.from_json_dict(json.loads(line)))
                except (ValueError, TypeError) as exc:
                    # Only a crash in the middle of a write leaves such a line (the torn tail).
                    on_bad_line(number, type(exc).__name__)
                    continue
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        os.close(self._fd)


class Spool:
    """Append-only JSON-lines files, bounded by the total size of the spool directory."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._unsynced = False
        self._total_bytes = 0

    @property
    def active_path(self) -> Path | None:
        return self._path

    def append(self, lines: list[bytes], sync: bool) -> int:
        """Append whole lines while the spool stays under its bound; returns how many were stored."""
        with self._lock:
            accepted = []
            for line in lines:
                if self._total_bytes + len(line) > self.max_bytes:
                    break
                accepted.append(line)
                self._total_bytes += len(line)
            if accepted:
                fd = self._active_fd()
                _write_all(fd, b"".join(accepted))
                self._unsynced = True
            if sync:
                self._sync_locked()
            return len(accepted)

    def sync(self) -> None:
        with self._lock:
            self._sync_locked()

    def seal(self) -> None:
        """Close the active file so that it can be claimed and replayed."""
        with self._lock:
            if self._fd is None:
                return
            self._sync_locked()
            os.close(self._fd)
            self._fd = None
            self._path = None

    def has_files(self) -> bool:
        return any(self.directory.glob(SPOOL_GLOB))

    def claim_files(self) -> Iterator[ClaimedFile]:
        """Lock and yield every spool file that no live writer is appending to."""
        for path in sorted(self.directory.glob(SPOOL_GLOB)):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink == 0:  # replayed and deleted by someone else meanwhile
                os.close(fd)
                continue
            yield ClaimedFile(path, fd)

    def refresh_size(self) -> int:
        """Re-measure the directory: other processes add to it and replays shrink it."""
        total = 0
        for path in self.directory.glob(SPOOL_GLOB):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        with self._lock:
            self._total_bytes = total
        return total

    def reject(self, line: bytes) -> None:
        """Keep a record PostgreSQL refused for good where replays never pick it up again."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{REJECTED_PREFIX}{os.getpid()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _active_fd(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"pglog-{os.getpid()}-{time.time_ns():x}.jsonl"
            # Locked before it gets a name replayers look for, so none can claim it while it is empty.
            hidden = self.directory / f".{name}.new"
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o640)
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = self.directory / name
            hidden.rename(path)
            self._fd, self._path = fd, path
            log.info("spooling log records to %s", path)
        return self._fd

    def _sync_locked(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False
