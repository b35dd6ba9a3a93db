"""Runbook Part 1 and the success criteria about PostgreSQL, checked on the lab."""

from __future__ import annotations

import uuid

from conftest import (
    DATABASE,
    DB_USER,
    GATEWAY2_ADDRESS,
    GATEWAY_ADDRESS,
    GATEWAY_HOST,
    STANDBY_ADDRESS,
    Secret,
    sql_as_postgres,
    sql_from_gateway,
    startup_probe,
)


def test_postgresql_17_is_installed(pg_host):
    package = pg_host.package("postgresql-17")
    assert package.is_installed
    assert package.version.startswith("17")


def test_cluster_unit_is_running_and_enabled(pg_host):
    service = pg_host.service("postgresql@17-main")
    assert service.is_running
    assert service.is_enabled


def test_server_listens_on_all_addresses_port_5432(pg_host):
    assert pg_host.socket("tcp://0.0.0.0:5432").is_listening


def test_password_encryption_is_scram():
    assert sql_as_postgres("SHOW password_encryption") == "scram-sha-256"


def test_login_role_secret_is_a_scram_verifier():
    stored = sql_as_postgres(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{DB_USER}'")
    assert stored.startswith("SCRAM-SHA-256$4096:")


def test_database_is_utf8_with_c_collation():
    row = sql_as_postgres(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype"
        f" FROM pg_database WHERE datname = '{DATABASE}'"
    )
    assert row == "UTF8|C|C"


def test_login_role_has_the_runbook_privileges():
    database_privs = sql_as_postgres(
        f"SELECT has_database_privilege('{DB_USER}', '{DATABASE}', 'CONNECT'),"
        f" has_database_privilege('{DB_USER}', '{DATABASE}', 'CREATE'),"
        f" has_schema_privilege('{DB_USER}', 'public', 'USAGE'),"
        f" has_schema_privilege('{DB_USER}', 'public', 'CREATE')"
    )
    assert database_privs == "t|t|t|t"
    default_privs = sql_as_postgres(
        "SELECT d.defaclobjtype, array_to_string(d.defaclacl, ',') FROM pg_default_acl d"
        " JOIN pg_namespace n ON n.oid = d.defaclnamespace WHERE n.nspname = 'public' ORDER BY 1"
    )
    by_type = dict(line.split("|", 1) for line in default_privs.splitlines())
    assert f"{DB_USER}=arwdDxtm/postgres" in by_type["r"].split(",")  # tables: ALL
    assert f"{DB_USER}=rwU/postgres" in by_type["S"].split(",")  # sequences: ALL


def test_pg_hba_allows_exactly_the_gateway_hosts(pg_host):
    rules = [
        " ".join(line.split())
        for line in pg_host.file("/etc/postgresql/17/main/pg_hba.conf").content_string.splitlines()
        if (DB_USER in line or "replication" in line) and line.startswith("host")
    ]
    assert rules == [
        "host replication all 127.0.0.1/32 scram-sha-256",
        "host replication all ::1/128 scram-sha-256",
        f"hostssl replication replicator {STANDBY_ADDRESS}/32 scram-sha-256",  # the standby only
        f"hostssl {DATABASE} {DB_USER} {GATEWAY_ADDRESS}/32 scram-sha-256",
        f"hostssl {DATABASE} {DB_USER} {GATEWAY2_ADDRESS}/32 scram-sha-256",
    ]


def test_gateway_logs_in_and_creates_a_table_in_public(db_password):
    table = f"verify_probe_{uuid.uuid4().hex[:8]}"
    result = sql_from_gateway(
        db_password,
        f"CREATE TABLE public.{table} (id int)",
        f"INSERT INTO public.{table} VALUES (1)",
        f"SELECT current_user, count(*) FROM public.{table} GROUP BY 1",
        f"DROP TABLE public.{table}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{DB_USER}|1"


def test_gateway_with_a_wrong_password_is_refused(db_password):
    result = sql_from_gateway(Secret(db_password + "-wrong"), "SELECT 1")
    assert result.returncode == 3
    assert "password authentication failed" in result.stdout


def test_a_plaintext_connection_from_the_gateway_is_refused():
    answer = startup_probe(GATEWAY_HOST)  # a StartupMessage without SSLRequest
    assert answer.startswith("E"), answer
    assert "no pg_hba.conf entry" in answer and "no encryption" in answer


def test_the_gateway_is_asked_for_scram_over_tls(db_password):
    result = sql_from_gateway(
        db_password, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "True|TLSv1.3"
