"""Fixtures of the monitoring tests: promtool, from the Debian package ``prometheus``."""

from __future__ import annotations

import pytest
from debian_tools import ensure_debian_package


@pytest.fixture(scope="session")
def promtool() -> str:
    """Fails (not skips) without promtool: the rules would ship untested."""
    found = ensure_debian_package("prometheus", "promtool")
    if found is None:
        pytest.fail("promtool is missing and could not be installed: apt-get install prometheus")
    return found
