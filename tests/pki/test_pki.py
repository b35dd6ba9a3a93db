"""roles/pki run by ansible-playbook against localhost, checked with the cryptography package.

Several inventory hosts, all ``ansible_connection: local`` with their own ``pki_dir``, stand for
the hosts of one deployment, so each ansible-playbook run covers every case at once (the role's
CA tasks run once per play, as in production). The runs, in order:

1. ``--check`` with no CA and no host files: changes reported, nothing written, nothing failed.
2. converge: the CA is created, each host gets its certificate (``short`` one that expires
   within the renewal window of the next run), ``provided`` gets the operator's files and
   ``mismatch`` (a provided key that is not the certificate's) is refused.
3. between the runs the test plants a certificate from another CA on ``wrongca`` and the
   inventory gives ``sans`` an extra name; converge again: ``fresh`` and ``provided`` unchanged,
   ``short``, ``wrongca`` and ``sans`` re-issued.
4. ``--check`` again: the converged hosts report changed=0; ``late`` (never converged) reports
   changes without failing and without files.
5. a wrong CA passphrase: the play stops, the CA key is not replaced.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLAYBOOK = HERE / "pki.yml"
PASSPHRASE = "lab-ca-passphrase-for-tests"
TIMEOUT_SECONDS = 240
CONVERGED = ["fresh", "short", "wrongca", "sans", "provided"]
CHECKED = ["fresh", "provided"]  # one issued, one provided: enough for check mode, and fast


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _self_signed_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, public_key: Any, names: list[str]
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=300))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _pem(obj: Any) -> str:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class Deployment:
    """The temporary CA dir, one pki_dir per inventory host, and the ansible-playbook runs."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ca_dir = base / "control" / "pki"
        self.runs: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}
        op_ca_key, self.op_ca = _self_signed_ca("Operator CA")
        self.op_key = ec.generate_private_key(ec.SECP256R1())
        self.op_cert = _leaf(op_ca_key, self.op_ca, self.op_key.public_key(), ["provided.example.test"])
        self.extra_sans: list[str] = []
        self.passphrase = PASSPHRASE

    def pki_dir(self, host: str) -> Path:
        return self.base / "hosts" / host

    def inventory(self) -> dict[str, Any]:
        me = os.getuid()
        common = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "pki_ca_dir": str(self.ca_dir),
            "pki_ca_passphrase": self.passphrase,
            "pki_certificate_name": "service",
            "pki_packages": [],
            "pki_certificate_owner": str(me),
            "pki_certificate_group": str(os.getgid()),
        }
        hosts: dict[str, dict[str, Any]] = {
            host: {"pki_dir": str(self.pki_dir(host))} for host in [*CONVERGED, "mismatch", "late"]
        }
        hosts["fresh"]["pki_client_auth"] = True
        hosts["sans"]["pki_extra_sans"] = self.extra_sans
        if "converge-1" not in self.runs:  # the first converge issues it for 20 days
            hosts["short"] |= {"pki_certificate_days": 20, "pki_renew_days": 10}
        hosts["provided"] |= {
            "pki_provided_certificate": _pem(self.op_cert),
            "pki_provided_key": _pem(self.op_key),
            "pki_provided_ca": _pem(self.op_ca),
            "pki_key_mode": "0640",
        }
        hosts["mismatch"] |= {
            "pki_provided_certificate": _pem(self.op_cert),
            "pki_provided_key": _pem(ec.generate_private_key(ec.SECP256R1())),
            "pki_provided_ca": _pem(self.op_ca),
        }
        return {"all": {"vars": common, "hosts": hosts}}

    def run(self, name: str, limit: list[str], check: bool = False) -> dict[str, Any]:
        inventory = self.base / f"inventory-{name}.yml"
        inventory.write_text(json.dumps(self.inventory()), encoding="utf-8")
        env = os.environ | {
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_NOCOLOR": "1",
            # facts gathered once per host for all runs (the role gathers only what is missing)
            "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.jsonfile",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(self.base / "facts"),
        }
        command = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            "--limit",
            ",".join(limit),
            str(PLAYBOOK),
        ]
        if check:
            command.append("--check")
        start = _now()
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
        )
        self.seconds[name] = (_now() - start).total_seconds()
        try:
            result = json.loads(done.stdout)
        except json.JSONDecodeError:
            pytest.fail(
                f"{name}: ansible-playbook gave no JSON ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        result["returncode"] = done.returncode
        result["text"] = done.stdout + done.stderr
        self.runs[name] = result
        return result

    def stats(self, run: str, host: str) -> dict[str, int]:
        return self.runs[run]["stats"][host]

    def returned(self, run: str, host: str) -> dict[str, Any]:
        """The facts the role returned, shown by the playbook's last task."""
        last = self.runs[run]["plays"][0]["tasks"][-1]
        assert last["task"]["name"] == "Show what the role returned"
        return last["hosts"][host]["msg"]

    def failures(self, run: str, host: str) -> list[str]:
        messages = []
        for task in self.runs[run]["plays"][0]["tasks"]:
            result = task["hosts"].get(host, {})
            if result.get("failed"):
                messages.append(str(result.get("msg", "")))
        return messages

    def certificate(self, host: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.pki_dir(host) / "service.crt").read_bytes())

    def ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.ca_dir / "ca.crt").read_bytes())

    def plant_foreign_certificate(self, host: str) -> x509.Certificate:
        """A certificate for the host's own key and names, signed by another CA."""
        key = serialization.load_pem_private_key((self.pki_dir(host) / "service.key").read_bytes(), None)
        other_key, other_ca = _self_signed_ca("LiteLLM deployment CA")  # same name, other key
        names = [
            n.value
            for n in self.certificate(host)
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
            if isinstance(n, x509.DNSName)
        ]
        cert = _leaf(other_key, other_ca, key.public_key(), names)
        (self.pki_dir(host) / "service.crt").write_text(_pem(cert), encoding="utf-8")
        return cert


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    d = Deployment(tmp_path_factory.mktemp("pki"))
    d.run("check-fresh", CHECKED, check=True)
    d.written_by_check = [p for p in [d.ca_dir, *map(d.pki_dir, CONVERGED)] if p.exists()]
    d.run("converge-1", [*CONVERGED, "mismatch"])
    d.before = {host: d.certificate(host) for host in ["fresh", "short", "sans"]}
    d.foreign = d.plant_foreign_certificate("wrongca")
    d.extra_sans.append("DNS:db.example.test")
    d.run("converge-2", CONVERGED)
    d.run("check-converged", [*CHECKED, "short", "late"], check=True)
    d.ca_key_before = (d.ca_dir / "ca.key").read_bytes()
    d.passphrase = "not-the-passphrase"
    d.run("wrong-passphrase", ["fresh"])
    print("ansible-playbook seconds:", d.seconds)
    return d


def test_check_mode_on_fresh_control_node_and_hosts(deployment: Deployment) -> None:
    run = deployment.runs["check-fresh"]
    assert run["returncode"] == 0, run["text"][-6000:]
    for host in CHECKED:
        assert deployment.stats("check-fresh", host)["changed"] > 0, host
        assert deployment.stats("check-fresh", host)["failures"] == 0, host
    assert deployment.written_by_check == [], "check mode wrote files"


def test_ca_has_ca_extensions_and_encrypted_key(deployment: Deployment) -> None:
    ca = deployment.ca()
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ca.verify_directly_issued_by(ca)  # self-signed
    assert ca.not_valid_after_utc - _now() > datetime.timedelta(days=3640)

    key_file = deployment.ca_dir / "ca.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(deployment.ca_dir.stat().st_mode) == 0o700
    pem_label = key_file.read_text().splitlines()[0].strip("-").removeprefix("BEGIN ")
    assert pem_label == "ENCRYPTED PRIVATE KEY"  # PKCS#8, encrypted
    with pytest.raises(TypeError):  # encrypted: no key without the passphrase
        serialization.load_pem_private_key(key_file.read_bytes(), None)
    key = serialization.load_pem_private_key(key_file.read_bytes(), PASSPHRASE.encode())
    assert key.public_key() == ca.public_key()
    assert sorted(p.name for p in deployment.ca_dir.iterdir()) == ["ca.crt", "ca.key"]


def test_host_certificate_verifies_against_the_ca(deployment: Deployment) -> None:
    cert, ca = deployment.certificate("fresh"), deployment.ca()
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_before_utc <= _now() <= cert.not_valid_after_utc
    assert cert.not_valid_after_utc - _now() > datetime.timedelta(days=360)

    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    assert "fresh" in dns  # the inventory name
    assert socket.gethostname().split(".")[0] in dns
    assert len(ips) == 1, ips  # the default IPv4 address
    assert len(dns) == len(set(dns))

    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # pki_client_auth
    assert list(
        deployment.certificate("short").extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca

    pki_dir = deployment.pki_dir("fresh")
    assert (pki_dir / "ca.crt").read_bytes() == (deployment.ca_dir / "ca.crt").read_bytes()
    assert stat.S_IMODE((pki_dir / "ca.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((pki_dir / "service.crt").stat().st_mode) == 0o644


def test_host_key_is_private_and_stays_on_the_host(deployment: Deployment) -> None:
    key_file = deployment.pki_dir("fresh") / "service.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert key.public_key() == deployment.certificate("fresh").public_key()
    body = b"".join(key_file.read_bytes().splitlines()[1:-1])
    for path in deployment.ca_dir.rglob("*"):
        assert body not in b"".join(path.read_bytes().splitlines()), f"the host key is in {path}"
    for run in deployment.runs.values():
        assert body.decode() not in run["text"], "the host key appeared in the playbook's output"


def test_returned_facts(deployment: Deployment) -> None:
    pki_dir = deployment.pki_dir("fresh")
    assert deployment.returned("converge-1", "fresh") == {
        "pki_certificate_path": f"{pki_dir}/service.crt",
        "pki_key_path": f"{pki_dir}/service.key",
        "pki_ca_path": f"{pki_dir}/ca.crt",
        "pki_certificate_changed": True,
    }
    assert deployment.returned("converge-2", "fresh")["pki_certificate_changed"] is False


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    assert deployment.runs["converge-2"]["returncode"] == 0, deployment.runs["converge-2"]["text"][-6000:]
    for host in ["fresh", "provided"]:
        assert deployment.stats("converge-2", host)["changed"] == 0, host
    assert deployment.certificate("fresh") == deployment.before["fresh"]


def test_certificate_within_renewal_window_is_renewed(deployment: Deployment) -> None:
    old, new = deployment.before["short"], deployment.certificate("short")
    assert old.not_valid_after_utc - _now() < datetime.timedelta(days=21)
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc - _now() > datetime.timedelta(days=360)
    new.verify_directly_issued_by(deployment.ca())
    assert deployment.returned("converge-2", "short")["pki_certificate_changed"] is True
    # the key stays: only the certificate is re-issued
    key = serialization.load_pem_private_key((deployment.pki_dir("short") / "service.key").read_bytes(), None)
    assert key.public_key() == new.public_key() == old.public_key()


def test_certificate_from_another_ca_is_replaced(deployment: Deployment) -> None:
    cert = deployment.certificate("wrongca")
    assert cert != deployment.foreign
    cert.verify_directly_issued_by(deployment.ca())
    assert deployment.returned("converge-2", "wrongca")["pki_certificate_changed"] is True


def test_changed_names_are_reissued(deployment: Deployment) -> None:
    old, new = deployment.before["sans"], deployment.certificate("sans")
    names = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "db.example.test" in names.get_values_for_type(x509.DNSName)
    assert new.serial_number != old.serial_number
    assert deployment.returned("converge-2", "sans")["pki_certificate_changed"] is True


def test_check_mode_on_converged_and_fresh_hosts(deployment: Deployment) -> None:
    run = deployment.runs["check-converged"]
    assert run["returncode"] == 0, run["text"][-6000:]
    for host in [*CHECKED, "short"]:
        assert deployment.stats("check-converged", host)["changed"] == 0, host
    assert deployment.stats("check-converged", "late")["changed"] > 0
    assert deployment.stats("check-converged", "late")["failures"] == 0
    assert not deployment.pki_dir("late").exists(), "check mode wrote files"


def test_provided_certificate_is_installed(deployment: Deployment) -> None:
    pki_dir = deployment.pki_dir("provided")
    assert deployment.certificate("provided") == deployment.op_cert
    assert x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes()) == deployment.op_ca
    key_file = pki_dir / "service.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o640
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert key.public_key() == deployment.op_cert.public_key()
    key_body = _pem(deployment.op_key).splitlines()[1]
    for run in deployment.runs.values():
        assert key_body not in run["text"], "the provided key appeared in the playbook's output"


def test_mismatched_provided_key_is_refused(deployment: Deployment) -> None:
    assert deployment.runs["converge-1"]["returncode"] != 0
    assert deployment.stats("converge-1", "mismatch")["failures"] == 1
    messages = deployment.failures("converge-1", "mismatch")
    assert any("pki_provided_key does not belong to pki_provided_certificate" in m for m in messages), (
        messages
    )
    assert not (deployment.pki_dir("mismatch") / "service.key").exists()
    assert not (deployment.pki_dir("mismatch") / "service.crt").exists()


def test_wrong_ca_passphrase_stops_and_keeps_the_ca_key(deployment: Deployment) -> None:
    assert deployment.runs["wrong-passphrase"]["returncode"] != 0
    messages = deployment.failures("wrong-passphrase", "fresh")
    assert any("another passphrase" in m for m in messages), messages
    assert (deployment.ca_dir / "ca.key").read_bytes() == deployment.ca_key_before
    assert deployment.certificate("fresh") == deployment.before["fresh"]
    assert "not-the-passphrase" not in deployment.runs["wrong-passphrase"]["text"]


def test_tls_handshake_verifies_name_and_ca(deployment: Deployment) -> None:
    """Python's ssl (what uvicorn uses) serves the issued pair; a client with ca.crt verifies it."""
    pki_dir = deployment.pki_dir("fresh")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki_dir / "service.crt", pki_dir / "service.key")
    client_context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname="fresh") as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(timeout=10)

    other = ssl.create_default_context()  # the system CAs only: must not trust the deployment CA
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve_refused() -> None:
            conn, _ = listener.accept()
            try:
                server_context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve_refused, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            other.wrap_socket(raw, server_hostname="fresh")
        thread.join(timeout=10)
