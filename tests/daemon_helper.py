"""Start and drive the real jobqueue-masterd as a subprocess, for end-to-end tests, and
run the real jobctl against it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import simplejson

from jobqueue.constants import FINALIZED
from jobqueue.luxi.client import Client
from jobqueue.paths import StatePaths

#: The checkout's top directory (where tests run jobctl from).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# AF_UNIX paths are limited to 108 bytes; leave room for temporary socket names.
_MAX_STATE_DIR = 70


def state_dir_under(tmp_path: Path) -> Path:
    """A state directory under ``tmp_path``, or a short one if that is too long."""
    candidate = tmp_path / "s"
    if len(str(candidate)) <= _MAX_STATE_DIR:
        return candidate
    return Path(tempfile.mkdtemp(prefix="jq", dir="/tmp")) / "s"


@contextlib.contextmanager
def daemons_made(state_dir: Path) -> Iterator[Callable[..., Daemon]]:
    """Make daemons (not started) on ``state_dir``; those still running are killed after."""
    made: list[Daemon] = []

    def make(*args: str, **options: Any) -> Daemon:
        daemon = Daemon(state_dir, *args, **options)
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill9()


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns a true value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Daemon:
    """One real daemon process on its own state directory.

    ``env`` is added to the daemon's environment; ``preexec_fn`` runs in the
    child before the daemon starts (e.g. to set a umask or drop privileges).
    """

    def __init__(
        self,
        state_dir: Path,
        *args: str,
        workers: int = 4,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.paths = StatePaths(str(state_dir))
        # A few spare files, not the default's thousand: daemons start by the hundred here.
        self.args = ["--workers", str(workers), "--spare-files", "8", *args]
        self.env = env
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}-daemon.log"
        self._clients: list[Client] = []

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "jobqueue.daemon",
            "--state-dir",
            str(self.state_dir),
            "--debug",
            *self.args,
        ]

    def start(self) -> Daemon:
        env = None if self.env is None else {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=env, preexec_fn=self.preexec_fn
            )
        wait_until(self._ready, what=f"the daemon to listen; log:\n{self.log()}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        # The pid file is written once the sockets serve, just before "ready on" is logged.
        if not (os.path.exists(self.paths.master_socket) and os.path.exists(self.paths.pid_file)):
            return False
        try:
            with Client(self.paths.master_socket, timeout=5) as client:
                client.query_config_values(["version"])
        except Exception:
            return False
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, path: str | None = None) -> Client:
        client = Client(path or self.paths.master_socket, timeout=30)
        self._clients.append(client)
        return client

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the daemon and wait for it; returns its exit status."""
        assert self.proc is not None
        for client in self._clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def wait_job(self, job_id: int, timeout: float = 30.0) -> str:
        """Wait until the job is finalized; return its status."""
        client = self.client()

        def final() -> str | None:
            (row,) = client.query_jobs([job_id], ["status"])
            return row[0] if row[0] in FINALIZED else None

        return str(wait_until(final, timeout, f"job {job_id} to finish"))


def raw_exchange(path: str, payload: bytes, timeout: float = 10.0) -> Any:
    """Send raw bytes on a new connection; return the first decoded response."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        return read_response(sock)


def read_response(sock: socket.socket) -> Any:
    """Read one ``\\x03``-terminated response from ``sock`` and decode it."""
    data = b""
    while not data.endswith(b"\x03"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    return simplejson.loads(data[:-1])


def request(method: str, *args: Any) -> bytes:
    """A request framed as Ganeti's own client sends it."""
    return (
        simplejson.dumps({"method": method, "args": list(args), "version": 2060000}).encode()
        + b"\n\x03"
    )


def jobctl(
    daemon: Daemon,
    *args: str,
    cwd: str | Path = REPO_ROOT,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """The real jobctl on the daemon's socket; output as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "jobqueue.cli.main", "--socket", daemon.paths.master_socket, *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
