"""Static API keys: the hashed key file written by Ansible plus LiteLLM's master key.

Keys file (JSON, hashes only)::

    {"keys": [{"alias": "TEST_KEY", "user_id": "poc-tester", "sha256": "<hex sha256 of the key>"}]}

Each process loads the file once at startup (``runtime.GatewayRuntime.key_store``); a missing or
malformed file then raises ``KeyFileError`` with a one-line message, which the ASGI middleware
turns into a failed startup. After that the file is followed without a restart: a lookup checks
it (one ``os.stat``) when the last check is ``KEYS_CHECK_INTERVAL_SECONDS`` old, and a new
version (other inode, size or mtime: Ansible's template module renames a new file into place)
is read and swapped in whole. A new version that is missing or broken keeps the keys in force,
logs one warning per distinct failure and is tried again when the file changes next.

No SIGHUP reload: uvicorn's multi-worker supervisor answers SIGHUP by restarting its workers,
and a single uvicorn process has no SIGHUP handler (the default action ends it). The check
above needs no signal and works the same in every worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from threading import Lock
from time import monotonic
from typing import Protocol

from litellm_pglog.limits import KEYS_CHECK_INTERVAL_SECONDS

MASTER_KEY_ALIAS = "master"
MASTER_KEY_USER_ID = "litellm-admin"
INVALID_KEY_ALIAS = "invalid"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_RESERVED_ALIASES = frozenset({MASTER_KEY_ALIAS, INVALID_KEY_ALIAS})

log = logging.getLogger("litellm_pglog")


class KeyFileError(Exception):
    """The keys file cannot be used; the message is one line and never contains a key."""


@dataclass(frozen=True, slots=True)
class Identity:
    alias: str
    user_id: str | None
    key_hash: str  # hex sha256 of the presented key; safe to log
    is_master: bool = False


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


PUBLIC_KEY_ID_PREFIX = "kid-"
PUBLIC_KEY_ID_HEX_CHARS = 16
PUBLIC_KEY_ID_CACHE_SIZE = 4096  # keys in the file, plus room for the ones replaced since the start
# Without a master key (not a setup LiteLLM starts with) ids are stable within one process only.
_PROCESS_SECRET = secrets.token_bytes(32)


# Called by the auth hook on every request; the id depends only on its two arguments, so it is
# computed once per key (and master key), not per request.
@lru_cache(maxsize=PUBLIC_KEY_ID_CACHE_SIZE)
def public_key_id(key_hash: str, master_key: str | None) -> str:
    """A non-secret id of a key for places that publish it (LiteLLM's hashed_api_key label).

    HMAC of the key's sha256 under a per-deployment secret derived from the master key, cut to
    64 bits: stable across workers and restarts, and it cannot be matched against the keys file
    (which holds the plain sha256) without the master key.
    """
    secret = hashlib.sha256(master_key.encode()).digest() if master_key else _PROCESS_SECRET
    digest = hmac.new(secret, key_hash.encode(), hashlib.sha256).hexdigest()
    return PUBLIC_KEY_ID_PREFIX + digest[:PUBLIC_KEY_ID_HEX_CHARS]


class KeyStore:
    """One version of the accepted keys, never changed: LiveKeyStore swaps in a new one whole."""

    def __init__(self, identities: list[Identity]) -> None:
        self._candidates = [(bytes.fromhex(identity.key_hash), identity) for identity in identities]

    def identify(self, token: str | None) -> Identity | None:
        """Return the identity owning ``token``, comparing against every candidate in constant time."""
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for candidate_digest, identity in self._candidates:
            if hmac.compare_digest(digest, candidate_digest):
                found = identity
        return found

    def by_alias(self) -> dict[str, Identity]:
        return {identity.alias: identity for _, identity in self._candidates}

    def __len__(self) -> int:
        return len(self._candidates)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client presented, found like LiteLLM does: x-litellm-api-key, then Authorization."""
    custom = headers.get("x-litellm-api-key")
    value = custom or headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer":
        return token.strip() or None
    if custom:
        return value.strip() or None
    return None


def parse_key_file(text: str, source: str) -> list[Identity]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise KeyFileError(f"{source}: not valid JSON ({exc})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f'{source}: expected an object with a "keys" list')
    identities = [_parse_entry(entry, f"{source}: keys[{index}]") for index, entry in enumerate(entries)]
    _reject_duplicates(identities, source)
    return identities


def _parse_entry(entry: object, where: str) -> Identity:
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: expected an object")
    alias, user_id, digest = entry.get("alias"), entry.get("user_id"), entry.get("sha256")
    if not isinstance(alias, str) or not alias.strip():
        raise KeyFileError(f'{where}: "alias" must be a non-empty string')
    if alias in _RESERVED_ALIASES:
        raise KeyFileError(f'{where}: alias "{alias}" is reserved')
    if user_id is not None and not isinstance(user_id, str):
        raise KeyFileError(f'{where}: "user_id" must be a string')
    if not isinstance(digest, str) or not _SHA256_HEX.match(digest.lower()):
        raise KeyFileError(f'{where}: "sha256" must be 64 hex characters (the sha256 of the key)')
    return Identity(alias=alias, user_id=user_id, key_hash=digest.lower())


def _reject_duplicates(identities: list[Identity], source: str) -> None:
    aliases = [identity.alias for identity in identities]
    hashes = [identity.key_hash for identity in identities]
    if len(set(aliases)) != len(aliases):
        raise KeyFileError(f"{source}: duplicate alias")
    if len(set(hashes)) != len(hashes):
        raise KeyFileError(f"{source}: the same key hash appears twice")


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What tells one version of a file from the next without reading it.

    A rename into place (Ansible's template module) gives a new inode; an in-place write a new
    mtime and usually a new size. Inode numbers are per file system, hence the device.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileVersion:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def file_version(path: Path) -> FileVersion | None:
    """The version of the file at ``path`` now; None when it cannot be seen (missing, no access)."""
    try:
        return FileVersion.of(os.stat(path))
    except OSError:
        return None


class KeyFileReader:
    """Reads one version of the keys file into a KeyStore that also holds the master key."""

    def __init__(self, path: Path, master_key: str | None) -> None:
        self.path = path
        # The master key comes from the environment, not from the file: every version keeps it.
        self._master = (
            [Identity(MASTER_KEY_ALIAS, MASTER_KEY_USER_ID, sha256_hex(master_key), is_master=True)]
            if master_key
            else []
        )

    def read(self) -> tuple[FileVersion, KeyStore]:
        """The version read (fstat of the open file, so it matches the bytes) and its keys."""
        try:
            with self.path.open("rb") as file:
                version = FileVersion.of(os.fstat(file.fileno()))
                raw = file.read()
        except OSError as exc:
            raise KeyFileError(f"cannot read keys file {self.path}: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFileError(f"{self.path}: not valid UTF-8") from None
        identities = parse_key_file(text, str(self.path))
        return version, KeyStore([*identities, *self._master])


class ReloadLog:
    """The log lines of reloads: one per reload, one per distinct failure; aliases, never keys."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._last_failure: str | None = None

    def failed(self, reason: str) -> None:
        # The same failure seen again (the file rewritten with the same mistake) is not news.
        if reason != self._last_failure:
            log.warning("keys file %s not reloaded, the previous keys stay in force: %s", self._path, reason)
        self._last_failure = reason

    def reloaded(self, previous: KeyStore, keys: KeyStore) -> None:
        self._last_failure = None
        old, new = previous.by_alias(), keys.by_alias()
        added = _names(new.keys() - old.keys())
        removed = _names(old.keys() - new.keys())
        changed = _names({alias for alias in new.keys() & old.keys() if new[alias] != old[alias]})
        # A warning, like the failures: an operator should see every change of the accepted keys.
        log.warning(
            "keys file %s reloaded: %d keys, added %s, removed %s, changed %s",
            self._path,
            len(keys),
            added,
            removed,
            changed,
        )


def _names(aliases: set[str]) -> str:
    return ", ".join(sorted(aliases)) or "none"


class Clock(Protocol):
    def __call__(self) -> float: ...


class LiveKeyStore:
    """The keys in force in this process: the last good version of the keys file, master key included.

    ``identify`` runs on the event loop for every request (LiteLLM's auth hook and the
    middleware), so between checks it costs one clock read more than the lookup itself. A check
    is one ``os.stat`` (a few microseconds); the file, a few hundred bytes, is read only when its
    version changed. Readers never lock: the KeyStore in force is replaced whole, by one attribute
    assignment.
    """

    def __init__(
        self,
        reader: KeyFileReader,
        check_interval: float = KEYS_CHECK_INTERVAL_SECONDS,
        clock: Clock = monotonic,
    ) -> None:
        self._reader = reader
        self._check_interval = check_interval
        self._clock = clock
        self._version: FileVersion | None
        self._version, self._keys = reader.read()  # raises KeyFileError: a broken start fails
        self._next_check = clock() + check_interval
        self._check_lock = Lock()
        self._log = ReloadLog(reader.path)

    def identify(self, token: str | None) -> Identity | None:
        if self._clock() >= self._next_check:
            self._check()
        return self._keys.identify(token)

    def __len__(self) -> int:
        return len(self._keys)

    def _check(self) -> None:
        # Whoever takes the lock checks; a lookup racing it uses the keys in force rather than
        # wait, since it may be on the event loop.
        if not self._check_lock.acquire(blocking=False):
            return
        try:
            self._next_check = self._clock() + self._check_interval
            self._reload_if_changed()
        except Exception as exc:  # a lookup must never fail because of the file
            self._log.failed(f"unexpected {type(exc).__name__}")
        finally:
            self._check_lock.release()

    def _reload_if_changed(self) -> None:
        version = file_version(self._reader.path)
        if version == self._version:
            return
        try:
            read_version, keys = self._reader.read()
        except KeyFileError as exc:
            self._version = version  # tried again when the file changes, not on every check
            self._log.failed(str(exc))
            return
        self._log.reloaded(self._keys, keys)
        self._version, self._keys = read_version, keys


def load_key_store(
    keys_file: str | Path, master_key: str | None, check_interval: float = KEYS_CHECK_INTERVAL_SECONDS
) -> LiveKeyStore:
    """The store of ``keys_file`` plus ``master_key``; raises KeyFileError if the file is unusable now."""
    return LiveKeyStore(KeyFileReader(Path(keys_file), master_key), check_interval)
