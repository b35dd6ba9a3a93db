"""Issue 13 on the live lab: a hot standby streaming from the primary over TLS, two gateways
behind HAProxy (TLS passed through), the balancer's admin interface for admins only.

The drills under load (1 vs 2 gateways, failover) are tests/ha, run by scripts/test after this.
"""

from __future__ import annotations

import pytest
from conftest import (
    BALANCER_ADDRESS,
    BALANCER_HOST,
    GATEWAY2_HOST,
    GATEWAY_HOST,
    STANDBY_ADDRESS,
    STANDBY_HOST,
    docker_exec,
    lab_requests,
    logged_rows,
    sql_as_postgres,
)

BALANCER_URL = f"https://{BALANCER_ADDRESS}:4000"
BACKEND = "litellm_gateways"

# The runtime API of HAProxy (a UNIX socket, admin level, root only) from inside the balancer.
_RUNTIME = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock');"
    " s.sendall(sys.argv[1].encode() + b'\\n'); print(s.makefile().read())"
)


def runtime(command: str) -> str:
    result = docker_exec(BALANCER_HOST, ["python3", "-c", _RUNTIME, command])
    assert result.returncode == 0, result.stderr
    return result.stdout


def backend_servers() -> dict[str, dict[str, str]]:
    """`show stat` of the gateways' backend: server name -> its CSV fields."""
    header, *lines = runtime("show stat").splitlines()
    names = header.lstrip("# ").split(",")
    rows = [dict(zip(names, line.split(","), strict=False)) for line in lines if line]
    return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["svname"] != "BACKEND"}


# ---- PostgreSQL: the hot standby -----------------------------------------------------------------


def test_the_standby_streams_from_the_primary_over_tls():
    row = sql_as_postgres(
        "SELECT r.state, s.ssl, s.version FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
        f" WHERE r.client_addr = '{STANDBY_ADDRESS}'"
    )
    assert row == "streaming|t|TLSv1.3"


def test_the_standby_replicates_through_its_slot():
    assert sql_as_postgres("SELECT slot_type, active FROM pg_replication_slots") == "physical|t"


def test_the_standby_is_read_only_and_has_the_logged_rows():
    assert sql_as_postgres("SELECT pg_is_in_recovery()", host=STANDBY_HOST) == "t"
    delete = ["runuser", "-u", "postgres", "--", "psql", "-d", "litellm_db", "-Xc", "DELETE FROM requests"]
    result = docker_exec(STANDBY_HOST, delete)
    assert result.returncode != 0 and "read-only transaction" in result.stderr
    older = "SELECT count(*) FROM requests WHERE created_at < now() - interval '10 seconds'"
    primary = int(sql_as_postgres(older))
    assert primary > 0 and int(sql_as_postgres(older, host=STANDBY_HOST)) >= primary


# ---- HAProxy in front of the gateways ------------------------------------------------------------


def test_both_gateways_are_up_at_the_balancer_by_their_readiness_check():
    servers = backend_servers()
    assert set(servers) == {GATEWAY_HOST, GATEWAY2_HOST}
    for name, row in servers.items():
        assert row["status"] == "UP", (name, row["status"])
        assert row["check_status"] == "L7OK", (name, row["check_status"])  # HTTPS readiness, CA verified


@pytest.mark.parametrize("rounds", [12])
def test_requests_through_the_balancer_reach_both_gateways_and_are_logged_once(rounds):
    before = {name: int(row["stot"]) for name, row in backend_servers().items()}
    # One connection per request (lab_client), so leastconn spreads them over both gateways.
    chat = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "key": "test_key",
        "json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "via the balancer"}]},
    }
    answers = lab_requests([chat] * rounds, parallel=4, base=BALANCER_URL)
    assert [answer["status"] for answer in answers] == [200] * rounds
    after = {name: int(row["stot"]) for name, row in backend_servers().items()}
    assert all(after[name] > before[name] for name in before), (before, after)
    rows = logged_rows([answer["call_id"] for answer in answers])
    assert len(rows) == rounds
    assert all(row["status"] == 200 and row["copies"] == 1 for row in rows.values())


def test_the_gateway_certificates_name_the_balancer():
    # TLS is passed through: a client of the balancer verifies the gateway's own certificate.
    sans = ["openssl", "x509", "-in", "/etc/ssl/litellm/litellm.crt", "-noout", "-ext", "subjectAltName"]
    for host in (GATEWAY_HOST, GATEWAY2_HOST):
        result = docker_exec(host, sans)
        assert f"IP Address:{BALANCER_ADDRESS}" in result.stdout and f"DNS:{BALANCER_HOST}" in result.stdout


def test_the_stats_page_and_metrics_listen_on_the_admin_address_only():
    listening = docker_exec(BALANCER_HOST, ["ss", "-Htln", "sport = :8404"]).stdout
    assert f"{BALANCER_ADDRESS}:8404" in listening
    assert "0.0.0.0:8404" not in listening and "*:8404" not in listening
