"""``litellm-pglog-report``: usage of the gateway read from the log tables (requests, responses).

- ``window``: the time range from ``--since`` / ``--until`` (``24h``, ``7d``, ``90m`` or ISO 8601);
- ``queries``: the aggregates, SQLAlchemy Core on ``models.Request`` / ``models.Response``;
- ``tables``: the terminal tables;
- ``page``: the self-contained HTML page with charts (needs the ``report`` extra: matplotlib);
- ``cli``: the command.
"""
