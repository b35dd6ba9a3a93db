"""The Prometheus rules: promtool accepts them, their unit tests pass, and every alert is tested.

promtool comes from the Debian package ``prometheus`` (installed here when missing and root);
without it these tests fail: the rules would ship untested.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from litellm_pglog.exposition import SpoolBacklogSource
from litellm_pglog.metrics import SERIES

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "roles" / "prometheus" / "files" / "rules").glob("*.yml"))
TEST_FILES = sorted((REPO / "monitoring" / "prometheus" / "tests").glob("*.yml"))
ALERTS_REQUIRED = {
    "LiteLLMGatewayDown",
    "LiteLLMGateway5xxRatioHigh",
    "PglogRecordsDropped",
    "PglogRecordsSpooling",
    "PostgreSQLDown",
    "PostgreSQLReplicationLag",
    "PostgreSQLStandbyMissing",
    "BackupTooOld",
    "DiskAlmostFull",
    "TLSCertificateExpiring",
}


def run(*command: str | Path) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alert_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def alert_expectations() -> list[tuple[str, bool]]:
    """(alert name, fires?) for every alert_rule_test evaluation in the unit tests."""
    found = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            found += [
                (case["alertname"], bool(case["exp_alerts"])) for case in test.get("alert_rule_test", [])
            ]
    return found


def test_promtool_checks_the_rules(promtool: str) -> None:
    output = run(promtool, "check", "rules", *RULE_FILES)
    assert output.count("SUCCESS") == len(RULE_FILES)


def test_promtool_unit_tests_pass(promtool: str) -> None:
    output = run(promtool, "test", "rules", *TEST_FILES)
    assert output.count("SUCCESS") == len(TEST_FILES) and "FAILED" not in output


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= ALERTS_REQUIRED
    expectations = set(alert_expectations())
    wanted = {(name, fires) for name in names for fires in (True, False)}
    missing = sorted(wanted - expectations)
    assert not missing, f"alerts without a firing (True) or silent (False) unit test: {missing}"


def test_every_alert_says_why_and_how_bad() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_rules_use_the_gateways_metric_names() -> None:
    """The pglog counters as prometheus_client exposes them (a counter gets _total)."""
    text = "".join(path.read_text() for path in RULE_FILES)
    for counter in (SERIES.dropped, SERIES.spooled, SERIES.rows_written):
        assert f"{counter._name}_total" in text
    assert SERIES.queue_depth._name in text


def test_the_spool_alert_reads_the_exporters_backlog_gauge(tmp_path: Path) -> None:
    """PglogRecordsSpooling watches the on-disk backlog the metrics exporter measures."""
    names = {family.name for family in SpoolBacklogSource(tmp_path).collect()}
    spooling = next(rule for rule in alert_rules() if rule["alert"] == "PglogRecordsSpooling")
    assert "pglog_spool_oldest_record_age_seconds" in names
    assert "pglog_spool_oldest_record_age_seconds" in spooling["expr"]
