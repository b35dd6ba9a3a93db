"""Key rotation without a restart: the key store follows the keys file, and keeps its keys on a bad one.

The unit tests drive the check interval with a fake clock; the last test rotates keys under load
through a real proxy with one worker (every worker process holds a store of its own; a second
worker would double the start time of the test).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from litellm_pglog.keys import KeyFileError, KeyFileReader, LiveKeyStore, load_key_store
from litellm_pglog.limits import KEYS_CHECK_INTERVAL_SECONDS
from proxy_harness import Gateway, LogReader, chat_body, running_gateway, sha256_hex

INTERVAL = KEYS_CHECK_INTERVAL_SECONDS
MASTER_KEY = f"mk-{secrets.token_urlsafe(24)}"


def new_key() -> str:
    return f"k-{secrets.token_urlsafe(24)}"


def keys_json(keys: dict[str, str]) -> str:
    """A keys file for ``{alias: key}``, as the Ansible template writes it (hashes only)."""
    entries = [
        {"alias": alias, "user_id": f"user-{alias}", "sha256": sha256_hex(key)} for alias, key in keys.items()
    ]
    return json.dumps({"keys": entries}, indent=2)


def replace_atomically(path: Path, content: str) -> None:
    """What Ansible's template module does: write a file next to the target, rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(content)
    os.replace(temporary, path)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Keys:
    a: str
    b: str
    c: str

    def file(self, *aliases: str) -> str:
        return keys_json({alias.upper(): getattr(self, alias) for alias in aliases})


@pytest.fixture
def keys() -> Keys:
    return Keys(new_key(), new_key(), new_key())


@pytest.fixture
def keys_path(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "api_keys.json"
    path.write_text(keys.file("a", "b"))
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(keys_path: Path, clock: FakeClock) -> LiveKeyStore:
    return LiveKeyStore(KeyFileReader(keys_path, MASTER_KEY), INTERVAL, clock)


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="litellm_pglog")
    return caplog


def accepted(store: LiveKeyStore, keys: Keys) -> set[str]:
    """Which of the keys a, b, c and the master key the store accepts now (each lookup may check)."""
    names = ("a", "b", "c")
    found = {name for name in names if store.identify(getattr(keys, name)) is not None}
    return found | ({"master"} if store.identify(MASTER_KEY) else set())


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if "not reloaded" in record.getMessage()]


def assert_no_key_material(caplog: pytest.LogCaptureFixture, keys: Keys) -> None:
    for key in (keys.a, keys.b, keys.c, MASTER_KEY):
        assert key not in caplog.text
        assert sha256_hex(key) not in caplog.text


def test_added_and_revoked_keys_take_effect_at_the_next_check(store, keys_path, keys, clock, warnings):
    assert accepted(store, keys) == {"a", "b", "master"}
    replace_atomically(keys_path, keys.file("a", "c"))

    clock.advance(INTERVAL / 2)  # no check due yet: the lookup does not even stat the file
    assert accepted(store, keys) == {"a", "b", "master"}
    clock.advance(INTERVAL / 2)
    assert accepted(store, keys) == {"a", "c", "master"}
    assert len(store) == 3  # a, c and the master key
    assert store.identify(keys.c).user_id == "user-C"
    assert [record.getMessage() for record in warnings.records] == [
        f"keys file {keys_path} reloaded: 3 keys, added C, removed B, changed none"
    ]
    assert_no_key_material(warnings, keys)


def test_a_new_key_under_an_existing_alias_replaces_the_old_one(store, keys_path, keys, clock, warnings):
    old_a = keys.a
    keys.a = new_key()
    replace_atomically(keys_path, keys.file("a", "b"))
    clock.advance(INTERVAL)
    assert accepted(store, keys) == {"a", "b", "master"}
    assert store.identify(old_a) is None
    assert warnings.records[-1].getMessage().endswith("added none, removed none, changed A")


def test_an_in_place_rewrite_is_seen_too(store, keys_path, keys, clock):
    keys_path.write_text(keys.file("a", "b", "c"))  # same inode: seen by its size and mtime
    clock.advance(INTERVAL)
    assert accepted(store, keys) == {"a", "b", "c", "master"}


def test_a_broken_file_keeps_the_old_keys_with_one_warning_per_distinct_failure(
    store, keys_path, keys, clock, warnings
):
    replace_atomically(keys_path, '{"keys": [{"alias": "C", "sha256": "' + sha256_hex(keys.c)[:10] + '"}]}')
    for _ in range(5):  # checked again and again, the file unchanged: nothing new to say
        clock.advance(INTERVAL)
        assert accepted(store, keys) == {"a", "b", "master"}
    assert failures(warnings) == [
        f"keys file {keys_path} not reloaded, the previous keys stay in force: "
        f'{keys_path}: keys[0]: "sha256" must be 64 hex characters (the sha256 of the key)'
    ]

    replace_atomically(keys_path, "{not json")  # another failure: one more line
    clock.advance(INTERVAL)
    assert accepted(store, keys) == {"a", "b", "master"}
    replace_atomically(keys_path, "{not json")  # the same failure in a new file: nothing new
    clock.advance(INTERVAL)
    assert accepted(store, keys) == {"a", "b", "master"}
    assert len(failures(warnings)) == 2
    assert "not valid JSON" in failures(warnings)[1]

    replace_atomically(keys_path, keys.file("a", "c"))  # fixed: loaded at the next check
    clock.advance(INTERVAL)
    assert accepted(store, keys) == {"a", "c", "master"}
    assert len(failures(warnings)) == 2
    assert_no_key_material(warnings, keys)


def test_a_removed_file_keeps_the_old_keys_and_a_restored_file_is_loaded(
    store, keys_path, keys, clock, warnings
):
    keys_path.unlink()
    for _ in range(3):
        clock.advance(INTERVAL)
        assert accepted(store, keys) == {"a", "b", "master"}
    assert len(failures(warnings)) == 1
    assert "cannot read keys file" in failures(warnings)[0]

    replace_atomically(keys_path, keys.file("a", "c"))
    clock.advance(INTERVAL)
    assert accepted(store, keys) == {"a", "c", "master"}


class ReaderFailingAfterStart(KeyFileReader):
    """Reads the file once (the start), then fails in a way no KeyFileError describes."""

    started = False

    def read(self):
        if self.started:
            raise RuntimeError("boom")
        self.started = True
        return super().read()


def test_a_failing_check_never_fails_a_lookup(keys_path, keys, clock, warnings):
    store = LiveKeyStore(ReaderFailingAfterStart(keys_path, MASTER_KEY), INTERVAL, clock)
    replace_atomically(keys_path, keys.file("a", "c"))
    for _ in range(3):  # tried at every check (the file may be fine), said once
        clock.advance(INTERVAL)
        assert accepted(store, keys) == {"a", "b", "master"}
    assert failures(warnings) == [
        f"keys file {keys_path} not reloaded, the previous keys stay in force: unexpected RuntimeError"
    ]


def test_startup_still_fails_on_a_broken_file(keys_path):
    keys_path.write_text("{not json")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_key_store(keys_path, MASTER_KEY)
    keys_path.write_bytes(b"\xff\xfe")
    with pytest.raises(KeyFileError, match="not valid UTF-8"):
        load_key_store(keys_path, MASTER_KEY)


def test_a_new_key_is_accepted_within_the_check_interval_in_real_time(keys_path, keys):
    store = load_key_store(keys_path, MASTER_KEY)
    replaced_at = time.monotonic()
    replace_atomically(keys_path, keys.file("a", "c"))
    while store.identify(keys.c) is None:
        assert time.monotonic() - replaced_at < 1.0, "the new key was never accepted"
        time.sleep(0.005)
    assert time.monotonic() - replaced_at <= INTERVAL + 0.05
    assert store.identify(keys.b) is None


def test_lookups_from_many_threads_during_rewrites_always_find_a_key_kept_in_every_version(keys_path, keys):
    store = LiveKeyStore(KeyFileReader(keys_path, MASTER_KEY), check_interval=0)  # every lookup checks
    stop = threading.Event()

    def look_up() -> tuple[int, int]:
        found = missed = 0
        while not stop.is_set():
            if store.identify(keys.a) is None:
                missed += 1
            else:
                found += 1
            time.sleep(0)  # let the writing thread have the GIL now and then
        return found, missed

    with ThreadPoolExecutor(4) as pool:
        lookers = [pool.submit(look_up) for _ in range(4)]
        for aliases in [("a", "c"), ("a", "b")] * 30 + [("a", "c")]:
            replace_atomically(keys_path, keys.file(*aliases))
            time.sleep(0.002)
        stop.set()
        counts = [looker.result() for looker in lookers]
    assert sum(missed for _, missed in counts) == 0
    assert all(found > 0 for found, _ in counts)
    assert accepted(store, keys) == {"a", "c", "master"}  # the last version written


# ---- through the proxy -----------------------------------------------------------------------

LOAD_CLIENTS = 4
REPLACE_AFTER_REQUESTS = 100  # key A requests answered before the keys file is replaced
MIN_LOAD_REQUESTS = 300
PROBE_SECONDS = 1.2  # B and C are tried on new connections (either worker) until a pair starts this late
DEADLINE_SECONDS = 1.0  # every B/C request sent this long after the replace must get its new answer


@dataclass(frozen=True)
class Probe:
    after: float  # seconds since the replace when it was sent
    key: str  # "B" (revoked) or "C" (added)
    status: int
    request_id: str | None


class SteadyLoad:
    """Clients sending chat requests with one key until stopped; every status kept."""

    def __init__(self, gateway: Gateway, key: str) -> None:
        self._gateway, self._key = gateway, key
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.statuses: list[int] = []

    def run_client(self) -> None:
        with self._gateway.client(self._key) as client:
            while not self._stop.is_set():
                status = client.post("/v1/chat/completions", json=chat_body("rotation load")).status_code
                with self._lock:
                    self.statuses.append(status)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.statuses) < count:
            assert time.monotonic() < deadline, f"only {len(self.statuses)} requests answered"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()


def probe(gateway: Gateway, name: str, key: str, replaced_at: float) -> Probe:
    sent_at = time.monotonic()
    response = httpx.post(  # a new connection each time: either worker answers
        f"{gateway.base_url}/v1/chat/completions",
        json=chat_body("rotation probe"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return Probe(sent_at - replaced_at, name, response.status_code, response.headers.get("x-litellm-call-id"))


def rotated_keys_file(content: str, revoked: str, added: str, added_key: str) -> str:
    """``content`` without the entry of alias ``revoked``, with one for ``added``; the rest unchanged."""
    entries = [entry for entry in json.loads(content)["keys"] if entry["alias"] != revoked]
    entries.append({"alias": added, "user_id": f"user-{added}", "sha256": sha256_hex(added_key)})
    return json.dumps({"keys": entries}, indent=2)


def test_rotation_under_load_fails_no_request_and_takes_effect_within_a_second(tmp_path, database_url):
    key_c = new_key()
    with running_gateway(tmp_path, database_url) as gateway:
        keys = gateway.keys  # A = TEST_KEY (kept), B = POC_VALIDATION_KEY (revoked)
        assert probe(gateway, "B", keys.poc_key, 0).status == 200
        assert probe(gateway, "C", key_c, 0).status == 401
        new_file = rotated_keys_file(keys.keys_file_content(), "POC_VALIDATION_KEY", "NEW_KEY", key_c)

        load = SteadyLoad(gateway, keys.test_key)
        with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
            clients = [pool.submit(load.run_client) for _ in range(LOAD_CLIENTS)]
            try:
                load.wait_for(REPLACE_AFTER_REQUESTS)
                answered_at_replace = len(load.statuses)
                replaced_at = time.monotonic()
                replace_atomically(gateway.workdir / "api_keys.json", new_file)
                probes: list[Probe] = []
                while not probes or probes[-2].after < PROBE_SECONDS:  # the last pair's B
                    probes += [
                        probe(gateway, "B", keys.poc_key, replaced_at),
                        probe(gateway, "C", key_c, replaced_at),
                    ]
                answered_after_probes = len(load.statuses)
                load.wait_for(MIN_LOAD_REQUESTS)
            finally:
                load.stop()
            for client in clients:
                client.result()

        failed = [status for status in load.statuses if status != 200]
        late = [p for p in probes if p.after >= DEADLINE_SECONDS]
        old_answers = [p.after for p in probes if (p.key, p.status) in {("B", 200), ("C", 401)}]
        latest_old = f"{max(old_answers):.2f} s after the replace" if old_answers else "none"
        print(
            f"\nkey A: {len(load.statuses)} requests, {len(failed)} failed; {len(probes)} B/C probes; "
            f"latest old answer: {latest_old}; "
            + " ".join(f"{p.key}{p.status}@{p.after:.2f}" for p in probes)
        )
        assert failed == []
        assert answered_after_probes > answered_at_replace  # the load ran while the keys changed
        assert {p.status for p in probes} <= {200, 401}
        assert late, "no probe after the deadline"
        assert {(p.key, p.status) for p in late} == {("B", 401), ("C", 200)}

        # The middleware's log rows follow the new file too.
        logged = LogReader(database_url)
        try:
            rows = logged.wait_for([late[-1].request_id, late[-2].request_id])
        finally:
            logged.dispose()
        assert sorted(row["api_key"] for row in rows.values()) == ["NEW_KEY", "invalid"]
        reloads = gateway.log_text().count(
            "reloaded: 3 keys, added NEW_KEY, removed POC_VALIDATION_KEY, changed none"
        )
        assert reloads == 1
