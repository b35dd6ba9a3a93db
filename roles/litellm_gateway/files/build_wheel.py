#!/usr/bin/env python3
"""Build the gateway package's wheel on the control node, once per change of its source.

Run by the litellm_gateway role (delegate_to: localhost, run_once). The wheel's version is
the package's own version with a PEP 440 local part made of the first 12 hex digits of a
SHA-256 over the source tree (relative paths and contents, caches and build debris left
out), e.g. ``0.1.0+3f2a9c1b7d4e``. An unchanged tree therefore names the wheel that is
already there (nothing is rebuilt, and pip on the hosts sees the version it has), a
changed tree a new version (pip installs it, the service restarts).

The source is copied to a temporary directory and only that copy's pyproject.toml gets
the local version; the tree itself is never written to. Older wheels of the package in
the output directory are removed. Prints one JSON object on stdout:
``{"built": bool, "path": str, "name": str, "version": str}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

EXCLUDED = re.compile(
    r"(^|/)(__pycache__|\.pytest_cache|\.ruff_cache|\.mypy_cache|build|dist|[^/]*\.egg-info)(/|$)|\.py[co]$"
)
VERSION_LINE = re.compile(r'(?m)^version\s*=\s*"[^"]*"')


def source_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files that make the package, sorted."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not EXCLUDED.search(rel):
            found.append(rel)
    return sorted(found)


def tree_digest(root: Path, files: list[str]) -> str:
    digest = hashlib.sha256()
    for rel in files:
        data = (root / rel).read_bytes()
        digest.update(b"%s\0%d\0" % (rel.encode(), len(data)))
        digest.update(data)
    return digest.hexdigest()


def wheel_name(project: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', project).lower()}-{version}-py3-none-any.whl"


def build(root: Path, files: list[str], version: str, out: Path, expected: str) -> None:
    with tempfile.TemporaryDirectory(prefix="wheel-") as tmp:
        src, dist = Path(tmp, "src"), Path(tmp, "dist")
        for rel in files:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, src / rel)
        pyproject = src / "pyproject.toml"
        text, count = VERSION_LINE.subn(f'version = "{version}"', pyproject.read_text(), count=1)
        if count != 1:
            sys.exit(f'{root / "pyproject.toml"}: no static `version = "..."` line')
        pyproject.write_text(text)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist)]
        command.append(str(src))
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        subprocess.run(command, check=True, stdout=sys.stderr, env=env)
        produced = dist / expected
        if not produced.is_file():
            sys.exit(f"pip built {[p.name for p in dist.iterdir()]}, expected {expected}")
        out.mkdir(parents=True, exist_ok=True)
        partial = out / f".{expected}.partial"
        shutil.copyfile(produced, partial)
        os.replace(partial, out / expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="package tree (with pyproject.toml)")
    parser.add_argument("--out", required=True, type=Path, help="directory that keeps the built wheel")
    args = parser.parse_args(argv)

    root, out = args.source.resolve(), args.out.resolve()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    files = source_files(root)
    version = f"{project['version']}+{tree_digest(root, files)[:12]}"
    name = wheel_name(project["name"], version)
    built = not (out / name).is_file()
    if built:
        build(root, files, version, out, name)
    for old in out.glob(wheel_name(project["name"], "*")):
        if old.name != name:
            old.unlink()
    print(json.dumps({"built": built, "path": str(out / name), "name": project["name"], "version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
