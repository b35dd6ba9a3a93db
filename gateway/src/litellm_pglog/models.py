"""The one definition of the logging schema; the newest Alembic revision matches it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Request(Base):
    """One client request the gateway answered, with the status the client received."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    route: Mapped[str | None] = mapped_column(String(255))
    method: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(255))
    status_code: Mapped[int | None]
    user_id: Mapped[str | None] = mapped_column(String(255))
    api_key: Mapped[str | None] = mapped_column(String(128))  # alias or hash, never the key itself
    stream: Mapped[bool | None]
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)

    response: Mapped[Response | None] = relationship(back_populates="request", passive_deletes=True)

    __table_args__ = (
        # Runbook 4.3 / 5.1: newest first, and "created_at > NOW() - INTERVAL ...".
        Index("ix_requests_created_at", "created_at"),
    )


class Response(Base):
    """Timing and token usage of one request; every request row has exactly one."""

    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    request_id_fk: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), unique=True)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    total_tokens: Mapped[int | None]

    request: Mapped[Request] = relationship(back_populates="response")

    __table_args__ = (Index("ix_responses_created_at", "created_at"),)


# Runbook 4.4: "WHERE status_code != 200 ORDER BY created_at DESC" reads only the failures.
Index(
    "ix_requests_failed_created_at",
    Request.created_at,
    postgresql_where=Request.status_code != 200,
)
