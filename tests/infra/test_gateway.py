"""Runbook Part 2-4 and the success criteria about the gateway, checked on the lab.

Client requests are sent from the llm-upstream host to the gateway's network address
(like the runbook's curl to 192.168.10.18); keys travel on standard input only.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from conftest import (
    GATEWAY_ADDRESS,
    UPSTREAM_HOST,
    docker_exec,
    lab_requests,
    logged_rows,
    secrets_in,
    sql_as_postgres,
)

SERVICE = "litellm-gateway"
PORT = 4000
MODEL = "gpt-4o-mini"
MAX_EXPOSURE = 3.0


def chat(key: str, model: str = MODEL) -> dict[str, object]:
    """One runbook chat request from llm-upstream over HTTPS (the key travels on stdin)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello from testinfra"}],
        "max_tokens": 20,
    }
    answer = lab_requests([{"method": "POST", "path": "/v1/chat/completions", "key": key, "json": body}])[0]
    return {"status": answer["status"], "call_id": answer["call_id"]}


@pytest.fixture(scope="module")
def smoke_requests(secrets) -> dict[str, dict[str, object]]:
    """The runbook's Part 4 requests, sent once for the tests below."""
    return {
        "TEST_KEY": chat(secrets["test_key"]),
        "POC_VALIDATION_KEY": chat(secrets["poc_validation_key"]),
        "invalid key": chat("INVALID_KEY"),
        "invalid model": chat(secrets["test_key"], model="invalid-model"),
    }


# -- the service ---------------------------------------------------------------------------


def test_service_is_running_and_enabled(gateway_host):
    service = gateway_host.service(SERVICE)
    assert service.is_running
    assert service.is_enabled
    assert gateway_host.file(f"/etc/systemd/system/{SERVICE}.service").exists


def test_service_runs_uvicorn_as_litellm(gateway_host):
    show = gateway_host.check_output(f"systemctl show {SERVICE} -p User -p Group -p ExecStart -p MainPID")
    assert "User=litellm" in show
    assert "Group=litellm" in show
    assert "litellm_pglog.asgi:app" in show
    pid = re.search(r"MainPID=(\d+)", show).group(1)
    assert gateway_host.check_output(f"ps -o user= -p {pid}").strip() == "litellm"


def test_requests_leave_no_access_line_in_the_journal(gateway_host, secrets):
    """litellm_gateway_access_log is false: requests are logged in PostgreSQL, not also per line in
    the journal. The journal of the running service's invocation still has uvicorn's own lines."""
    assert chat(secrets["test_key"])["status"] == 200
    invocation = gateway_host.check_output(f"systemctl show -p InvocationID --value {SERVICE}")
    journal = gateway_host.check_output(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    assert "Application startup complete" in journal
    assert re.search(r'"POST /v1/chat/completions HTTP/[0-9.]+" \d{3}', journal) is None  # uvicorn's format
    assert "--no-access-log" in gateway_host.check_output(f"systemctl show -p ExecStart --value {SERVICE}")


def test_listens_on_port_4000(gateway_host):
    assert gateway_host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_liveliness_answers_200(gateway_host):
    status = gateway_host.check_output(
        f"curl -s --cacert /etc/ssl/litellm/ca.crt -o /dev/null -w '%{{http_code}}'"
        f" https://127.0.0.1:{PORT}/health/liveliness"
    )
    assert status == "200"


def test_the_metrics_exporter_listens_on_the_lab_address_only(gateway_host):
    assert gateway_host.service(f"{SERVICE}-metrics").is_running
    assert gateway_host.socket(f"tcp://{GATEWAY_ADDRESS}:9464").is_listening
    assert not gateway_host.socket("tcp://0.0.0.0:9464").is_listening


@pytest.mark.parametrize("unit", [SERVICE, f"{SERVICE}-metrics"])
def test_systemd_exposure_is_at_most_3(gateway_host, unit):
    report = gateway_host.check_output(f"systemd-analyze security {unit}.service --no-pager")
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", report).group(1))
    print(f"systemd-analyze exposure of {unit}: {exposure}")
    assert exposure <= MAX_EXPOSURE


# -- files, ownership and secrets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "user", "group", "mode"),
    [
        ("/opt/litellm", "litellm", "litellm", 0o755),
        ("/etc/litellm", "root", "litellm", 0o750),
        ("/etc/litellm/config.yaml", "root", "litellm", 0o640),
        ("/etc/litellm/litellm.env", "root", "litellm", 0o640),
        ("/etc/litellm/api_keys.json", "root", "litellm", 0o640),
        ("/etc/litellm/metrics.env", "root", "litellm", 0o640),
        ("/etc/litellm/metrics_token", "root", "litellm", 0o640),
        ("/run/litellm-gateway", "litellm", "litellm", 0o750),
        ("/var/log/litellm", "litellm", "litellm", 0o750),
        ("/var/lib/litellm", "litellm", "litellm", 0o750),
        ("/var/lib/litellm/spool", "litellm", "litellm", 0o750),
        ("/opt/litellm/db_init.py", "litellm", "litellm", 0o755),
        ("/opt/litellm/venv", "root", "root", 0o755),
    ],
)
def test_owner_and_mode(gateway_host, path, user, group, mode):
    target = gateway_host.file(path)
    assert target.exists
    assert (target.user, target.group, target.mode) == (user, group, mode)


def test_venv_uses_the_host_python_and_imports_the_package(gateway_host):
    out = gateway_host.check_output(
        "/opt/litellm/venv/bin/python -c "
        "'import sys, litellm_pglog, litellm, sqlalchemy, psycopg2; print(sys.version_info[:2])'"
    )
    assert out in {"(3, 13)", "(3, 12)"}


def test_config_points_at_the_package_and_env(gateway_host):
    config = gateway_host.file("/etc/litellm/config.yaml").content_string
    assert "custom_auth: litellm_pglog.auth.user_api_key_auth" in config
    assert "litellm_pglog.callbacks.usage_logger" in config
    assert "os.environ/OPENAI_API_KEY" in config
    assert "os.environ/LITELLM_MASTER_KEY" in config


def test_env_file_has_the_contract_keys(gateway_host, secrets):
    env = gateway_host.file("/etc/litellm/litellm.env").content_string
    names = set(re.findall(r"^([A-Z_]+)=", env, re.MULTILINE))
    assert {
        "LITELLM_DB_URL",
        "LITELLM_MASTER_KEY",
        "OPENAI_API_KEY",
        "LITELLM_LOCAL_MODEL_COST_MAP",
        "PYTHONUNBUFFERED",
        "LITELLM_LOG_LEVEL",
        "LITELLM_PGLOG_KEYS_FILE",
        "LITELLM_PGLOG_SPOOL_DIR",
    } <= names
    assert not names & {"DATABASE_URL", "DATABASE_HOST", "DATABASE_USERNAME", "DATABASE_NAME"}
    # The password appears only percent-encoded in the URL.
    assert secrets["db_password"] not in env or not re.search(r"[!@#%:/?]", secrets["db_password"])


def test_keys_file_holds_hashes_only(gateway_host, secrets):
    content = gateway_host.file("/etc/litellm/api_keys.json").content_string
    assert not secrets_in(content, secrets)
    entries = {entry["alias"]: entry for entry in json.loads(content)["keys"]}
    assert set(entries) == {"TEST_KEY", "POC_VALIDATION_KEY"}
    assert entries["TEST_KEY"]["sha256"] == hashlib.sha256(secrets["test_key"].encode()).hexdigest()
    assert (
        entries["POC_VALIDATION_KEY"]["sha256"]
        == hashlib.sha256(secrets["poc_validation_key"].encode()).hexdigest()
    )


def test_no_secret_in_unit_properties_or_process_arguments(gateway_host, secrets):
    show = gateway_host.check_output(f"systemctl show {SERVICE}")
    processes = gateway_host.check_output("ps -eo args")
    assert secrets_in(show, secrets) == []
    assert secrets_in(processes, secrets) == []


def test_no_secret_in_the_journal(gateway_host, secrets, smoke_requests):
    journal = gateway_host.check_output(f"journalctl -u {SERVICE} --no-pager -o cat")
    assert secrets_in(journal, secrets) == []


# -- the database and the request log -------------------------------------------------------


def test_schema_tables_exist():
    tables = set(sql_as_postgres("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())
    assert {"requests", "responses", "alembic_version"} <= tables


def test_both_runbook_keys_get_200(smoke_requests):
    assert smoke_requests["TEST_KEY"]["status"] == 200
    assert smoke_requests["POC_VALIDATION_KEY"]["status"] == 200


def test_invalid_key_gets_401(smoke_requests):
    assert smoke_requests["invalid key"]["status"] == 401


def test_invalid_model_gets_400(smoke_requests):
    assert smoke_requests["invalid model"]["status"] == 400


def test_every_request_is_logged_with_the_status_the_client_received(smoke_requests):
    call_ids = {name: str(answer["call_id"]) for name, answer in smoke_requests.items()}
    assert all(answer["call_id"] for answer in smoke_requests.values()), "a response lacks x-litellm-call-id"
    rows = logged_rows(list(call_ids.values()))
    for name, call_id in call_ids.items():
        assert call_id in rows, f"{name}: not in requests"
        assert rows[call_id]["status"] == smoke_requests[name]["status"], name
        assert rows[call_id]["responses"] == 1, f"{name}: {rows[call_id]['responses']} rows in responses"
        assert rows[call_id]["copies"] == 1, name


def test_logged_keys_are_aliases_not_keys(smoke_requests, secrets):
    call_id = smoke_requests["TEST_KEY"]["call_id"]
    assert call_id in logged_rows([str(call_id)])
    row = sql_as_postgres(f"SELECT api_key, user_id FROM requests WHERE request_id = '{call_id}'")
    assert row == "TEST_KEY|poc-tester"
    dump = sql_as_postgres("SELECT string_agg(coalesce(api_key, ''), ' ') FROM requests")
    assert secrets_in(dump, secrets) == []


# -- the lab's upstream stub -------------------------------------------------------------------


def test_stub_runs_with_a_dynamic_user_and_a_root_only_key_file():
    show = docker_exec(
        UPSTREAM_HOST, ["systemctl", "show", "llm-stub", "-p", "ActiveState", "-p", "DynamicUser"]
    )
    assert "ActiveState=active" in show.stdout
    assert "DynamicUser=yes" in show.stdout
    stat = docker_exec(UPSTREAM_HOST, ["stat", "-c", "%U:%G %a", "/etc/llm-stub/llm-stub.env"])
    assert stat.stdout.strip() == "root:root 600"


def test_stub_requires_the_upstream_key(secrets):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5}
    calls = [
        {"method": "POST", "path": "/v1/chat/completions", "key": key, "json": body}
        for key in ("wrong", secrets["upstream_api_key"])
    ]
    # On llm-upstream itself, over loopback (the stub is plain HTTP, lab only).
    without, with_key = lab_requests(calls, base="http://127.0.0.1:8080")
    assert without["status"] == 401
    assert with_key["status"] == 200
