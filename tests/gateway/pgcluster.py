"""A throwaway PostgreSQL cluster for tests and benchmarks (real server, never SQLite).

Set up like the runbook's server: scram-sha-256 over TCP on 127.0.0.1, role litellm_user with a
password full of URL metacharacters, database litellm_db (UTF8, C collation, template0). The
superuser talks over a Unix socket in the cluster directory (trust), never over TCP.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg2
from psycopg2 import sql
from sqlalchemy import URL

APP_USER = "litellm_user"
APP_DATABASE = "litellm_db"
PASSWORD_METACHARACTERS = "!@:/#%"


def find_bin_dir() -> Path:
    """The newest PostgreSQL server binaries (Debian layout); raises when there are none."""
    override = os.environ.get("PG_BIN_DIR")
    candidates = [Path(override)] if override else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = [p for p in root.iterdir() if p.name.isdigit() and (p / "bin" / "initdb").exists()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise RuntimeError(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and $PG_BIN_DIR); "
        "install Debian's postgresql package"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgCluster:
    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port = free_port()
        self.password = f"Pw{PASSWORD_METACHARACTERS}{secrets.token_urlsafe(12)}"
        self.base = Path(tempfile.mkdtemp(prefix="pglog-pg-"))
        self.data = self.base / "data"
        self._run_as = "postgres" if os.geteuid() == 0 else None
        self._databases = 0
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)

    # ---- lifecycle --------------------------------------------------------------------------

    def create(self) -> PgCluster:
        password_file = self.base / "superuser-password"
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={self._write_private(password_file, secrets.token_hex(16))}",
            "--no-sync",
        )
        self.start()
        self._provision()
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        status = subprocess.run(
            self._command("pg_ctl", "-D", str(self.data), "status"), capture_output=True, check=False
        )
        return status.returncode == 0

    def destroy(self) -> None:
        if self.is_running():
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- URLs and databases -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for(APP_DATABASE)

    def url_for(self, database: str, password: str | None = None, port: int | None = None) -> str:
        url = URL.create(
            "postgresql+psycopg2",
            username=APP_USER,
            password=self.password if password is None else password,
            host="127.0.0.1",
            port=self.port if port is None else port,
            database=database,
        )
        return url.render_as_string(hide_password=False)

    def create_database(self) -> str:
        """A new empty database owned by litellm_user; returns its name."""
        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        self._admin(
            sql.SQL(
                "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(sql.Identifier(name), sql.Identifier(APP_USER))
        )
        return name

    def drop_database(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # ---- internals --------------------------------------------------------------------------

    def _provision(self) -> None:
        self._admin(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(APP_USER), sql.Literal(self.password)
            )
        )
        self._admin(
            sql.SQL(
                "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(sql.Identifier(APP_DATABASE), sql.Identifier(APP_USER))
        )

    def _admin(self, statement: sql.Composable) -> None:
        connection = psycopg2.connect(host=str(self.base), port=self.port, user="postgres", dbname="postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def _write_private(self, path: Path, content: str) -> Path:
        path.write_text(content + "\n")
        path.chmod(0o600)
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", self._run_as, "--", *command] if self._run_as else command

    def _pg(self, program: str, *args: str) -> None:
        result = subprocess.run(
            self._command(program, *args), capture_output=True, text=True, check=False, cwd=self.base
        )
        if result.returncode != 0:
            log_file = self.base / "server.log"
            server_log = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{server_log}"
            )
