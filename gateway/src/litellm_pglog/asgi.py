"""ASGI entry point: ``uvicorn litellm_pglog.asgi:app`` with CONFIG_FILE_PATH=/etc/litellm/config.yaml.

LiteLLM reads CONFIG_FILE_PATH in its own lifespan handler, once per worker process, so this
works with ``--workers N`` too (each worker imports this module and has its own log writer;
they share the spool directory safely). The config this package expects::

    general_settings:
      custom_auth: litellm_pglog.auth.user_api_key_auth
    litellm_settings:
      callbacks: ["litellm_pglog.callbacks.usage_logger", "prometheus"]

Every HTTP request on this app is logged except the exclusion list in ``routes.py``; provider
pass-through families (LITELLM_PGLOG_PASSTHROUGH), the admin UI (LITELLM_PGLOG_UI_ENABLED) and
/metrics (LITELLM_PGLOG_METRICS_ON_API_PORT) are refused with a logged 404 unless enabled, and
/health/readiness reports the request log's state (``health.py``). Client keys get 403 on
LiteLLM's management routes (``auth.py``); the master key keeps LiteLLM's behaviour.

Set LITELLM_LOCAL_MODEL_COST_MAP=True on hosts without internet access, or LiteLLM tries to
download its model cost map at start.

Optional modules LiteLLM would try to import on every request, and cannot, are blocked once
(``optional_imports.py``). The package's own log lines go to stderr from LITELLM_LOG_LEVEL up
(``logsetup.py``).

Once the startup completed, the heap it built is frozen out of the garbage collector's full
passes (``gcfreeze.py``), with logging ON or OFF. The settings are read here, once; the runtime
built from them is installed process-wide for the two hooks above, which LiteLLM calls by name
(see ``runtime.py``).
"""

from __future__ import annotations

from litellm.proxy.proxy_server import app as litellm_app

from litellm_pglog.gcfreeze import FreezeAfterStartup
from litellm_pglog.logsetup import configure_logging
from litellm_pglog.middleware import RequestLogMiddleware
from litellm_pglog.optional_imports import block_unloadable
from litellm_pglog.runtime import GatewayRuntime, install
from litellm_pglog.settings import load_settings

settings = load_settings()
configure_logging(settings.log_level)
block_unloadable()
runtime = install(GatewayRuntime(settings))
app = FreezeAfterStartup(RequestLogMiddleware(litellm_app, runtime))
