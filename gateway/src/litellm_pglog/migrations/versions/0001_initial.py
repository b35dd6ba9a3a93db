"""Initial tables: requests and responses.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("route", sa.String(255)),
        sa.Column("method", sa.String(16)),
        sa.Column("model", sa.String(255)),
        sa.Column("status_code", sa.Integer()),
        sa.Column("user_id", sa.String(255)),
        sa.Column("api_key", sa.String(128)),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
        sa.UniqueConstraint("request_id", name="uq_requests_request_id"),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("request_id_fk", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Double()),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("total_tokens", sa.Integer()),
        sa.PrimaryKeyConstraint("id", name="pk_responses"),
        sa.UniqueConstraint("request_id_fk", name="uq_responses_request_id_fk"),
        sa.ForeignKeyConstraint(
            ["request_id_fk"],
            ["requests.id"],
            name="fk_responses_request_id_fk_requests",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("responses")
    op.drop_table("requests")
