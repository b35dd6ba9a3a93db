"""ansible-playbook with the modules that would touch a host replaced by stand-ins.

Usage: python run_playbook.py ANSIBLE-PLAYBOOK-ARGS...
Environment: PGDG_TEST_FACTS (JSON: the facts `setup` returns), PGDG_TEST_RECORD
(file that receives one JSON line {module, args} per stubbed module call).

Every action plugin (argument validation, include_vars, set_fact, assert, ...) and
every condition runs for real; only ActionBase._execute_module is intercepted for
the modules below. The stand-in host has python3-apt and python3-debian but no
PostgreSQL: installing postgresql-* reports a change, everything else does not.
"""

from __future__ import annotations

import json
import os
import sys

from ansible.cli.playbook import PlaybookCLI
from ansible.plugins.action import ActionBase

STUBBED = {"setup", "apt", "deb822_repository", "command", "systemd_service"}
_real_execute_module = ActionBase._execute_module


def _stub_result(name: str, args: dict) -> dict:
    if name == "setup":
        return {"ansible_facts": json.loads(os.environ["PGDG_TEST_FACTS"])}
    if name == "command":  # the role's python3-apt probe
        return {"rc": 0, "stdout": "install ok installed", "stderr": ""}
    if name == "apt":
        names = args.get("name") or []
        names = [names] if isinstance(names, str) else names
        return {"changed": any(str(n).startswith("postgresql") for n in names)}
    if name == "deb822_repository":
        return {"changed": True}
    return {}


def _execute_module(self, module_name=None, module_args=None, *args, **kwargs):
    name = (module_name or self._task.action).rsplit(".", 1)[-1]
    if name not in STUBBED:
        return _real_execute_module(self, module_name, module_args, *args, **kwargs)
    module_args = dict(self._task.args if module_args is None else module_args)
    if name != "setup":
        with open(os.environ["PGDG_TEST_RECORD"], "a", encoding="utf-8") as record:
            clean = {k: v for k, v in module_args.items() if not k.startswith("_ansible")}
            record.write(json.dumps({"module": name, "args": clean}, default=str) + "\n")
    return {"changed": False, "failed": False, **_stub_result(name, module_args)}


ActionBase._execute_module = _execute_module

if __name__ == "__main__":
    PlaybookCLI.cli_executor(["ansible-playbook", *sys.argv[1:]])
