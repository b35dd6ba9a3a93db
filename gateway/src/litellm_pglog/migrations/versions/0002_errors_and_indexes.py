"""Error details and streaming flag on requests; indexes for the runbook's queries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("stream", sa.Boolean()))
    op.add_column("requests", sa.Column("error_type", sa.String(255)))
    op.add_column("requests", sa.Column("error_message", sa.Text()))
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    op.create_index(
        "ix_requests_failed_created_at",
        "requests",
        ["created_at"],
        postgresql_where=sa.column("status_code") != 200,
    )
    op.create_index("ix_responses_created_at", "responses", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_responses_created_at", table_name="responses")
    op.drop_index("ix_requests_failed_created_at", table_name="requests")
    op.drop_index("ix_requests_created_at", table_name="requests")
    op.drop_column("requests", "error_message")
    op.drop_column("requests", "error_type")
    op.drop_column("requests", "stream")
