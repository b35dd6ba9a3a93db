"""Schema management: the package's Alembic migrations, driven from Python.

Used by db_init.py (the runbook's script, see main()) and by the litellm_schema Ansible module.
No alembic.ini is needed on hosts: the configuration is built here from the package path.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, func, inspect, make_url, select
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from litellm_pglog.db import describe_db_error, make_engine, safe_url
from litellm_pglog.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Serialises concurrent upgrades (two gateways starting at once); any constant works.
ADVISORY_LOCK_KEY = 0x6C69746C
URL_SHAPE = "postgresql+psycopg2://user:percent-encoded-password@host:port/database"


class SchemaError(Exception):
    """Why the schema could not be inspected or upgraded: one line, never the password."""


@dataclass
class SchemaStatus:
    current: str | None
    head: str
    pending: list[str]
    created_tables: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.pending


def _config(connection: Connection | None = None, output: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _status(connection: Connection) -> SchemaStatus:
    script = _script()
    head = script.get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    try:
        newest_first = script.iterate_revisions(head, current or "base")
        pending = [revision.revision for revision in reversed(list(newest_first))]
    except CommandError:
        raise SchemaError(
            f"database is at revision {current}, unknown to this package (newer release?)"
        ) from None
    if current is None:
        _refuse_unmanaged_tables(connection)
    return SchemaStatus(current=current, head=head, pending=pending)


def _refuse_unmanaged_tables(connection: Connection) -> None:
    unmanaged = sorted(set(Base.metadata.tables) & set(inspect(connection).get_table_names()))
    if unmanaged:
        raise SchemaError(
            f"tables {', '.join(unmanaged)} exist without an Alembic revision (created by another tool?); "
            "move them away or stamp them before running db_init"
        )


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """An open connection to the URL; every failure is a one-line SchemaError without the password."""
    where = safe_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        raise SchemaError(f"invalid database URL, expected {URL_SHAPE} ({where})") from None
    try:
        engine = make_engine(parsed, poolclass=NullPool)
    except NoSuchModuleError:
        raise SchemaError(f"unknown database driver {parsed.drivername!r} ({where})") from None
    except ArgumentError as exc:
        raise SchemaError(f"{exc} ({where})") from None
    try:
        with engine.connect() as connection:
            yield connection
    except DBAPIError as exc:
        raise SchemaError(f"{describe_db_error(exc, url)} ({where})") from None
    finally:
        engine.dispose()


def inspect_schema(url: str) -> SchemaStatus:
    """Which revision the database is at and which revisions an upgrade would apply."""
    with connect(url) as connection:
        return _status(connection)


def upgrade_schema(url: str) -> SchemaStatus:
    """Upgrade to head in one transaction; returns the status found BEFORE the upgrade.

    ``pending`` lists the revisions that were applied (empty: nothing changed) and
    ``created_tables`` the tables the upgrade created.
    """
    with connect(url) as connection, connection.begin():
        connection.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
        status = _status(connection)
        if status.pending:
            tables_before = set(inspect(connection).get_table_names())
            command.upgrade(_config(connection), status.head)
            tables_after = set(inspect(connection).get_table_names())
            # The schema's tables only: their partitions are an implementation detail.
            status.created_tables = sorted((tables_after - tables_before) & set(Base.metadata.tables))
        return status


def render_upgrade_sql(current: str | None, head: str) -> str:
    """The SQL an upgrade from ``current`` to ``head`` runs (Alembic offline mode), for --diff."""
    if current == head:
        return ""
    output = io.StringIO()
    command.upgrade(_config(output=output), f"{current}:{head}" if current else head, sql=True)
    return output.getvalue()


def _describe_upgrade(status: SchemaStatus) -> str:
    if status.up_to_date:
        return f"schema up to date at revision {status.head} (no change)"
    if status.created_tables:
        detail = f"created tables {', '.join(status.created_tables)}"
    else:
        detail = f"applied {', '.join(status.pending)}"
    return f"upgraded schema {status.current} -> {status.head} ({detail})"


def _describe_check(status: SchemaStatus) -> str:
    if status.up_to_date:
        return f"schema up to date at revision {status.head} (no change)"
    return (
        f"schema at revision {status.current}, would upgrade to {status.head} ({', '.join(status.pending)})"
    )


def main(argv: list[str] | None = None) -> int:
    """db_init: bring the logging schema at LITELLM_DB_URL to the newest revision."""
    parser = argparse.ArgumentParser(prog="db_init", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="only report what an upgrade would do")
    args = parser.parse_args(argv)

    def action(url: str) -> list[str]:
        return [
            _describe_check(inspect_schema(url)) if args.check else _describe_upgrade(upgrade_schema(url))
        ]

    return run_command("db_init", action)


def run_command(prog: str, action: Callable[[str], list[str]]) -> int:
    """A console script's frame: action(LITELLM_DB_URL)'s lines on stdout, exit 0; or exit 1 with
    one error line on stderr, never a traceback or the password."""
    url = os.environ.get("LITELLM_DB_URL", "").strip()
    if not url:
        print(f"{prog}: error: LITELLM_DB_URL is not set", file=sys.stderr)
        return 1
    try:
        lines = action(url)
    except SchemaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line for the operator, never a traceback with URL parts
        reason = describe_db_error(exc, url)
        print(f"{prog}: error: {type(exc).__name__}: {reason} ({safe_url(url)})", file=sys.stderr)
        return 1
    for line in lines:
        print(f"{prog}: {line}")
    return 0
