"""Which requests on the gateway port are logged, served by us, refused or left alone.

Every HTTP request is logged (one ``requests`` row with the status its client received) except
the short list below. The list is what ``RoutePolicy.classify`` returns; the families and the
admin UI's paths are read from the LiteLLM app itself when the middleware is built, so a
LiteLLM upgrade that adds a pass-through provider is refused without a change here.

=====================================  =============  ==========================================
Path                                   Logged         Answer
=====================================  =============  ==========================================
/health/liveliness, /health/liveness   no             LiteLLM's (no auth, calls no model)
/health/readiness                      no             ours: the request-log state (``health.py``)
/metrics, /metrics/*                   yes (refusal)  404 ``metrics_on_monitoring_listener``;
                                       no (served)    LITELLM_PGLOG_METRICS_ON_API_PORT=true
                                                      serves them here
/<family>/* of a provider pass-through yes            404 ``passthrough_disabled`` unless the
(openai, anthropic, gemini, vertex_ai,                family is in LITELLM_PGLOG_PASSTHROUGH
bedrock, azure, assemblyai, ...)                      (then LiteLLM's, authenticated by our
                                                      custom_auth)
admin UI: /ui, /_next, /sso/*, /login  yes            404 ``ui_disabled`` unless
/onboarding/*, ...                                    LITELLM_PGLOG_UI_ENABLED=true; then its
                                       no (assets)    static assets are not logged
management and info routes (/key/*,    yes            client key 403, unknown key 401, no key
/user/*, /team/*, /spend/*, /health)                  401 (LiteLLM); master key: LiteLLM's
everything else                        yes            LiteLLM's
websockets                             no             LiteLLM's; closed (HTTP 403) for a
                                                      refused family or the UI when off
=====================================  =============  ==========================================

Model-list routes that happen to live under a pass-through family's first segment
(``/openai/deployments/{model}/chat/completions``, ``/openai/v1/responses``,
``/cursor/chat/completions``) are not pass-through and stay served.

``client_may_call(route)`` is the other half: the routes a client key may call at all (LiteLLM's
own LLM API classification); everything else (key, user, team, spend management...) answers
client keys with 403 in ``auth.py``. The middleware gives the same 401/403 itself on LiteLLM's
management and info routes (``is_admin_route``), before LiteLLM reports the failure with the key
in clear to its callbacks.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger("litellm_pglog")

# Kubernetes-style probes: called every few seconds, they would flood the log with no value.
HEALTH_PROBE_PATHS = frozenset({"/health/liveliness", "/health/liveness"})
READINESS_PATH = "/health/readiness"
METRICS_PATH = "/metrics"

PASSTHROUGH_MODULE = "litellm.proxy.pass_through_endpoints"
# Modules whose routes are the admin UI's login and discovery helpers.
UI_HELPER_MODULES = (
    "litellm.proxy.management_endpoints.ui_sso",
    "litellm.proxy.discovery_endpoints.ui_discovery_endpoints",
)
# UI login helpers proxy_server.py defines next to LLM routes: no module tells them apart. The
# /public/* model, agent and MCP hubs and the logo (/get_image) answer without any key and only
# serve the UI's pages.
UI_HELPER_PATHS = ("/login", "/v2/login", "/fallback/login", "/onboarding", "/public", "/get_image")
# The docs page's own static files are mounted like the UI's but are not the UI.
DOCS_STATIC_MOUNTS = frozenset({"/swagger"})
CLASSIFY_CACHE_SIZE = 4096  # distinct paths remembered; ids in paths make the set open-ended


class RouteClass(enum.Enum):
    LOGGED = "logged"  # passed to LiteLLM, logged
    UNLOGGED = "unlogged"  # passed to LiteLLM, not logged (health probes, UI assets)
    READINESS = "readiness"  # answered by health.py, not logged
    METRICS = "metrics"  # refused and logged, or served unlogged (Settings.metrics_on_api_port)
    PASSTHROUGH_DISABLED = "passthrough_disabled"  # refused with 404, logged
    UI_DISABLED = "ui_disabled"  # refused with 404, logged


@dataclass(frozen=True)
class LiteLLMSurface:
    """What the LiteLLM app serves that this package treats specially, read once from the app."""

    passthrough_families: frozenset[str]  # first path segments: "openai", "anthropic", ...
    served_under_families: tuple[re.Pattern[str], ...] = ()  # model-list routes there
    served_prefixes_under_families: tuple[str, ...] = ()  # lazily loaded ones, e.g. realtime
    ui_static_prefixes: tuple[str, ...] = ()  # "/ui", "/_next", ...
    ui_helper_prefixes: tuple[str, ...] = ()  # "/sso", "/login", ...


class RoutePolicy:
    """Classifies request paths; a pure function of its inputs, cached per path."""

    def __init__(
        self,
        surface: LiteLLMSurface,
        enabled_families: Iterable[str] = (),
        ui_enabled: bool = False,
    ) -> None:
        self.surface = surface
        self.disabled_families = surface.passthrough_families - frozenset(enabled_families)
        self.ui_enabled = ui_enabled
        # A bound lru_cache: the per-request cost is one dict lookup for paths seen before.
        self.classify = lru_cache(maxsize=CLASSIFY_CACHE_SIZE)(self._classify)

    def _classify(self, path: str) -> RouteClass:
        path = path.rstrip("/") or "/"
        if path in HEALTH_PROBE_PATHS:
            return RouteClass.UNLOGGED
        if path == READINESS_PATH:
            return RouteClass.READINESS
        if _under(path, (METRICS_PATH,)):
            return RouteClass.METRICS
        if _under(path, self.surface.ui_static_prefixes):
            return RouteClass.UNLOGGED if self.ui_enabled else RouteClass.UI_DISABLED
        if _under(path, self.surface.ui_helper_prefixes):
            return RouteClass.LOGGED if self.ui_enabled else RouteClass.UI_DISABLED
        if self._is_disabled_passthrough(path):
            return RouteClass.PASSTHROUGH_DISABLED
        return RouteClass.LOGGED

    def _is_disabled_passthrough(self, path: str) -> bool:
        if first_segment(path) not in self.disabled_families:
            return False
        if _under(path, self.surface.served_prefixes_under_families):
            return False
        return not any(pattern.match(path) for pattern in self.surface.served_under_families)


def first_segment(path: str) -> str:
    return path.split("/", 2)[1] if path.startswith("/") else ""


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def static_prefix(template: str) -> str:
    """The part of a route template before its first parameter, without a trailing slash."""
    return template.split("{", 1)[0].rstrip("/")


# ---- reading the LiteLLM app ----------------------------------------------------------------


@dataclass(frozen=True)
class AppRoute:
    path: str
    module: str  # of the endpoint ("" for mounts)
    regex: re.Pattern[str] | None
    is_static_mount: bool
    is_http: bool


def read_surface(app: Any) -> LiteLLMSurface:
    """The pass-through families, the model-list routes under them and the UI paths of ``app``."""
    routes = list(app_routes(app))
    families = _passthrough_families(routes)
    under = [route for route in routes if first_segment(route.path) in families]
    served = tuple(
        route.regex
        for route in under
        if route.is_http and route.regex and not route.module.startswith(PASSTHROUGH_MODULE)
    )
    ui_helpers = {static_prefix(r.path) for r in routes if r.module.startswith(UI_HELPER_MODULES)}
    surface = LiteLLMSurface(
        passthrough_families=families,
        served_under_families=served,
        served_prefixes_under_families=_lazy_prefixes_under(families),
        ui_static_prefixes=tuple(
            sorted(r.path for r in routes if r.is_static_mount and r.path not in DOCS_STATIC_MOUNTS)
        ),
        ui_helper_prefixes=tuple(sorted(ui_helpers | set(UI_HELPER_PATHS))),
    )
    log.debug("LiteLLM pass-through families: %s", ", ".join(sorted(families)))
    return surface


def app_routes(app: Any) -> Iterator[AppRoute]:
    """The app's routes, included routers flattened (FastAPI >= 0.16x keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts

        contexts: Iterable[Any] = iter_route_contexts(getattr(app, "routes", []))
    except ImportError:
        contexts = getattr(app, "routes", [])
    for route in contexts:
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        endpoint = getattr(route, "endpoint", None)
        mounted = getattr(route, "app", None)
        yield AppRoute(
            path=path,
            module=getattr(endpoint, "__module__", "") or "",
            regex=getattr(route, "path_regex", None),
            is_static_mount=endpoint is None and type(mounted).__name__ == "StaticFiles",
            is_http=bool(getattr(route, "methods", None)),
        )


def _passthrough_families(routes: list[AppRoute]) -> frozenset[str]:
    """First segments of LiteLLM's pass-through routes: declared, served now, or loaded lazily."""
    from litellm.proxy._types import LiteLLMRoutes
    from litellm.proxy.auth.route_checks import RouteChecks

    prefixes = set(LiteLLMRoutes.mapped_pass_through_routes.value)
    # Served now: pass-through endpoints that are LLM API routes (not the /config/... CRUD).
    prefixes |= {
        route.path
        for route in routes
        if route.module.startswith(PASSTHROUGH_MODULE) and RouteChecks.is_llm_api_route(route.path)
    }
    lazy = [feature for feature in _lazy_features() if _is_passthrough(feature)]
    prefixes |= {prefix for feature in lazy for prefix in feature.path_prefixes}
    return frozenset(filter(None, (first_segment(prefix) for prefix in prefixes)))


def _lazy_prefixes_under(families: frozenset[str]) -> tuple[str, ...]:
    """Lazily loaded non-pass-through features under a family's segment (/openai/v1/realtime)."""
    return tuple(
        sorted(
            prefix.rstrip("/")
            for feature in _lazy_features()
            if not _is_passthrough(feature)
            for prefix in feature.path_prefixes
            if prefix.count("/") > 1 and first_segment(prefix) in families
        )
    )


def _lazy_features() -> tuple[Any, ...]:
    # LiteLLM registers some routers on their first request (litellm.proxy._lazy_features).
    try:
        from litellm.proxy._lazy_features import LAZY_FEATURES
    except ImportError:
        return ()
    return tuple(LAZY_FEATURES)


def _is_passthrough(feature: Any) -> bool:
    return str(getattr(feature, "module_path", "")).startswith(PASSTHROUGH_MODULE)


# ---- what a client key may call ---------------------------------------------------------------


@lru_cache(maxsize=CLASSIFY_CACHE_SIZE)
def client_may_call(route: str) -> bool:
    """LiteLLM's LLM API routes (models, chat, files, pass-through...) and its model info routes."""
    from litellm.proxy._types import LiteLLMRoutes
    from litellm.proxy.auth.route_checks import RouteChecks

    return RouteChecks.is_llm_api_route(route) or route in LiteLLMRoutes.model_info_routes.value


@lru_cache(maxsize=CLASSIFY_CACHE_SIZE)
def is_admin_route(route: str) -> bool:
    """LiteLLM's management and info routes (/key/*, /user/*, /team/*, /spend/*, /health...)."""
    from litellm.proxy.auth.route_checks import RouteChecks

    return RouteChecks.is_management_route(route) or RouteChecks.is_info_route(route)


def requires_key(route: str) -> bool:
    """Routes LiteLLM always authenticates (an unknown path is LiteLLM's 404 instead)."""
    return client_may_call(route) or is_admin_route(route)
