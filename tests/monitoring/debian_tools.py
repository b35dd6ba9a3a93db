"""The tests' one "ensure" step for tools that come from Debian packages (chromium, promtool).

``ensure_debian_package("chromium", "chromium")`` returns the program's path, installing the
package with apt-get first when the program is missing and we are root (as on the team's test
machines). Returns None when it cannot be installed; the caller decides to skip or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess

APT_TIMEOUT_SECONDS = 900


def ensure_debian_package(package: str, program: str) -> str | None:
    found = shutil.which(program)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        done = subprocess.run(command, env=environment, capture_output=True, timeout=APT_TIMEOUT_SECONDS)
        if done.returncode != 0:
            return None
    return shutil.which(program)
