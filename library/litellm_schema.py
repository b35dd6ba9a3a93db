#!/usr/bin/python
"""Ansible module: bring the litellm-pglog database schema to its head revision."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from litellm_pglog.db import describe_db_error
    from litellm_pglog.schema import SchemaError, inspect_schema, render_upgrade_sql, upgrade_schema
    from sqlalchemy import Engine, event, make_url
except ImportError:
    SCHEMA_IMPORT_ERROR = traceback.format_exc()
else:
    SCHEMA_IMPORT_ERROR = None

DOCUMENTATION = r"""
---
module: litellm_schema
short_description: Apply the litellm-pglog schema migrations to PostgreSQL
description:
  - Brings the request log tables (C(requests), C(responses)) of the LiteLLM gateway
    to the head revision of the migrations shipped in the C(litellm_pglog) package,
    through C(litellm_pglog.schema) (Alembic, driven programmatically).
  - Revision 0003 range-partitions both tables by C(created_at) in place (the old tables become
    the partitions C(requests_legacy) and C(responses_legacy); a DEFAULT partition and daily
    partitions for the next 7 days are created). Later partitions are created and expired ones
    dropped by the package's C(litellm-pglog-maintain) command, not by this module.
  - Reports C(changed) only when DDL ran.
  - Returns the SQL statements it executed in RV(queries), like the C(community.postgresql) modules.
  - In check mode it reports the pending revisions and the statements an upgrade would execute,
    without running any DDL.
  - With C(--diff) it shows the revision before and after and the SQL of the upgrade.
  - Runs with the gateway venv's interpreter (set C(ansible_python_interpreter)), where
    C(litellm_pglog), SQLAlchemy, Alembic and psycopg2 are installed.
version_added: "0.1.0"
author:
  - LiteLLM gateway team
requirements:
  - litellm-pglog (the gateway package) importable by the interpreter running the module
options:
  env_file:
    description:
      - Environment file of the gateway service to read C(LITELLM_DB_URL) from, on the
        managed host, so that no secret passes as a module parameter.
      - Ignored when O(db_url) is set.
    type: path
    default: /etc/litellm/litellm.env
  db_url:
    description:
      - SQLAlchemy URL of the database, for example
        C(postgresql+psycopg2://litellm_user:<percent-encoded password>@192.168.10.19:5432/litellm_db).
      - Takes precedence over O(env_file). Never logged.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
notes:
  - Error messages are one line and never contain the database password; the URL and its
    password are masked in everything the module returns.
  - RV(queries) lists the statements that change the database, as PostgreSQL received them
    (catalog and revision look-ups, which only read, are left out). In check mode they are
    rendered by Alembic's offline mode, which compiles the same migration operations for
    PostgreSQL, so check mode and a real run return the same list.
  - The migrations run in one transaction under an advisory lock, so two hosts upgrading
    the same database at once apply them once.
  - Revision 0003 locks C(requests) and C(responses) for its whole transaction (about 4 s
    for 1 million rows on a 2-core machine); the gateways spool log records meanwhile.
  - The migrations are static SQL. Where a step depends on the data or the date (the
    partition bounds, the identity after the highest id), a C(DO) block computes it when it
    runs, so RV(queries) in check mode is exactly what a real run executes.
seealso:
  - name: Alembic
    description: The migration tool behind litellm_pglog.schema.
    link: https://alembic.sqlalchemy.org/
"""

EXAMPLES = r"""
- name: Bring the schema to head, reading the URL from the service's environment file
  litellm_schema:
    env_file: /etc/litellm/litellm.env
  vars:
    ansible_python_interpreter: /opt/litellm/venv/bin/python

- name: Show what an upgrade would do without touching the database
  litellm_schema:
  vars:
    ansible_python_interpreter: /opt/litellm/venv/bin/python
  check_mode: true
  diff: true
  register: schema

- name: Report the pending revisions and the SQL they would run
  ansible.builtin.debug:
    msg:
      - "{{ schema.pending | join(', ') or 'schema up to date' }}"
      - "{{ schema.queries }}"
"""

RETURN = r"""
revision_before:
  description: Revision of the database before the module ran (null on an empty database).
  returned: always
  type: str
  sample: "0001"
revision:
  description: Revision of the database after the module ran (in check mode, the revision it would have).
  returned: always
  type: str
  sample: "0003"
head:
  description: Head revision of the migrations shipped in the package.
  returned: always
  type: str
  sample: "0003"
pending:
  description: Revisions that were applied (in check mode, that would be applied), oldest first.
  returned: always
  type: list
  elements: str
  sample: ["0001", "0002", "0003"]
queries:
  description:
    - SQL statements executed by the upgrade, in order (in check mode, the statements it would execute).
    - Empty when the schema is already at head.
  returned: always
  type: list
  elements: str
  sample:
    - "ALTER TABLE requests ADD COLUMN stream BOOLEAN"
    - "ALTER TABLE requests ADD COLUMN error_type VARCHAR(255)"
    - "CREATE INDEX ix_requests_created_at ON requests (created_at)"
    - "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001'"
"""

DB_URL_VARIABLE = "LITELLM_DB_URL"
# Statements that only read; everything else the upgrade sends is returned in `queries`.
READ_ONLY_KEYWORDS = ("SELECT", "SHOW")
TRANSACTION_CONTROL = ("BEGIN", "COMMIT")


def read_db_url(module: AnsibleModule) -> str:
    if module.params["db_url"]:
        url = module.params["db_url"]
    else:
        env_file = module.params["env_file"]
        if not os.path.isfile(env_file):
            module.fail_json(msg=f"{env_file} does not exist; set env_file or db_url")
        from dotenv import dotenv_values  # a pinned dependency of litellm-pglog

        url = dotenv_values(env_file, interpolate=False).get(DB_URL_VARIABLE)
        if not url:
            module.fail_json(msg=f"{env_file} does not set {DB_URL_VARIABLE}")
    hide_secrets(module, url)
    return url


def hide_secrets(module: AnsibleModule, url: str) -> None:
    """Mask the URL and its password (as written and decoded) in everything the module returns."""
    module.no_log_values.add(url)
    try:
        password = make_url(url).password
    except Exception:  # an unparseable URL is reported by the schema code, without its text
        return
    if password:
        module.no_log_values.update({str(password), quote(str(password), safe="")})


def normalise(statement: str) -> str:
    """One statement as Alembic's offline mode writes it: tabs as four spaces, no outer blanks."""
    return statement.replace("\t", "    ").strip()


def changes_database(statement: str) -> bool:
    words = statement.split(None, 1)
    return bool(words) and words[0].upper() not in READ_ONLY_KEYWORDS


@contextmanager
def recorded_statements() -> Iterator[list[str]]:
    """Collect the statements this process sends to PostgreSQL that change the database."""
    statements: list[str] = []

    def record(connection, cursor, statement, parameters, context, executemany) -> None:
        if parameters and not executemany and hasattr(cursor, "mogrify"):
            statement = cursor.mogrify(statement, parameters).decode()
        statement = normalise(statement)
        if changes_database(statement):
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def split_script(script: str) -> list[str]:
    """The statements of an Alembic offline script (`;` + blank line ends each one)."""
    statements = []
    for chunk in script.split(";\n\n"):
        statement = normalise("\n".join(line for line in chunk.splitlines() if not line.startswith("--")))
        if statement and statement.upper() not in TRANSACTION_CONTROL:
            statements.append(statement)
    return statements


def describe(revision: str | None) -> str:
    return f"revision: {revision or '(empty database)'}\n"


def build_diff(current: str | None, head: str, sql: str) -> dict[str, str]:
    return {
        "before_header": "database schema",
        "after_header": "database schema",
        "before": describe(current),
        "after": describe(head),
        "prepared": sql,
    }


def migrate(module: AnsibleModule, url: str) -> dict:
    status = inspect_schema(url)
    result = {
        "changed": False,
        "revision_before": status.current,
        "revision": status.head,
        "head": status.head,
        "pending": list(status.pending),
        "queries": [],
    }
    if status.up_to_date:
        return result
    if module.check_mode:
        sql = render_upgrade_sql(status.current, status.head)
        result.update(changed=True, queries=split_script(sql))
    else:
        with recorded_statements() as executed:
            # Re-reads the revision under the advisory lock: another host may have upgraded meanwhile.
            status = upgrade_schema(url)
        result.update(
            changed=not status.up_to_date,
            revision_before=status.current,
            pending=list(status.pending),
            queries=executed,
        )
        sql = render_upgrade_sql(status.current, status.head) if module._diff else ""
    if module._diff and result["changed"]:
        result["diff"] = build_diff(status.current, status.head, sql)
    return result


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "env_file": {"type": "path", "default": "/etc/litellm/litellm.env"},
            "db_url": {"type": "str", "no_log": True},
        },
        supports_check_mode=True,
    )
    if SCHEMA_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("litellm_pglog"), exception=SCHEMA_IMPORT_ERROR)

    url = read_db_url(module)
    try:
        result = migrate(module, url)
    except SchemaError as error:
        module.fail_json(msg=str(error))
    except Exception as error:  # one line, never a traceback that could carry parts of the URL
        module.fail_json(msg=f"{type(error).__name__}: {describe_db_error(error, url)}")
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
