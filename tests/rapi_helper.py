"""Run the real jobqueue-rapi over HTTPS, with a test certificate, for end-to-end tests."""

from __future__ import annotations

import datetime
import ipaddress
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.daemon_helper import wait_until

#: name -> (password as written in the users file, password to log in with, options)
USERS = {
    "writer": ("w-secret", "w-secret", "write"),
    "reader": ("{cleartext}r-secret", "r-secret", "read"),
    # A hashed password: the MD5 of "hasher:Ganeti Remote API:h-secret" (upper-case
    # hex and a lower-case scheme: neither is case-sensitive).
    "hasher": ("{ha1}2F082FF5D58AEB45C37013C3850E6368", "h-secret", "read,write"),
}


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost; returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobqueue-rapi test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "rapi.crt", directory / "rapi.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def write_users(path: Path, users: dict[str, tuple[str, str, str]] = USERS) -> Path:
    lines = ["# test users"]
    lines += [f"{name} {stored} {options}" for name, (stored, _, options) in users.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


class Rapi:
    """One real jobqueue-rapi process on a free loopback port, over HTTPS."""

    def __init__(self, work: Path, socket_path: str, *args: str) -> None:
        self.work = work
        self.cert, self.key = make_certificate(work)
        self.users_file = write_users(work / "users")
        self.socket_path = socket_path
        self.args = list(args)
        self.log_path = work / "rapi.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Rapi:
        command = [
            sys.executable,
            "-m",
            "jobqueue.rapi.main",
            "--socket",
            self.socket_path,
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--users-file",
            str(self.users_file),
            "--ssl-cert",
            str(self.cert),
            "--ssl-key",
            str(self.key),
            "--debug",
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        self.url = wait_until(self._listening, what=f"jobqueue-rapi to listen; log:\n{self.log()}")
        return self

    def _listening(self) -> str | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"jobqueue-rapi exited with {self.proc.returncode}:\n{self.log()}")
        found = re.search(r"listening on (https://127\.0\.0\.1:\d+)/", self.log())
        return found.group(1) if found else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
