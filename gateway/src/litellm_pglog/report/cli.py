"""``litellm-pglog-report``: print the gateway's usage per API key alias and per model."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from litellm_pglog.db import describe_db_error, make_engine, safe_url
from litellm_pglog.report.queries import Usage, collect_usage
from litellm_pglog.report.tables import render_text
from litellm_pglog.report.window import WINDOW_SHAPE, Window, WindowError, parse_window

PROG = "litellm-pglog-report"
URL_ENV = "LITELLM_DB_URL"
# Aggregating 90 days of a busy log may take a while; unbounded it could hold a snapshot for hours.
STATEMENT_TIMEOUT_SECONDS = 600


class ReportError(Exception):
    """Why the report could not be made: one line, never the password."""


@contextmanager
def read_only(url: str) -> Iterator[Connection]:
    """One read-only REPEATABLE READ transaction: every table of the report sees the same rows,
    and the report can never write to the log tables."""
    try:
        engine = make_engine(make_url(url), statement_timeout=STATEMENT_TIMEOUT_SECONDS, poolclass=NullPool)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ReportError(f"invalid database URL: {exc} ({safe_url(url)})") from None
    try:
        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        with engine.connect().execution_options(**options) as connection, connection.begin():
            yield connection
    except DBAPIError as exc:
        raise ReportError(f"{describe_db_error(exc, url)} ({safe_url(url)})") from None
    finally:
        engine.dispose()


def make_report(url: str, window: Window) -> Usage:
    with read_only(url) as connection:
        return collect_usage(connection, window)


def write_html(usage: Usage, path: Path) -> None:
    from litellm_pglog.report.page import PageUnavailable, render_html  # matplotlib: optional

    try:
        page = render_html(usage)
    except PageUnavailable as exc:
        raise ReportError(str(exc)) from None
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=f"Gateway usage per API key alias and per model, from the log tables at {URL_ENV}.",
    )
    parser.add_argument("--since", default="24h", help=f"start: {WINDOW_SHAPE} (default 24h)")
    parser.add_argument("--until", help="end, same forms as --since (default now)")
    parser.add_argument("--html", type=Path, metavar="PATH", help="also write the report as an HTML page")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    window = parse_window(args.since, args.until)
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        raise ReportError(f"{URL_ENV} is not set")
    usage = make_report(url, window)
    if args.html:
        write_html(usage, args.html)
    return render_text(usage)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        text = run(args)
    except (WindowError, ReportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, WindowError) else 1
    print(text)
    if args.html:
        print(f"\nHTML report written to {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
