"""Alembic environment and revisions, driven by litellm_pglog.schema (no alembic.ini needed)."""
