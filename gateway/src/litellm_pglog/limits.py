"""Every fixed bound of the package, under one name each.

Bounds an operator may tune are ``Settings`` fields (with their LITELLM_PGLOG_* variables);
the ones here are not meant to be tuned per host. Column lengths are not repeated here: the
writer reads them from the schema (``models.py``).
"""

from __future__ import annotations

# ---- what a log record may hold -------------------------------------------------------------
# error_message is TEXT (unbounded) in the schema: this keeps one row, and one journal line, small.
ERROR_MESSAGE_MAX_CHARS = 2000
# The integer columns are PostgreSQL INTEGER: values outside it are stored as NULL.
INT32_MAX = 2**31 - 1

# ---- the HTTP layer (middleware) ------------------------------------------------------------
# A response body (or one pending SSE line) is inspected for usage and errors up to this size.
CAPTURED_BODY_MAX_BYTES = 1024 * 1024
# How much of an oversized request body is read and thrown away so that the client, still
# sending, receives the 413 instead of a connection reset; beyond this the connection is closed.
DISCARDED_BODY_MAX_BYTES = 64 * 1024 * 1024
# The lifespan shutdown waits this long for the writer to flush before leaving the rest spooled.
WRITER_STOP_TIMEOUT_SECONDS = 10.0
# atexit does the same for a writer that no lifespan stops (hooks used without our ASGI app).
WRITER_EXIT_TIMEOUT_SECONDS = 5.0

# ---- the keys file ---------------------------------------------------------------------------
# A key lookup re-checks the keys file (one os.stat) when its last check is this old, so an added
# or revoked key is in force for every request that starts this long after the file was replaced.
KEYS_CHECK_INTERVAL_SECONDS = 0.25

# ---- the writer -----------------------------------------------------------------------------
# First retry after PostgreSQL failed; doubled up to Settings.retry_max_seconds.
FIRST_RETRY_SECONDS = 0.5
# Spool files of workers that exited are picked up by whichever worker looks next.
SPOOL_SCAN_SECONDS = 30.0
# A journal is retired at this size or age; it is deleted once all its records are settled.
JOURNAL_ROTATE_BYTES = 4 * 1024 * 1024
JOURNAL_ROTATE_SECONDS = 2.0
# Records per batch when draining a backlog: a spool replay, or an in-memory queue at least half
# full (Settings.batch_size if larger). One statement per batch, so the bigger the cheaper; a few
# thousand rows take tens of milliseconds, far below the database call deadline.
BACKLOG_BATCH_SIZE = 5000

# ---- the database connection --------------------------------------------------------------
# Default of Settings.db_timeout_seconds (LITELLM_PGLOG_DB_TIMEOUT_SECONDS): the bound on
# connecting and on any one database call of the writer; also db_init's connect timeout.
DB_TIMEOUT_SECONDS = 5.0

# ---- the connection pool --------------------------------------------------------------------
POOL_SIZE = 2
POOL_MAX_OVERFLOW = 1
POOL_TIMEOUT_SECONDS = 10
POOL_RECYCLE_SECONDS = 1800
# TCP keepalive probes notice a peer host that vanished while a connection sat idle.
KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
# libpq ignores connect_timeout values below 2 seconds (it uses 2).
MIN_CONNECT_TIMEOUT_SECONDS = 2
