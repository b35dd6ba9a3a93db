"""The textfile-collector writers (roles/node_exporter/files/textfile): what they write, and that
promtool reads it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

WRITERS = Path(__file__).resolve().parents[2] / "roles" / "node_exporter" / "files" / "textfile"
sys.path.insert(0, str(WRITERS))
import pgbackrest_metrics  # noqa: E402 - scripts, not a package
import tls_certificates  # noqa: E402
from promfile import Gauge, Sample, render  # noqa: E402

# The shape of `pgbackrest --output=json info` (2.55), trimmed to what the writer reads.
INFO = [
    {
        "name": "main",
        "backup": [
            {"type": "full", "timestamp": {"start": 1000, "stop": 1100}},
            {"type": "diff", "timestamp": {"start": 2000, "stop": 2050}},
            {"type": "full", "timestamp": {"start": 3000, "stop": 3300}},
        ],
    },
    {"name": "new", "backup": []},
]


def lint(promtool: str, text: str) -> None:
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pgbackrest_newest_backup_per_stanza_and_type(tmp_path: Path, promtool: str) -> None:
    saved, output = tmp_path / "info.json", tmp_path / "pgbackrest.prom"
    saved.write_text(json.dumps(INFO))
    assert (
        pgbackrest_metrics.main(["--max-age", "93600", "--output", str(output), "--info-json", str(saved)])
        == 0
    )
    text = output.read_text()
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        'pgbackrest_last_backup_timestamp_seconds{stanza="main",type="full"} 3300',
        'pgbackrest_last_backup_timestamp_seconds{stanza="main",type="diff"} 2050',
        'pgbackrest_backup_max_age_seconds{stanza="main"} 93600',
        'pgbackrest_backup_max_age_seconds{stanza="new"} 93600',  # no backup yet: BackupMissing
    ]
    lint(promtool, text)
    assert (
        output.stat().st_mode & 0o777 == 0o644
        and [p.name for p in tmp_path.iterdir()].count(output.name) == 1
    )


def test_pgbackrest_failure_keeps_the_old_file(tmp_path: Path) -> None:
    output = tmp_path / "pgbackrest.prom"
    output.write_text("old\n")
    assert (
        pgbackrest_metrics.main(["--max-age", "1", "--output", str(output), "--info-json", "/nonexistent"])
        == 1
    )
    assert output.read_text() == "old\n"


def test_tls_certificate_not_after(tmp_path: Path, promtool: str) -> None:
    certificate, key, output = tmp_path / "gw.crt", tmp_path / "gw.key", tmp_path / "tls.prom"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "10", "-subj", "/CN=gw"]
        + ["-keyout", str(key), "-out", str(certificate)],
        check=True,
        capture_output=True,
    )
    assert (
        tls_certificates.main(["--output", str(output), str(certificate), str(tmp_path / "missing.crt")]) == 1
    )
    text = output.read_text()
    (sample,) = [line for line in text.splitlines() if not line.startswith("#")]
    labels, value = sample.rsplit(" ", 1)
    assert labels == f'tls_certificate_not_after_timestamp_seconds{{path="{certificate}"}}'
    assert float(value) == pytest.approx(time.time() + 10 * 86400, abs=120)
    lint(promtool, text)


def test_label_values_are_escaped() -> None:
    gauge = Gauge("x", "help", [Sample({"path": 'a"b\\c\nd'}, 1.5)])
    assert render([gauge]).splitlines()[-1] == 'x{path="a\\"b\\\\c\\nd"} 1.5'
