"""Durable overflow for log records: JSON-lines files in the spool directory.

Every writer appends to a file of its own (process id and a token in the name) and holds an
exclusive flock on it while it appends, so several uvicorn workers never interleave lines and
a replayer never reads a file that is still growing. Files left by a previous process carry
no lock and are claimed by the first writer that replays them.

Journals (``journal-*.jsonl``) are write-ahead copies of the records a writer still holds in
memory, so that a process killed with SIGKILL loses none of them: see ``Journal``. While their
owner lives they are locked like its spool file; once it is gone they are replayed like any
spool file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from litellm_pglog import fastjson
from litellm_pglog.limits import JOURNAL_ROTATE_BYTES, JOURNAL_ROTATE_SECONDS
from litellm_pglog.records import UUID7_TEXT, LogRecord

log = logging.getLogger("litellm_pglog")

SPOOL_PREFIX = "pglog-"
JOURNAL_PREFIX = "journal-"
SPOOL_GLOB = f"{SPOOL_PREFIX}*.jsonl"
JOURNAL_GLOB = f"{JOURNAL_PREFIX}*.jsonl"
REPLAYABLE_GLOBS = (SPOOL_GLOB, JOURNAL_GLOB)
REJECTED_PREFIX = "rejected-"


RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(LogRecord))
KNOWN_FIELDS = frozenset(RECORD_FIELDS)
# One encoder for every line: json.dumps() with any option builds a new one per call.
# ensure_ascii (its default) keeps every line pure ASCII, whatever the record holds (lone
# surrogates included).
LINE_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_line(record: LogRecord) -> bytes:
    """``record.to_json_dict()`` as one JSON line, without its deep copy: submit() runs this."""
    data = {name: getattr(record, name) for name in RECORD_FIELDS}
    if record.created_at is not None:
        data["created_at"] = record.created_at.isoformat()
    return LINE_ENCODER.encode(data).encode("ascii") + b"\n"


def encode_row(row: dict[str, object]) -> bytes:
    """One JSON line of a cleaned record's values (``sink.clean_values``): submit() runs this.

    orjson when installed (UTF-8; a cleaned row holds no lone surrogate, no NaN), else the
    ASCII line of ``encode_line``; ``decode_line`` reads both.
    """
    return (
        fastjson.dumps_line(row)
        or LINE_ENCODER.encode(
            {name: value.isoformat() if isinstance(value, datetime) else value for name, value in row.items()}
        ).encode("ascii")
        + b"\n"
    )


def decode_line(line: bytes) -> LogRecord:
    """``LogRecord.from_json_dict(json.loads(line))``, faster: a replay decodes every line.

    Raises ValueError or TypeError for a line that holds no record.
    """
    data = fastjson.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    values = {name: value for name, value in data.items() if name in KNOWN_FIELDS}
    if created_at := values.get("created_at"):
        values["created_at"] = datetime.fromisoformat(created_at)
    return LogRecord(**values)


def decode_values(line: bytes) -> dict[str, Any]:
    """One line's record as a dict of its JSON values, for a replay (``sink.clean_values``
    takes it as it is: no LogRecord made per line).

    created_at is parsed only where it decides the row's time, for ids that are no UUIDv7 (of
    a UUIDv7 id the writer reads the time from the id). Raises ValueError or TypeError for a
    line that holds no record, like ``decode_line``.
    """
    data = fastjson.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    created_at = data.get("created_at")
    if created_at and not (
        isinstance(data.get("request_id"), str) and UUID7_TEXT.fullmatch(data["request_id"])
    ):
        data["created_at"] = datetime.fromisoformat(created_at)
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create_locked(directory: Path, prefix: str) -> tuple[int, Path]:
    """A new append-only file of this process, flocked before replayers can see its name."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}{os.getpid()}-{time.time_ns():x}.jsonl"
    # Locked before it gets a name replayers look for, so none can claim it while it is empty.
    hidden = directory / f".{name}.new"
    fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = directory / name
    hidden.rename(path)
    return fd, path


def _creation_order(path: Path) -> str:
    # Names end in time_ns() as fixed-width hex: older records replay first, later values win.
    return path.stem.rsplit("-", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Backlog:
    """The spool files waiting for PostgreSQL (journals excluded: they mirror live memory)."""

    files: int = 0
    bytes: int = 0
    oldest_created_ns: int | None = None  # when the oldest file got its first record

    def oldest_age_seconds(self, now_ns: int | None = None) -> float:
        if self.oldest_created_ns is None:
            return 0.0
        return max(0.0, ((now_ns or time.time_ns()) - self.oldest_created_ns) / 1e9)


def backlog(directory: Path) -> Backlog:
    """Measure the spool from outside the writers (the metrics exporter does, at each scrape)."""
    files = size = 0
    oldest: int | None = None
    for path in directory.glob(SPOOL_GLOB):
        try:
            size += path.stat().st_size
            created = int(_creation_order(path), 16)
        except (FileNotFoundError, ValueError):  # replayed meanwhile, or not one of ours
            continue
        files += 1
        oldest = created if oldest is None else min(oldest, created)
    return Backlog(files, size, oldest)


def _replayable_files(directory: Path) -> Iterator[Path]:
    for pattern in REPLAYABLE_GLOBS:
        yield from directory.glob(pattern)


class ClaimedFile:
    """A spool file this process holds the lock on until remove() or release()."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def batches(self, size: int, on_bad_line: Callable[[int, str], None]) -> Iterator[list[dict[str, Any]]]:
        """The file's records in lists of up to ``size``, as ``decode_values`` gives them."""
        batch: list[dict[str, Any]] = []
        with open(self._fd, "rb", closefd=False) as stream:
            for number, line in enumerate(stream, start=1):
                try:
                    batch.append(decode_values(line))
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
        return any(_replayable_files(self.directory))

    def claim_files(self) -> Iterator[ClaimedFile]:
        """Lock and yield every spool file and journal that no live writer holds."""
        for path in sorted(_replayable_files(self.directory), key=_creation_order):
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
        """Re-measure the directory: other processes add to it and replays shrink it.

        Journals count too, those of live writers included: the bound is on the disk space used.
        """
        total = 0
        for path in _replayable_files(self.directory):
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
            self._fd, self._path = _create_locked(self.directory, SPOOL_PREFIX)
            log.info("spooling log records to %s", self._path)
        return self._fd

    def _sync_locked(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False


class JournalFile:
    """One journal: the records appended to it and how many of them are not settled yet."""

    def __init__(self, directory: Path) -> None:
        self.fd, self.path = _create_locked(directory, JOURNAL_PREFIX)
        self.opened_at = time.monotonic()
        self.size = 0
        self.unsettled = 0

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


class Journal:
    """Write-ahead copies of submitted records, so that a killed process loses none of them.

    ``append()`` writes one line before the record is queued in memory: one write(2) on an
    O_APPEND file, no fsync, since the kernel's page cache survives the death of the process
    (not the death of the machine; the in-memory queue does not either). The writer thread
    calls ``rotate()`` to retire the active file when it is old enough (``append()`` retires it
    when it is big enough), and a retired file is deleted once every record in it is settled:
    written to PostgreSQL, moved into the spool, rejected or dropped. Each file stays flocked
    until deleted, so no other process replays it while its owner lives; a killed owner's files
    are claimed by ``Spool.claim_files()`` like spool files.

    Space: journals are not checked against the spool bound when appended to (a record in memory
    is better off with its copy on disk), but they are short-lived, a rotation period or the
    in-memory queue at most, and ``Spool.refresh_size()`` counts them like spool files.
    """

    def __init__(
        self,
        directory: Path,
        rotate_bytes: int = JOURNAL_ROTATE_BYTES,
        rotate_seconds: float = JOURNAL_ROTATE_SECONDS,
    ) -> None:
        self.directory = directory
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._lock = threading.Lock()
        self._active: JournalFile | None = None
        self._retired: list[JournalFile] = []
        self._closed = False

    def append(self, line: bytes) -> JournalFile | None:
        """Journal one record; the file must be passed to ``settle()`` once the record is settled."""
        with self._lock:
            if self._closed:
                return None
            active = self._active
            if active is None or active.size >= self._rotate_bytes:
                if active is not None:
                    self._retired.append(active)
                active = self._active = JournalFile(self.directory)
            _write_all(active.fd, line)
            active.size += len(line)
            active.unsettled += 1
            return active

    def settle(self, files: Iterable[JournalFile | None]) -> None:
        counts = Counter(file for file in files if file is not None)
        if not counts:
            return
        with self._lock:
            for file, amount in counts.items():
                file.unsettled -= amount
            done = self._take_settled()
        for file in done:
            file.remove()

    def rotate(self) -> None:
        """Retire the active file once old enough; delete retired files whose records are settled."""
        now = time.monotonic()
        with self._lock:
            active = self._active
            if active is not None and now - active.opened_at >= self._rotate_seconds:
                self._retired.append(active)
                self._active = None
            done = self._take_settled()
        for file in done:
            file.remove()

    def close(self) -> None:
        """Delete the files whose records are settled; unlock the others for the next replayer."""
        with self._lock:
            self._closed = True
            files = self._retired + ([self._active] if self._active is not None else [])
            self._active, self._retired = None, []
        for file in files:
            if file.unsettled <= 0:
                file.remove()
            else:
                log.warning("journal %s keeps %d record(s) for replay", file.path.name, file.unsettled)
                os.close(file.fd)

    def _take_settled(self) -> list[JournalFile]:
        done = [file for file in self._retired if file.unsettled <= 0]
        if done:
            self._retired = [file for file in self._retired if file.unsettled > 0]
        return done
