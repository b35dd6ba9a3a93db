"""LiteLLM ``general_settings.custom_auth`` hook: static keys from the keys file plus the master key.

LiteLLM strips "Bearer " before calling the hook and, once a custom_auth is configured, runs no
key check of its own (the master key included), nor any route check: so every accepted key and
every route a key may call is decided here. Client keys may call LiteLLM's LLM API routes
(``routes.client_may_call``); management routes (/key/*, /user/*, /team/*, /spend/*, /health...)
answer them 403, which LiteLLM would otherwise turn into a 500 for want of its database. The
master key keeps LiteLLM's own behaviour.

LiteLLM imports this function by name: the key store comes from the process's runtime
(``runtime.py``).
"""

from __future__ import annotations

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth
from litellm.proxy.auth.auth_utils import get_request_route

from litellm_pglog.keys import public_key_id
from litellm_pglog.routes import client_may_call
from litellm_pglog.runtime import current

INVALID_KEY_MESSAGE = "Invalid or missing API key. Send it as 'Authorization: Bearer <key>'."
FORBIDDEN_ROUTE_MESSAGE = "This key may not call {route}: it is an administration route."


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    runtime = current()
    identity = runtime.key_store.identify(api_key)
    if identity is None:
        # ProxyException reaches the client unchanged: HTTP 401 with an OpenAI-style error body.
        raise ProxyException(message=INVALID_KEY_MESSAGE, type="auth_error", param="api_key", code=401)
    route = get_request_route(request)
    if not identity.is_master and not client_may_call(route):
        message = FORBIDDEN_ROUTE_MESSAGE.format(route=route)
        raise ProxyException(message=message, type="auth_error", param="route", code=403)
    return UserAPIKeyAuth(
        # LiteLLM publishes this field (Prometheus label hashed_api_key): a public id, never the
        # key nor the sha256 the keys file holds.
        api_key=public_key_id(identity.key_hash, runtime.settings.master_key),
        key_alias=identity.alias,
        user_id=identity.user_id,
        user_role=LitellmUserRoles.PROXY_ADMIN if identity.is_master else LitellmUserRoles.INTERNAL_USER,
    )
