"""LiteLLM ``general_settings.custom_auth`` hook: static keys from the keys file plus the master key.

LiteLLM strips "Bearer " before calling the hook and, once a custom_auth is configured, runs no
key check of its own (the master key included), so every accepted key is decided here. LiteLLM
imports this function by name: the key store comes from the process's runtime (``runtime.py``).
"""

from __future__ import annotations

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth

from litellm_pglog.runtime import current

INVALID_KEY_MESSAGE = "Invalid or missing API key. Send it as 'Authorization: Bearer <key>'."


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    identity = current().key_store.identify(api_key)
    if identity is None:
        # ProxyException reaches the client unchanged: HTTP 401 with an OpenAI-style error body.
        raise ProxyException(message=INVALID_KEY_MESSAGE, type="auth_error", param="api_key", code=401)
    return UserAPIKeyAuth(
        api_key=identity.key_hash,  # LiteLLM logs this field; give it the hash, never the key
        key_alias=identity.alias,
        user_id=identity.user_id,
        user_role=LitellmUserRoles.PROXY_ADMIN if identity.is_master else LitellmUserRoles.INTERNAL_USER,
    )
