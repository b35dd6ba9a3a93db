#!/usr/bin/python
"""Ansible module: bring the litellm-pglog database schema to its head revision."""

from __future__ import annotations

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from litellm_pglog.schema import SchemaError, inspect_schema, render_upgrade_sql, upgrade_schema
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
  - Reports C(changed) only when DDL ran.
  - In check mode it reports the pending revisions without running any DDL.
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
  - Error messages never contain the database password.
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

- name: Report the pending revisions
  ansible.builtin.debug:
    msg: "{{ schema.pending | join(', ') or 'schema up to date' }}"
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
  sample: "0002"
head:
  description: Head revision of the migrations shipped in the package.
  returned: always
  type: str
  sample: "0002"
pending:
  description: Revisions that were applied (in check mode, that would be applied), oldest first.
  returned: always
  type: list
  elements: str
  sample: ["0001", "0002"]
"""

DB_URL_VARIABLE = "LITELLM_DB_URL"


def read_db_url(module: AnsibleModule) -> str:
    if module.params["db_url"]:
        return module.params["db_url"]
    env_file = module.params["env_file"]
    if not os.path.isfile(env_file):
        module.fail_json(msg=f"{env_file} does not exist; set env_file or db_url")
    from dotenv import dotenv_values  # a pinned dependency of litellm-pglog

    url = dotenv_values(env_file, interpolate=False).get(DB_URL_VARIABLE)
    if not url:
        module.fail_json(msg=f"{env_file} does not set {DB_URL_VARIABLE}")
    module.no_log_values.add(url)
    return url


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
        status = inspect_schema(url)
        result = {
            "changed": not status.up_to_date,
            "revision_before": status.current,
            "revision": status.head,
            "head": status.head,
            "pending": list(status.pending),
        }
        if status.up_to_date:
            module.exit_json(**result)
        if module._diff:
            sql = render_upgrade_sql(status.current, status.head)
            result["diff"] = build_diff(status.current, status.head, sql)
        if not module.check_mode:
            upgrade_schema(url)
    except SchemaError as error:
        module.fail_json(msg=str(error))
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
