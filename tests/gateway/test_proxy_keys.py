"""The static key store and its failure modes (no proxy needed except for the startup check)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from litellm_pglog.keys import KeyFileError, load_key_store, parse_key_file, presented_key
from proxy_harness import Gateway, GatewayKeys, Stub, sha256_hex


def keys_file(tmp_path, content: str):
    path = tmp_path / "api_keys.json"
    path.write_text(content)
    return path


def test_identifies_file_keys_and_the_master_key(tmp_path):
    keys = GatewayKeys()
    store = load_key_store(keys_file(tmp_path, keys.keys_file_content()), keys.master_key)
    assert (store.identify(keys.test_key).alias, store.identify(keys.test_key).user_id) == (
        "TEST_KEY",
        "poc-tester",
    )
    assert store.identify(keys.poc_key).alias == "POC_VALIDATION_KEY"
    assert store.identify(keys.master_key).is_master
    assert store.identify("wrong") is None
    assert store.identify("") is None
    assert store.identify(sha256_hex(keys.test_key)) is None  # the hash itself is not a key


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"keys": {}}', 'a "keys" list'),
        ('{"keys": [{"alias": "A", "sha256": "abc"}]}', "64 hex characters"),
        ('{"keys": [{"alias": "", "sha256": "' + "a" * 64 + '"}]}', "non-empty string"),
        ('{"keys": [{"alias": "master", "sha256": "' + "a" * 64 + '"}]}', "reserved"),
        (
            json.dumps({"keys": [{"alias": "A", "sha256": "a" * 64}, {"alias": "A", "sha256": "b" * 64}]}),
            "duplicate",
        ),
    ],
)
def test_malformed_key_files_give_one_clear_line(tmp_path, content, message):
    with pytest.raises(KeyFileError, match=message) as error:
        parse_key_file(content, "api_keys.json")
    assert "\n" not in str(error.value)


def test_unreadable_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read keys file"):
        load_key_store(tmp_path / "missing.json", None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer abc"}, "abc"),
        ({"authorization": "abc"}, None),  # LiteLLM ignores a header without the scheme too
        ({"x-litellm-api-key": "Bearer xyz", "authorization": "Bearer abc"}, "xyz"),
        ({"x-litellm-api-key": "xyz"}, "xyz"),
        ({}, None),
    ],
)
def test_presented_key_is_found_like_litellm_finds_it(headers, expected):
    assert presented_key(headers) == expected


def test_gateway_refuses_to_start_with_a_broken_keys_file(tmp_path):
    stub = Stub(tmp_path)  # never started: the proxy must stop before calling anything
    gateway = Gateway(tmp_path, stub, "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    gateway.write_files()
    (tmp_path / "api_keys.json").write_text('{"keys": [{"alias": "TEST_KEY", "sha256": "not-a-hash"}]}')
    command = [sys.executable, "-m", "uvicorn", "litellm_pglog.asgi:app", "--port", str(gateway.port)]
    result = subprocess.run(command, env=gateway.environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert '"sha256" must be 64 hex characters' in result.stderr
    assert "Application startup failed" in result.stderr
