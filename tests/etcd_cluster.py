"""Real etcd servers for tests and the benchmark: one or three members on loopback.

Every member listens on free loopback ports of its own and keeps its data and
log in a directory the caller gives (a tmp_path), so tests never meet the
distribution's etcd service or each other. A cluster is ready when every live
member answers ``/health`` with true (a bounded poll); members can be killed
(SIGKILL), paused (SIGSTOP) and resumed, or restarted on the same ports and
data. ``close`` kills whatever is left. ``bench/ha.py`` starts its etcd servers
here too, so this module imports nothing but the standard library.

The server binary comes from ``$JOBQUEUE_ETCD`` or ``etcd`` on the PATH
(``make test`` installs Debian's etcd-server 3.4 when it runs as root).
Releases 3.5.0 to 3.5.5 are refused: they can lose data after a SIGKILL, which
these tests do on purpose.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

#: How long a cluster may take to elect a leader and answer /health.
START_TIMEOUT = 30.0
#: Attempts at starting on fresh ports when another process took one meanwhile.
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


def etcd_binary() -> tuple[str | None, str]:
    """Return ``(path, version)`` of a usable etcd server, or ``(None, reason)``."""
    path = os.environ.get("JOBQUEUE_ETCD") or shutil.which("etcd")
    if not path:
        return None, "no etcd server binary (run `make test` as root to install etcd-server)"
    try:
        output = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{path} --version failed: {exc}"
    match = re.search(r"etcd Version: (\d+)\.(\d+)\.(\d+)", output)
    if not match:
        return None, f"cannot read the version of {path}"
    major, minor, patch = (int(part) for part in match.groups())
    version = f"{major}.{minor}.{patch}"
    if (major, minor) < (3, 4):
        return None, f"etcd {version} at {path} is older than 3.4"
    if (major, minor) == (3, 5) and patch <= 5:
        return None, f"etcd {version} at {path} is refused (3.5.0-3.5.5 lose data after SIGKILL)"
    return path, version


class TlsFiles(NamedTuple):
    """A throw-away CA and the certificates it signed, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a CA, a server certificate for 127.0.0.1 and a client certificate.

    Uses the ``openssl`` command; raises FileNotFoundError without it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        *(
            directory / name
            for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
        )
    )
    ca_key = directory / "ca.key"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    openssl(
        "req",
        "-x509",
        *new_key,
        "-keyout",
        str(ca_key),
        "-out",
        str(files.ca),
        "-days",
        "2",
        "-subj",
        "/CN=jobqueue test CA",
    )
    for cert, key, name, extension in (
        (files.server_cert, files.server_key, "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        (files.client_cert, files.client_key, "jobqueue", "keyUsage=digitalSignature"),
    ):
        request = directory / f"{cert.stem}.csr"
        extfile = directory / f"{cert.stem}.ext"
        extfile.write_text(extension + "\n")
        openssl("req", *new_key, "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}")
        openssl(
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(files.ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "2",
            "-extfile",
            str(extfile),
        )
    return files


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports.

    Every socket stays bound until all are chosen: binding and closing one at a
    time lets the kernel hand the same port out twice, and etcd then refuses a
    cluster whose members share a URL.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, so no etcd outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EtcdMember:
    """One etcd server process with fixed ports, data directory and log file."""

    def __init__(
        self,
        binary: str,
        name: str,
        base: Path,
        ports: tuple[int, int],
        flags: Sequence[str],
        tls: TlsFiles | None = None,
    ) -> None:
        self.binary = binary
        self.name = name
        self.data_dir = base / f"{name}.data"
        self.log_path = base / f"{name}.log"
        self.flags = list(flags)
        self.tls = tls
        self.client_port, self.peer_port = ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self, initial_cluster: str, token: str) -> list[str]:
        return [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={token}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
            *self._tls_flags(),
            *self.flags,
        ]

    def _tls_flags(self) -> list[str]:
        """Clients must present a certificate signed by the test CA."""
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.server_cert}",
            f"--key-file={self.tls.server_key}",
            f"--trusted-ca-file={self.tls.ca}",
            "--client-cert-auth",
        ]

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def start(self, initial_cluster: str, token: str) -> None:
        """Start the process (or start it again on the same ports and data)."""
        assert not self.running, f"{self.name} is already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(initial_cluster, token),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None, f"{self.name} was never started"
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        """SIGKILL the member and reap it."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing.

        Returns once every thread of it has stopped: the signal is delivered
        asynchronously, and on a busy machine a request sent right after
        ``kill`` could still be answered.
        """
        self.signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not self._stopped():
            assert time.monotonic() < deadline, f"{self.name} did not stop on SIGSTOP"
            time.sleep(0.001)

    def _stopped(self) -> bool:
        """Whether every thread of the process is stopped (state T in /proc)."""
        assert self.proc is not None
        tasks = f"/proc/{self.proc.pid}/task"
        for task in os.listdir(tasks):
            try:
                with open(f"{tasks}/{task}/stat", encoding="ascii") as stat:
                    state = stat.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue  # a thread that just ended
            if state not in ("T", "t"):
                return False
        return True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def healthy(self, timeout: float = 0.5) -> bool:
        """Whether /health answers true (a leader is known and the member serves)."""
        try:
            url, context = f"{self.client_url}/health", self._ssl_context()
            with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def is_leader(self, timeout: float = 2.0) -> bool:
        """Whether this member says it is the Raft leader (false when it does not answer)."""
        try:
            url, context = f"{self.client_url}/v3/maintenance/status", self._ssl_context()
            request = urllib.request.Request(url, data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
                status = json.loads(reply.read())
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return bool(status.get("leader") and status["leader"] == status["header"]["member_id"])

    def bind_failed(self) -> bool:
        """Whether the process died because a port was taken."""
        if self.running or not self.log_path.exists():
            return False
        return b"address already in use" in self.log_path.read_bytes()

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class EtcdCluster:
    """A cluster of ``size`` members under ``base``; a context manager that always cleans up.

    ``flags`` go to every member (e.g. ``--max-request-bytes=...``). With
    ``tls`` the members serve clients over HTTPS only, to clients holding a
    certificate of the test CA (peers still talk plain HTTP).
    """

    def __init__(
        self,
        binary: str,
        base: Path,
        size: int = 1,
        flags: Sequence[str] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.binary = binary
        self.base = base
        self.size = size
        self.flags = list(flags)
        self.tls = tls
        self.token = f"jq-{os.getpid()}-{id(self):x}"
        self.members: list[EtcdMember] = []
        self.start_seconds = 0.0

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{member.name}={member.peer_url}" for member in self.members)

    def start(self) -> EtcdCluster:
        """Start all members and wait until each is healthy; fresh ports on a bind race."""
        self.base.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for attempt in range(_PORT_ATTEMPTS):
            ports = free_ports(2 * self.size)
            self.members = [
                EtcdMember(
                    self.binary,
                    f"m{index}-{attempt}",
                    self.base,
                    (ports[2 * index], ports[2 * index + 1]),
                    self.flags,
                    self.tls,
                )
                for index in range(self.size)
            ]
            for member in self.members:
                member.start(self.initial_cluster, self.token)
            if self._wait_healthy(self.members, START_TIMEOUT):
                self.start_seconds = time.monotonic() - started
                return self
            retry = any(member.bind_failed() for member in self.members)
            self.close()
            if not retry:
                break
        raise RuntimeError(f"etcd cluster did not become healthy:\n{self._logs()}")

    @staticmethod
    def _wait_healthy(members: Sequence[EtcdMember], timeout: float) -> bool:
        """Poll until every member is healthy; False at the deadline or when one died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(member.healthy() for member in members):
                return True
            if not all(member.running for member in members):
                return False
            time.sleep(0.02)
        return False

    def wait_healthy(
        self, members: Sequence[EtcdMember] | None = None, timeout: float = 20.0
    ) -> None:
        """Wait until the given (default: all running) members answer /health with true."""
        chosen = [m for m in self.members if m.running] if members is None else list(members)
        if not self._wait_healthy(chosen, timeout):
            raise AssertionError(f"etcd members not healthy after {timeout}s:\n{self._logs()}")

    def followers(self) -> list[EtcdMember]:
        """The running members that are not the leader, once a leader is known."""
        self.wait_healthy()
        leader = wait_for_leader(self.members)
        return [member for member in self.members if member.running and member is not leader]

    def restart(self, member: EtcdMember, wait: bool = True) -> None:
        """Start a stopped or killed member again on its ports and data."""
        member.kill9()
        member.start(self.initial_cluster, self.token)
        if wait:
            self.wait_healthy([member])

    def close(self) -> None:
        """Kill every member (a paused one too) and reap it."""
        for member in self.members:
            if member.running:
                with contextlib.suppress(OSError):
                    member.resume()
            member.kill9()

    def _logs(self) -> str:
        return "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in self.members)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_leader(members: Sequence[EtcdMember], timeout: float = 20.0) -> EtcdMember:
    """The member that leads, waiting (bounded) through an election."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in members:
            if member.running and member.is_leader():
                return member
        time.sleep(0.1)
    raise AssertionError(f"no etcd leader within {timeout}s")


def unique_prefix() -> str:
    """A key prefix no other test uses, for a store on a shared cluster."""
    return f"/jq-test/{uuid.uuid4().hex}"
