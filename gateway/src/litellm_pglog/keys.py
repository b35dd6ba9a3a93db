"""Static API keys: the hashed key file written by Ansible plus LiteLLM's master key.

Keys file (JSON, hashes only)::

    {"keys": [{"alias": "TEST_KEY", "user_id": "poc-tester", "sha256": "<hex sha256 of the key>"}]}

The file is read once per process (``runtime.GatewayRuntime.key_store``); a missing or malformed
file raises ``KeyFileError`` with a one-line message, which the ASGI middleware turns into a
failed startup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MASTER_KEY_ALIAS = "master"
MASTER_KEY_USER_ID = "litellm-admin"
INVALID_KEY_ALIAS = "invalid"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_RESERVED_ALIASES = frozenset({MASTER_KEY_ALIAS, INVALID_KEY_ALIAS})


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
# Without a master key (not a setup LiteLLM starts with) ids are stable within one process only.
_PROCESS_SECRET = secrets.token_bytes(32)


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
    except ValueError as exc:
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


def load_key_store(keys_file: str | Path, master_key: str | None) -> KeyStore:
    path = Path(keys_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read keys file {path}: {exc.strerror or exc}") from None
    identities = parse_key_file(text, str(path))
    if master_key:
        identities.append(
            Identity(MASTER_KEY_ALIAS, MASTER_KEY_USER_ID, sha256_hex(master_key), is_master=True)
        )
    return KeyStore(identities)
