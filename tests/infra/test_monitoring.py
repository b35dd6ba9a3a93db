"""Observability in the lab: every Prometheus target up, the rules loaded, least-privilege
exporters, and an alert seen end to end (PostgreSQL stopped -> records wait in the gateway's
spool -> PglogRecordsSpooling fires at the lab's webhook -> PostgreSQL back -> resolved).

Prometheus and the webhook receiver are read from inside hx-monitoring-server.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import yaml
from conftest import MONITORING_HOST, POSTGRES_HOST, docker_exec, lab_requests, logged_rows, sql_as_postgres

PROMETHEUS = "http://192.168.10.21:9090"
ALERTS_FILE = "/var/lib/alert-webhook/alerts.jsonl"
LAB_HOSTS = 8
# Two gateways, two database hosts (primary and standby), one balancer (issue 13).
EXPECTED_JOBS = {
    "prometheus": 1,
    "alertmanager": 1,
    "litellm_gateway": 2,
    "node": LAB_HOSTS,
    "postgres": 2,
    "haproxy": 1,
}
RULES_DIR = Path(__file__).resolve().parents[2] / "roles" / "prometheus" / "files" / "rules"
# Every alert the role ships must be loaded in the lab's Prometheus.
ALERTS = {
    rule["alert"]
    for path in RULES_DIR.glob("*.yml")
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
}
PG_SERVICE = "postgresql@17-main"
SPOOL_ALERT = "PglogRecordsSpooling"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "alert drill"}], "max_tokens": 5}
CHAT_REQUEST = {"method": "POST", "path": "/v1/chat/completions", "key": "test_key", "json": CHAT}


def prometheus(path: str) -> dict:
    fetch = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())"
    result = docker_exec(MONITORING_HOST, ["python3", "-c", fetch, PROMETHEUS + path])
    assert result.returncode == 0, result.stderr[-1000:]
    return json.loads(result.stdout)["data"]


def query(expr: str) -> list[dict]:
    return prometheus(f"/api/v1/query?query={quote(expr)}")["result"]


def notifications() -> list[dict]:
    result = docker_exec(MONITORING_HOST, ["cat", ALERTS_FILE])
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def spool_alerts(status: str, after: float) -> list[float]:
    """When PglogRecordsSpooling notifications with this status reached the webhook (epoch s)."""
    return sorted(
        _epoch(note["receivedAt"])
        for note in notifications()
        if _epoch(note["receivedAt"]) >= after
        and any(a["labels"]["alertname"] == SPOOL_ALERT and a["status"] == status for a in note["alerts"])
    )


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def wait_for(condition, timeout: float, step: float = 2.0, tick=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        if tick:
            tick()
        time.sleep(step)
    return None


def test_every_target_is_up_and_printed():
    def all_up():
        targets = prometheus("/api/v1/targets?state=active")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, timeout=60) or prometheus("/api/v1/targets?state=active")["activeTargets"]
    print("\njob              instance               health")
    for target in sorted(targets, key=lambda t: (t["labels"]["job"], t["labels"]["instance"])):
        print(f"{target['labels']['job']:<16} {target['labels']['instance']:<22} {target['health']}")
    down = [(t["labels"], t.get("lastError")) for t in targets if t["health"] != "up"]
    assert not down
    jobs = {}
    for target in targets:
        jobs[target["labels"]["job"]] = jobs.get(target["labels"]["job"], 0) + 1
    assert jobs == EXPECTED_JOBS


def test_the_alert_rules_are_loaded_and_none_fires_on_a_healthy_lab():
    groups = prometheus("/api/v1/rules?type=alert")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded >= ALERTS
    firing = [
        alert["labels"]["alertname"]
        for alert in prometheus("/api/v1/alerts")["alerts"]
        if alert["state"] == "firing"
    ]
    assert firing == []


def test_the_gateway_is_scraped_with_its_workers_summed_and_the_spool_measured():
    assert query('pglog_spool_files{job="litellm_gateway"}')[0]["value"][1] == "0"
    rows = query('sum(pglog_rows_written_total{job="litellm_gateway"})')
    assert rows and float(rows[0]["value"][1]) > 0
    assert float(query('pg_up{job="postgres"}')[0]["value"][1]) == 1


def test_every_certificate_s_expiry_is_published():
    series = query("tls_certificate_not_after_timestamp_seconds")
    published = {(s["metric"]["instance"], s["metric"]["path"]) for s in series}
    assert ("192.168.10.18:9100", "/etc/ssl/litellm/litellm.crt") in published
    assert ("192.168.10.19:9100", "/etc/ssl/litellm/postgres.crt") in published
    days_left = (min(float(s["value"][1]) for s in series) - time.time()) / 86400
    assert 300 < days_left <= 366  # host certificates are issued for 365 days


def test_the_postgres_exporter_role_only_monitors():
    row = sql_as_postgres(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolpassword IS NULL,"
        " array_to_string(ARRAY(SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid"
        " WHERE m.member = r.oid ORDER BY 1), ',') FROM pg_authid r WHERE rolname = 'prometheus'"
    )
    assert row == "f|f|f|t|pg_monitor"


def test_a_database_outage_raises_the_spool_alert_and_its_end_resolves_it():
    sent: list[str] = []

    def send_one():
        answer = lab_requests([CHAT_REQUEST])
        assert answer[0]["status"] == 200  # clients never notice the outage
        sent.append(answer[0]["call_id"])

    stopped = time.time()
    assert docker_exec(POSTGRES_HOST, ["systemctl", "stop", PG_SERVICE]).returncode == 0
    try:
        fired = wait_for(lambda: spool_alerts("firing", stopped), timeout=180, tick=send_one)
    finally:
        started = time.time()
        assert docker_exec(POSTGRES_HOST, ["systemctl", "start", PG_SERVICE]).returncode == 0
    assert fired, "PglogRecordsSpooling never reached the webhook while PostgreSQL was down"
    fired_after = fired[0] - stopped
    resolved = wait_for(lambda: spool_alerts("resolved", started), timeout=180)
    assert resolved, "PglogRecordsSpooling was not resolved after PostgreSQL came back"
    resolved_after = resolved[0] - started
    print(
        f"\nspool alert: fired {fired_after:.0f} s after PostgreSQL stopped ({len(sent)} requests"
        f" meanwhile), resolved {resolved_after:.0f} s after it started"
    )
    rows = logged_rows(sent, timeout=60)
    assert len(rows) == len(sent) and all(row["copies"] == 1 for row in rows.values())
