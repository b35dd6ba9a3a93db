"""Optional modules that cannot be imported are tried once, then fail at once (optional_imports.py).

LiteLLM imports some optional integrations inside per-request code; without the block every
request loaded and ran such a module up to its failing line again.
"""

from __future__ import annotations

import builtins
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litellm_pglog.optional_imports import PER_REQUEST_OPTIONAL_MODULES, block_unloadable

# A module that counts how often its code runs, then fails like litellm.integrations.otel.logger.
FAILING = """\
import builtins
builtins.optional_import_runs = getattr(builtins, "optional_import_runs", 0) + 1
import no_such_dependency_anywhere
"""


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for throwaway modules; their sys.modules entries removed afterwards."""
    sys.path.insert(0, str(tmp_path))
    names = ("pglog_test_failing", "pglog_test_fine")
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in names:
        sys.modules.pop(name, None)
    builtins.__dict__.pop("optional_import_runs", None)


def attempt(name: str) -> Exception | None:
    """What LiteLLM's per-request code does: import, swallow the failure."""
    try:
        __import__(name)
    except Exception as exc:  # noqa: BLE001 - the same broad except as LiteLLM's
        return exc
    return None


def test_a_failing_module_runs_once_then_imports_fail_without_running_it(modules):
    (modules / "pglog_test_failing.py").write_text(textwrap.dedent(FAILING))
    attempt("pglog_test_failing")
    attempt("pglog_test_failing")
    assert builtins.optional_import_runs == 2  # Python does not remember a failed import

    assert block_unloadable(["pglog_test_failing"]) == ["pglog_test_failing"]
    runs = builtins.optional_import_runs
    errors = [attempt("pglog_test_failing") for _ in range(100)]
    assert builtins.optional_import_runs == runs  # the module's code never ran again
    assert all(isinstance(error, ModuleNotFoundError) for error in errors)  # the same exception type


def test_an_importable_module_is_left_alone(modules):
    (modules / "pglog_test_fine.py").write_text("VALUE = 1\n")
    assert block_unloadable(["pglog_test_fine"]) == []
    assert sys.modules["pglog_test_fine"].VALUE == 1


def test_litellm_s_per_request_otel_import_costs_nothing_once_blocked():
    """The real case: without opentelemetry-sdk, LiteLLM's OTel V2 logger cannot load. Prints both costs."""
    name = PER_REQUEST_OPTIONAL_MODULES[0]
    saved = sys.modules.pop(name, "absent")
    try:
        attempt(name)  # warm: LiteLLM and what the module imports before failing are loaded
        costs = {}
        for label in ("as LiteLLM ships", "blocked"):
            if label == "blocked" and not block_unloadable([name]):
                pytest.skip(f"{name} imports in this environment (opentelemetry-sdk installed)")
            started = time.process_time()
            errors = [attempt(name) for _ in range(50)]
            costs[label] = (time.process_time() - started) / 50 * 1000
            assert all(isinstance(error, ImportError) for error in errors)
        shipped, blocked = costs["as LiteLLM ships"], costs["blocked"]
        print(f"\n{name}: {shipped:.3f} ms of CPU per attempt, {blocked:.4f} ms blocked")
    finally:
        sys.modules.pop(name, None)
        if saved != "absent":
            sys.modules[name] = saved
