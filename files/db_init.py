#!/usr/bin/env python3
"""Create or upgrade the request/response logging schema at $LITELLM_DB_URL (see litellm_pglog.schema)."""

from litellm_pglog.schema import main

raise SystemExit(main())
