"""The litellm_schema module, run by ansible-playbook against a real throwaway PostgreSQL.

The assertions live in the integration target (targets/litellm_schema/tasks/main.yml); this
test starts the cluster, runs the playbook and fails when the playbook fails. The database URL
(it carries the password) reaches the playbook through the environment, never as an argument.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from pgcluster import PgCluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLAYBOOK = HERE / "litellm_schema.yml"
TIMEOUT_SECONDS = 300


def ansible_playbook() -> str:
    """The ansible-playbook of the interpreter running the tests (the venv with litellm_pglog)."""
    return str(Path(sys.executable).parent / "ansible-playbook")


def test_litellm_schema_module(pg_cluster: PgCluster) -> None:
    env = os.environ | {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LIBRARY": str(REPO / "library"),
        "ANSIBLE_ROLES_PATH": str(HERE / "targets"),
        "ANSIBLE_NOCOLOR": "1",
        "LITELLM_SCHEMA_TEST_URL": pg_cluster.url,
        "LITELLM_SCHEMA_TEST_SOCKET_DIR": str(pg_cluster.base),
        "LITELLM_SCHEMA_TEST_PORT": str(pg_cluster.port),
    }
    command = [ansible_playbook(), "-i", "localhost,", "-v", str(PLAYBOOK)]

    run = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
    )

    output = run.stdout + run.stderr
    assert run.returncode == 0, f"ansible-playbook failed ({run.returncode}):\n{output[-12000:]}"
    for secret in {pg_cluster.password, quote(pg_cluster.password, safe="")}:
        assert secret not in output, "the database password appeared in the playbook's output"
    assert "failed=0" in run.stdout
