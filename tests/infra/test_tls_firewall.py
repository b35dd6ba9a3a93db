"""Issue 10 on the live lab: TLS everywhere it carries secrets, a default-drop firewall on every
host, and an audit trail (connections, pgaudit, refused keys) in the journal.

Probes run inside the lab hosts (and, for the admin network, from this machine): a port is
"open" (connects), "closed" (refused: the firewall let it through, nothing listens) or
"filtered" (no answer: dropped by the firewall).
"""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import (
    BACKUP_HOST,
    BALANCER_ADDRESS,
    BALANCER_HOST,
    CA_FILE,
    GATEWAY2_ADDRESS,
    GATEWAY2_HOST,
    GATEWAY_ADDRESS,
    GATEWAY_HOST,
    MONITORING_HOST,
    POSTGRES_ADDRESS,
    POSTGRES_HOST,
    STANDBY_ADDRESS,
    STANDBY_HOST,
    UPSTREAM_HOST,
    docker_exec,
    lab_requests,
    sql_as_postgres,
    sql_from_gateway,
)

ADDRESSES = {
    GATEWAY_HOST: GATEWAY_ADDRESS,
    GATEWAY2_HOST: GATEWAY2_ADDRESS,
    POSTGRES_HOST: POSTGRES_ADDRESS,
    STANDBY_HOST: STANDBY_ADDRESS,
    UPSTREAM_HOST: "192.168.10.20",
    MONITORING_HOST: "192.168.10.21",
    BACKUP_HOST: "192.168.10.22",
    BALANCER_HOST: BALANCER_ADDRESS,
}
CANDIDATE_PORTS = (22, 4000, 5432, 8080, 8404, 8432, 9090, 9093, 9099, 9100, 9187, 9464)
_GATEWAY_REACHES = {POSTGRES_HOST: {5432}, STANDBY_HOST: {5432}, UPSTREAM_HOST: {8080}}
_DATABASE_PEER = {POSTGRES_HOST: STANDBY_HOST, STANDBY_HOST: POSTGRES_HOST}
_SCRAPED = {
    GATEWAY_HOST: {9100, 9464},
    GATEWAY2_HOST: {9100, 9464},
    POSTGRES_HOST: {9100, 9187},
    STANDBY_HOST: {9100, 9187},
    UPSTREAM_HOST: {9100},
    BACKUP_HOST: {9100},
    BALANCER_HOST: {9100, 8404},
}


def _reach(source: str, allowed: dict[str, set[int]]) -> dict[str, set[int]]:
    """Every other host: the given ports, nothing for the rest."""
    return {host: allowed.get(host, set()) for host in ADDRESSES if host != source}


# What each host may reach on each other host (everything else must be filtered). The two database
# hosts reach each other's PostgreSQL (replication, either way after a failover) and the
# repository's pgBackRest server, which reaches theirs.
OPEN = {
    GATEWAY_HOST: _reach(GATEWAY_HOST, _GATEWAY_REACHES),
    GATEWAY2_HOST: _reach(GATEWAY2_HOST, _GATEWAY_REACHES),
    **{
        db: _reach(db, {_DATABASE_PEER[db]: {5432}, BACKUP_HOST: {8432}})
        for db in (POSTGRES_HOST, STANDBY_HOST)
    },
    # The stub host is on the client networks: the API on both gateways and on the balancer.
    UPSTREAM_HOST: _reach(UPSTREAM_HOST, dict.fromkeys((GATEWAY_HOST, GATEWAY2_HOST, BALANCER_HOST), {4000})),
    MONITORING_HOST: _reach(MONITORING_HOST, _SCRAPED),
    BACKUP_HOST: _reach(BACKUP_HOST, {POSTGRES_HOST: {8432}, STANDBY_HOST: {8432}}),
    BALANCER_HOST: _reach(BALANCER_HOST, {GATEWAY_HOST: {4000}, GATEWAY2_HOST: {4000}}),
}
# From this machine (the lab's admin network): the API, the admin interfaces, the stub.
OPEN_FROM_ADMIN = {
    GATEWAY_HOST: {4000, 9464},
    GATEWAY2_HOST: {4000, 9464},
    POSTGRES_HOST: set(),
    STANDBY_HOST: set(),
    UPSTREAM_HOST: {8080},
    MONITORING_HOST: {9090, 9093},
    BACKUP_HOST: set(),
    BALANCER_HOST: {4000, 8404},
}
# The admin network is also allowed SSH everywhere; no sshd runs in the lab: "closed", not filtered.
CLOSED_FROM_ADMIN = {22}

_SCAN = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
targets = json.loads(sys.argv[1])
def probe(target):
    address, port = target
    try:
        socket.create_connection((address, port), timeout=2).close()
        return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return "filtered"
with ThreadPoolExecutor(max_workers=len(targets)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


def scan_from(host: str, targets: list[tuple[str, int]]) -> list[str]:
    result = docker_exec(host, ["python3", "-c", _SCAN, json.dumps(targets)])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def probe_here(target: tuple[str, int]) -> str:
    try:
        socket.create_connection(target, timeout=2).close()
        return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return "filtered"


@pytest.mark.parametrize("source", list(OPEN))
def test_each_host_reaches_exactly_the_intended_ports_of_the_others(source):
    targets = [(ADDRESSES[t], port) for t in OPEN[source] for port in CANDIDATE_PORTS]
    seen = dict(zip(targets, scan_from(source, targets), strict=True))
    for target_host, allowed in OPEN[source].items():
        address = ADDRESSES[target_host]
        opened = {port for port in CANDIDATE_PORTS if seen[(address, port)] == "open"}
        assert opened == allowed, (source, target_host, seen)
        others = {seen[(address, port)] for port in CANDIDATE_PORTS if port not in allowed}
        assert others == {"filtered"}, (source, target_host, seen)  # dropped, not refused


def test_the_admin_network_reaches_the_api_and_admin_interfaces_only():
    targets = [(ADDRESSES[h], port) for h in OPEN_FROM_ADMIN for port in CANDIDATE_PORTS]
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        seen = dict(zip(targets, pool.map(probe_here, targets), strict=True))
    for host, allowed in OPEN_FROM_ADMIN.items():
        for port in CANDIDATE_PORTS:
            expected = "open" if port in allowed else "closed" if port in CLOSED_FROM_ADMIN else "filtered"
            assert seen[(ADDRESSES[host], port)] == expected, (host, port)


def test_postgresql_gets_no_answer_from_outside_the_gateway_group():
    for source in (UPSTREAM_HOST, MONITORING_HOST):
        assert scan_from(source, [(POSTGRES_ADDRESS, 5432)]) == ["filtered"]


@pytest.mark.parametrize("host", list(ADDRESSES))
def test_the_loaded_rule_set_is_the_rendered_file(host):
    table = "inet litellm_firewall"
    live = docker_exec(host, ["nft", "-s", "list", "table", *table.split()])
    rendered = docker_exec(
        host,
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            f"nft -f /etc/nftables.d/litellm_firewall.nft && nft -s list table {table}",
        ],
    )
    assert live.returncode == 0 and rendered.returncode == 0, live.stderr + rendered.stderr
    assert live.stdout == rendered.stdout
    assert "policy drop" in live.stdout


# ---- PostgreSQL over TLS only ------------------------------------------------------------------


def test_a_gateway_connection_without_tls_is_refused(db_password):
    result = sql_from_gateway(db_password, "SELECT 1", sslmode="disable")
    assert result.returncode == 3
    assert "no pg_hba.conf entry" in result.stdout and "no encryption" in result.stdout


def test_a_client_trusting_another_ca_fails_against_postgresql(db_password):
    result = sql_from_gateway(db_password, "SELECT 1", rootcert="/etc/ssl/certs/ca-certificates.crt")
    assert result.returncode == 3
    assert "certificate verify failed" in result.stdout


def test_the_gateways_connections_are_encrypted():
    lab_requests([{"method": "GET", "path": "/v1/models", "key": "test_key"}])
    rows = sql_as_postgres(
        "SELECT count(*), bool_and(s.ssl), min(s.version)"
        " FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
        f" WHERE a.usename = 'litellm_user' AND a.client_addr = '{GATEWAY_ADDRESS}'"
    )
    count, all_ssl, version = rows.split("|")
    assert int(count) > 0 and all_ssl == "t" and version == "TLSv1.3"


# ---- the gateway over HTTPS only -----------------------------------------------------------------

_TLS_CLIENT = """
import http.client, json, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    if mode == "plain":
        connection = http.client.HTTPConnection(host, port, timeout=5)
    else:  # the system's CAs only: not the deployment CA
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=ssl.create_default_context())
    connection.request("GET", "/health/liveliness")
    print(json.dumps({"status": connection.getresponse().status}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "detail": str(exc)[:200]}))
"""


def tls_client(mode: str) -> dict:
    result = docker_exec(UPSTREAM_HOST, ["python3", "-c", _TLS_CLIENT, GATEWAY_ADDRESS, "4000", mode])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_client_trusting_another_ca_fails_against_the_gateway():
    answer = tls_client("other-ca")
    assert answer.get("error") == "SSLCertVerificationError", answer


def test_plain_http_on_the_api_port_gets_no_http_answer():
    answer = tls_client("plain")
    assert "status" not in answer, answer  # the TLS handshake fails; no redirect, no key sent in clear


def test_the_gateway_certificate_names_its_address_and_chains_to_the_deployment_ca():
    context = ssl.create_default_context(cafile=str(CA_FILE))
    raw = socket.create_connection((GATEWAY_ADDRESS, 4000), timeout=5)
    with context.wrap_socket(raw, server_hostname=GATEWAY_ADDRESS) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


# ---- audit trail in the journal ------------------------------------------------------------------


def journal(host: str, *selector: str) -> str:
    return docker_exec(host, ["journalctl", *selector, "--no-pager", "-o", "cat", "--since", "-10min"]).stdout


def test_pgaudit_logs_a_create_role_to_the_journal():
    role = f"audit_probe_{uuid.uuid4().hex[:8]}"
    sql_as_postgres(f"CREATE ROLE {role}; DROP ROLE {role}")
    lines = journal(POSTGRES_HOST, "-t", "postgres")
    assert "AUDIT: SESSION" in lines and f"CREATE ROLE {role}" in lines


def test_connections_are_logged_with_their_tls_version():
    lab_requests([{"method": "GET", "path": "/v1/models", "key": "test_key"}])
    lines = journal(POSTGRES_HOST, "-t", "postgres")
    assert (
        "connection authorized: user=litellm_user database=litellm_db SSL enabled (protocol=TLSv1.3" in lines
    )


def test_a_refused_key_is_logged_with_the_client_address_and_never_the_key():
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    answer = lab_requests([{"method": "GET", "path": "/v1/models", "key": wrong}])[0]
    assert answer["status"] == 401
    lines = journal(GATEWAY_HOST, "-u", "litellm-gateway")
    assert "refused unknown key from 192.168.10.20: GET '/v1/models' -> 401" in lines
    assert wrong not in lines
