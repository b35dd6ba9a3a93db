"""Fixtures for the module tests: the throwaway PostgreSQL cluster of the package tests.

`pg_cluster` (module): a running cluster (tests/gateway/pgcluster.py) with role litellm_user
and database litellm_db; `.url`, `.base` (Unix socket directory, superuser by trust), `.port`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# One helper for every suite that needs a real PostgreSQL: import it from the package tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from pgcluster import PgCluster  # noqa: E402 - found through the path added above


@pytest.fixture(scope="module")
def pg_cluster(request: pytest.FixtureRequest) -> PgCluster:
    cluster = PgCluster()
    request.addfinalizer(cluster.destroy)  # also when create() fails half-way
    return cluster.create()
