"""Fixtures for the gateway package tests: a real PostgreSQL cluster, a fresh database per test.

`pg_cluster` (session): the running cluster; `.url` points at litellm_db, `.stop()`, `.start()`,
`.restart()`, `.url_for(database, password=..., port=...)`.
`pg_url` (function): URL of a new empty database owned by litellm_user, dropped afterwards.
`migrated_url` (function): like pg_url, with the schema upgraded to head.
`database_url` / `logged` (module): one migrated database and a reader of its log rows,
shared by the tests of a proxy test module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# As the role's environment file sets it: tests that import litellm in-process would otherwise try
# to download its model cost map three times (about 10 s of retries on a machine without internet).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgcluster import PgCluster  # noqa: E402 - the helper lives next to this file
from proxy_harness import LogReader, migrated_database  # noqa: E402


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster().create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    if not pg_cluster.is_running():
        pg_cluster.start()
    name = pg_cluster.create_database()
    yield pg_cluster.url_for(name)
    if not pg_cluster.is_running():  # a test stopped the server and failed before restarting it
        pg_cluster.start()
    pg_cluster.drop_database(name)


@pytest.fixture
def migrated_url(pg_url: str) -> str:
    from litellm_pglog.schema import upgrade_schema

    upgrade_schema(pg_url)
    return pg_url


@pytest.fixture(scope="module")
def database_url(pg_cluster: PgCluster) -> Iterator[str]:
    with migrated_database(pg_cluster) as url:
        yield url


@pytest.fixture(scope="module")
def logged(database_url: str) -> Iterator[LogReader]:
    reader = LogReader(database_url)
    yield reader
    reader.dispose()
