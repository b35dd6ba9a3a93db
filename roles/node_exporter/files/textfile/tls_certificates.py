#!/usr/bin/env python3
"""Write ``tls_certificate_not_after_timestamp_seconds{path}`` for node_exporter's textfile collector.

    tls_certificates.py --output /var/lib/prometheus/node-exporter/tls_certificates.prom \
        /etc/litellm/tls/gateway.crt /etc/postgresql/tls/server.crt

Reads each certificate's notAfter with the ``openssl`` command (the hosts have it; Python's
standard library cannot parse a certificate file). A certificate that cannot be read is left
out and the command exits 1 (a failed timer is visible in systemd), after writing the others.
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
from pathlib import Path

from promfile import Gauge, Sample, render, write_atomically

METRIC = "tls_certificate_not_after_timestamp_seconds"


class CertificateError(Exception):
    pass


def not_after(path: Path) -> float:
    """The certificate's notAfter as a Unix time."""
    done = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[0] if done.stderr.strip() else "openssl failed"
        raise CertificateError(f"{path}: {reason}")
    # "notAfter=Nov 27 12:00:00 2027 GMT": the format ssl.cert_time_to_seconds reads.
    return float(ssl.cert_time_to_seconds(done.stdout.strip().removeprefix("notAfter=")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Write {METRIC} for certificate files.")
    parser.add_argument("--output", type=Path, required=True, help="the .prom file to replace")
    parser.add_argument("certificates", type=Path, nargs="+")
    args = parser.parse_args(argv)
    gauge = Gauge(METRIC, "notAfter of the certificate file, Unix time")
    failed = False
    for path in args.certificates:
        try:
            gauge.samples.append(Sample({"path": str(path)}, not_after(path)))
        except CertificateError as exc:
            print(f"tls_certificates: {exc}", file=sys.stderr)
            failed = True
    write_atomically(args.output, render([gauge]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
