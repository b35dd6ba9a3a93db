"""The one definition of the logging schema; the newest Alembic revision matches it.

``requests`` and ``responses`` are partitioned by range of ``created_at`` (see partitions.py for
the partitions themselves, which are not part of this metadata). A unique key of a partitioned
table must contain the partition key, hence the (…, created_at) keys and the two-column link.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    Identity,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, foreign, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
PARTITION_BY = "RANGE (created_at)"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Request(Base):
    """One client request the gateway answered, with the status the client received."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    request_id: Mapped[str] = mapped_column(String(64))
    route: Mapped[str | None] = mapped_column(String(255))
    method: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(255))
    status_code: Mapped[int | None]
    user_id: Mapped[str | None] = mapped_column(String(255))
    api_key: Mapped[str | None] = mapped_column(String(128))  # alias or hash, never the key itself
    stream: Mapped[bool | None]
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)

    response: Mapped[Response | None] = relationship(
        back_populates="request", passive_deletes=True, primaryjoin=lambda: RESPONSE_LINK
    )

    __table_args__ = (
        PrimaryKeyConstraint("id", "created_at"),
        # The writer's upsert key: one row per request (created_at comes from the request id).
        UniqueConstraint("request_id", "created_at"),
        # Runbook 4.3 / 5.1: newest first, and "created_at > NOW() - INTERVAL ...".
        Index("ix_requests_created_at", "created_at"),
        {"postgresql_partition_by": PARTITION_BY},
    )


class Response(Base):
    """Timing and token usage of one request; every request row has exactly one."""

    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    # Always the created_at of its request: the link's second column, and the same partition.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    request_id_fk: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    total_tokens: Mapped[int | None]

    request: Mapped[Request] = relationship(back_populates="response", primaryjoin=lambda: RESPONSE_LINK)

    __table_args__ = (
        PrimaryKeyConstraint("id", "created_at"),
        UniqueConstraint("request_id_fk", "created_at"),
        Index("ix_responses_created_at", "created_at"),
        {"postgresql_partition_by": PARTITION_BY},
    )


# The link responses (request_id_fk, created_at) -> requests (id, created_at), ON DELETE CASCADE,
# is a foreign key between each pair of partitions of the same range, not between the parents:
# PostgreSQL checks a link to a partitioned table several times more slowly (migration 0004;
# partitions.link_statement links every pair litellm-pglog-maintain creates).
RESPONSE_LINK = and_(
    Request.id == foreign(Response.request_id_fk), Request.created_at == foreign(Response.created_at)
)

# Runbook 4.4: "WHERE status_code != 200 ORDER BY created_at DESC" reads only the failures.
Index(
    "ix_requests_failed_created_at",
    Request.created_at,
    postgresql_where=Request.status_code != 200,
)


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic autogenerate's filter: the schema's tables, not their partitions (partitions.py's)."""
    return type_ != "table" or name in Base.metadata.tables or name == "alembic_version"
