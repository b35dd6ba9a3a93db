"""ASGI entry point: ``uvicorn litellm_pglog.asgi:app`` with CONFIG_FILE_PATH=/etc/litellm/config.yaml.

LiteLLM reads CONFIG_FILE_PATH in its own lifespan handler, once per worker process, so this
works with ``--workers N`` as well.
"""

from __future__ import annotations

from litellm.proxy.proxy_server import app as litellm_app

from litellm_pglog.middleware import RequestLogMiddleware

app = RequestLogMiddleware(litellm_app)
