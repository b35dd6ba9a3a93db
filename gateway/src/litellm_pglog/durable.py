"""Where the writer keeps records on disk: journal, spool, rejected file; and loud drops.

See ``spool.py`` for the files themselves. This class adds the writer's policy around them:
journal failures degrade to "in memory only" instead of failing a request, a full spool drops
records with a count and an error line, and a refused record is kept apart for an operator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from litellm_pglog.db import describe_db_error
from litellm_pglog.metrics import WriterMetrics
from litellm_pglog.records import LogRecord
from litellm_pglog.spool import ClaimedFile, Journal, JournalFile, Spool

log = logging.getLogger("litellm_pglog")

T = TypeVar("T")


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, each produced on a helper thread while the caller works on the previous one.

    A replay reads, decodes and cleans the next batch (Python) while PostgreSQL takes the current
    one (psycopg2 waits without the GIL). Closing this generator waits for the helper to finish its
    item, so the caller may close the file behind ``items`` afterwards.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="litellm-pglog-read") as helper:
        pending = helper.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = helper.submit(next, items, None)
            yield item


class DurableStore:
    """The journal and the spool of one writer, with its counting and its log lines."""

    def __init__(self, directory: Path, max_bytes: int, metrics: WriterMetrics) -> None:
        self.spool = Spool(directory, max_bytes)
        self.journal = Journal(directory)
        self._metrics = metrics
        self._journal_failing = False

    @property
    def directory(self) -> Path:
        return self.spool.directory

    # ---- the journal: a copy of every record held in memory -----------------------------------

    def journal_line(self, line: bytes) -> JournalFile | None:
        """Journal one record's line; None when the journal cannot be written (logged once)."""
        try:
            journal_file = self.journal.append(line)
        except Exception as exc:  # e.g. disk full: the record is still queued, only a crash loses it
            if not self._journal_failing:
                self._journal_failing = True
                log.error("cannot write the journal in %s: %s", self.directory, exc)
            return None
        if self._journal_failing:
            self._journal_failing = False
            log.warning("writing the journal in %s again", self.directory)
        return journal_file

    def settle(self, journal_files: Iterable[JournalFile | None]) -> None:
        self.journal.settle(journal_files)

    # ---- the spool: records PostgreSQL could not take (yet) -----------------------------------

    def spool_lines(self, lines: list[bytes], sync: bool) -> None:
        """Append records' lines to the spool; what does not fit under its bound is dropped,
        counted and logged."""
        if not lines:
            return
        try:
            stored = self.spool.append(lines, sync=sync)
        except OSError as exc:
            stored = 0
            log.error("cannot write the spool in %s: %s", self.directory, exc)
        self._metrics.count("spooled", stored)
        if stored < len(lines):
            self.drop(len(lines) - stored, f"spool full ({self.spool.max_bytes} bytes)")

    def claim_files(self) -> Iterator[ClaimedFile]:
        """Seal this writer's spool file and claim every file no live writer holds."""
        self.spool.seal()
        return self.spool.claim_files()

    def replay(
        self,
        claimed: ClaimedFile,
        batch_size: int,
        prepare: Callable[[list[dict[str, Any]]], T],
        write: Callable[[T], None],
    ) -> None:
        """Hand the file's records to ``write`` in batches, each made by ``prepare``; then delete it.

        Reading and ``prepare`` run a batch ahead, on a helper thread (see ``read_ahead``). Should
        ``write`` raise, the file is released for a later attempt and the error re-raised.
        """
        prepared = map(prepare, claimed.batches(batch_size, self._on_bad_line))
        try:
            with closing(read_ahead(prepared)) as batches:
                for batch in batches:
                    write(batch)
        except Exception:
            claimed.release()
            raise
        claimed.remove()
        log.info("replayed spool file %s", claimed.path.name)

    def _on_bad_line(self, number: int, reason: str) -> None:
        self.drop(1, f"unreadable spool line {number} ({reason})")

    # ---- records that cannot be kept ----------------------------------------------------------

    def reject(self, record: LogRecord, exc: BaseException) -> None:
        """Keep a record PostgreSQL refused for good where replays never pick it up again."""
        reason = describe_db_error(exc)
        self.spool.reject(json.dumps({"error": reason, "record": record.to_json_dict()}).encode() + b"\n")
        self._metrics.count("rejected")
        log.error(
            "PostgreSQL refused the log record for request %s (%s); kept in %s",
            record.request_id,
            reason,
            self.directory,
        )

    def drop(self, amount: int, reason: str) -> None:
        self._metrics.count("dropped", amount)
        log.error("LOG RECORDS LOST: dropped %d record(s): %s", amount, reason)

    def close(self) -> None:
        """Seal the spool file and the journal for whichever process replays next."""
        self.spool.seal()
        self.journal.close()
