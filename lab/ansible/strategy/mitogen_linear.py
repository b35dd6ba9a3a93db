"""Mitogen's linear strategy, for the lab's and CI's playbook runs (scripts/lib.sh selects it).

Each task of a plain Ansible run starts a new Python on the host and compiles the module and its
module_utils from a zip again. Mitogen keeps one interpreter per host and caches the imports: the
lab's second converge drops from about 180 s to about 85 s of wall time, and its CPU time (the
control node and all lab containers share two cores) from 270 s to 110 s. It accelerates
connections named by their short name (`ansible_connection: docker`); the tasks and their results
are the same as with the builtin linear strategy, which production runs keep (ansible.cfg).
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
