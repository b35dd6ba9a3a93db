"""The package's own log lines reach stderr (the journal) from LITELLM_LOG_LEVEL up.

Before ``configure_logging`` only WARNING and above appeared (Python's last-resort handler); the
INFO lines (log writer started, spooling, spool replayed, startup heap frozen) were lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from litellm_pglog.logsetup import PACKAGE_LOGGER, PackageHandler, configure_logging
from litellm_pglog.settings import SettingsError, load_settings


@pytest.fixture
def package_logger() -> Iterator[logging.Logger]:
    """The package logger, its handlers and level put back afterwards."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_info_lines_of_the_package_and_its_modules_reach_stderr_once(package_logger, capsys):
    configure_logging("INFO", journal=False)
    configure_logging("INFO", journal=False)  # a second call adds no second handler
    logging.getLogger("litellm_pglog").info("log writer started (pid %d)", 42)
    logging.getLogger("litellm_pglog.middleware").info("from a child logger")
    logging.getLogger("litellm_pglog").debug("below the level")
    assert capsys.readouterr().err.splitlines() == ["log writer started (pid 42)", "from a child logger"]
    assert sum(isinstance(handler, PackageHandler) for handler in package_logger.handlers) == 1


def test_under_systemd_each_line_carries_its_syslog_priority(package_logger, capsys):
    configure_logging("INFO", journal=True)
    package_logger.info("spooling log records to /var/lib/litellm/spool")
    package_logger.warning("PostgreSQL unavailable")
    package_logger.error("LOG RECORDS LOST: dropped 1 record(s)")
    assert capsys.readouterr().err.splitlines() == [
        "<6>spooling log records to /var/lib/litellm/spool",
        "<4>PostgreSQL unavailable",
        "<3>LOG RECORDS LOST: dropped 1 record(s)",
    ]


def test_the_journal_prefix_follows_journal_stream(package_logger, capsys, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    configure_logging("WARNING")
    package_logger.info("not shown at WARNING")
    package_logger.warning("shown")
    assert capsys.readouterr().err == "<4>shown\n"


@pytest.mark.parametrize(("raw", "level"), [("", "INFO"), ("warning", "WARNING"), (" DEBUG ", "DEBUG")])
def test_the_level_comes_from_litellm_log_level(raw, level):
    assert load_settings({"LITELLM_LOG_LEVEL": raw}).log_level == level


def test_an_unknown_level_is_refused_with_a_clear_error():
    with pytest.raises(SettingsError, match="LITELLM_LOG_LEVEL must be one of DEBUG, INFO"):
        load_settings({"LITELLM_LOG_LEVEL": "verbose"})
