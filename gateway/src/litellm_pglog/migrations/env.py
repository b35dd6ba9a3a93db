"""Alembic environment: the caller hands over an open connection (online) or asks for SQL (offline)."""

from alembic import context

from litellm_pglog.models import Base, include_name

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(dialect_name="postgresql", target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through litellm_pglog.schema, which provides the connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
