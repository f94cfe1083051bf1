"""Running the jobqueue daemon for a benchmark, and the pieces every daemon section shares.

The harness depends only on this interface of the project:

* ``python -m jobqueue.daemon --state-dir DIR --workers W`` runs in the
  foreground and stops on SIGTERM;
* it is ready when ``DIR/run/master.sock`` answers a LUXI
  ``QueryConfigValues(["version"])`` request;
* ``jobqueue.luxi.client.Client(path=...)`` is the client.

Until those exist every daemon section raises :class:`DaemonUnavailable`,
which the runner prints as a "skipped" row.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: LUXI's end-of-message byte (jobqueue.constants.LUXI_EOM).
LUXI_EOM = b"\x03"
NOOP: dict[str, Any] = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
FINALIZED = frozenset({"success", "error", "canceled"})


class DaemonUnavailable(Exception):
    """The daemon or its client cannot be imported, started or reached."""


def client_class() -> Any:
    """Return ``jobqueue.luxi.client.Client``; raises DaemonUnavailable when missing."""
    try:
        if importlib.util.find_spec("jobqueue.daemon") is None:
            raise ModuleNotFoundError("No module named 'jobqueue.daemon'")
        module = importlib.import_module("jobqueue.luxi.client")
        return module.Client
    except (ImportError, AttributeError) as error:
        raise DaemonUnavailable(f"{type(error).__name__}: {error}") from error


def probe(socket_path: str, timeout: float = 2.0) -> bool:
    """Return True when the socket answers a QueryConfigValues request with a LUXI reply."""
    request = json.dumps({"method": "QueryConfigValues", "args": [["version"]]}).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(socket_path)
            connection.sendall(request + LUXI_EOM)
            reply = b""
            while LUXI_EOM not in reply:
                chunk = connection.recv(65536)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    try:
        answer = json.loads(reply.split(LUXI_EOM, 1)[0])
    except ValueError:
        return False
    return isinstance(answer, dict) and "success" in answer


class Daemon:
    """One daemon process on a state directory, used as a context manager.

    ``start`` returns the seconds from launch until the socket answered;
    leaving the ``with`` block stops it with SIGTERM (SIGKILL after a grace).
    """

    def __init__(
        self,
        state_dir: Path,
        workers: int,
        start_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.state_dir = state_dir
        self.workers = workers
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.socket_path = str(state_dir / "run" / "master.sock")
        self.log_path = state_dir.parent / f"{state_dir.name}-daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> float:
        """Launch the daemon and wait until it answers; raises DaemonUnavailable."""
        client_class()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "jobqueue.daemon", "--state-dir", str(self.state_dir)]
        command += ["--workers", str(self.workers), *self.extra_args]
        with open(self.log_path, "ab") as log:
            began = time.perf_counter()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DaemonUnavailable(
                    f"daemon exited with status {self.process.returncode}: {self.log_tail()}"
                )
            if os.path.exists(self.socket_path) and probe(self.socket_path):
                self.startup_seconds = time.perf_counter() - began
                return self.startup_seconds
            time.sleep(0.005)
        self.stop()
        raise DaemonUnavailable(f"daemon did not answer within {self.start_timeout:.0f} s")

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM the daemon and wait; SIGKILL it after ``grace`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL the daemon and reap it: a crash, as when its host dies."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()

    def client(self) -> Any:
        """Return a new connected client; the caller closes it."""
        return client_class()(path=self.socket_path)

    def rss_bytes(self) -> tuple[int, int]:
        """Return the daemon's resident set size now and its peak (VmRSS, VmHWM)."""
        assert self.process is not None
        fields: dict[str, int] = {}
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(rest.split()[0]) * 1024
        return fields.get("VmRSS", 0), fields.get("VmHWM", 0)

    def log_tail(self, lines: int = 3) -> str:
        """Return the last lines of the daemon's output, joined on one line."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "no output"
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "no output"


def check_submitted(results: list[Any]) -> list[int]:
    """Return the job ids of a SubmitManyJobs answer; raises RuntimeError on a refusal."""
    job_ids: list[int] = []
    for accepted, value in results:
        if not accepted:
            raise RuntimeError(f"job refused: {value}")
        job_ids.append(int(value))
    return job_ids


def wait_until_finished(client: Any, job_ids: list[int], timeout: float) -> dict[str, int]:
    """Block until every job is finalized; return the count per final status.

    Blocks on the last job with WaitForJobChange first, then polls QueryJobs
    for the rest, so the daemon is not polled while it works. Raises
    TimeoutError when ``timeout`` elapses first.
    """
    deadline = time.monotonic() + timeout
    last = job_ids[-1]
    info: Any = None
    serial: Any = None
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {last} not finished after {timeout:.0f} s")
        answer = client.wait_for_job_change(last, ["status"], info, serial, 10)
        if not answer:
            raise RuntimeError(f"job {last} lost")
        if answer == "nochange":
            continue
        info, log_entries = answer
        serial = max([entry[0] for entry in log_entries], default=serial)
        if info[0] in FINALIZED:
            break
    pending = list(job_ids)
    counts: dict[str, int] = {}
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs not finished after {timeout:.0f} s")
        rows = client.query_jobs(pending, ["id", "status"])
        still = []
        for row in rows:
            if row is None:  # the daemon no longer knows the job
                counts["unknown"] = counts.get("unknown", 0) + 1
                continue
            job_id, status = row
            if status in FINALIZED:
                counts[status] = counts.get(status, 0) + 1
            else:
                still.append(job_id)
        if still:
            time.sleep(0.01)
        pending = still
    return counts


def wait_until_quiet(daemon: Daemon, timeout: float = 60.0) -> bool:
    """Wait until the daemon used under 5 ms of CPU in each of three 100 ms
    periods; whether it did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    calm, used = 0, daemon_cpu_seconds(daemon)
    while calm < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        previous, used = used, daemon_cpu_seconds(daemon)
        calm = calm + 1 if used - previous < 0.005 else 0
    return calm >= 3


def daemon_cpu_seconds(daemon: Daemon) -> float:
    """User plus system CPU the daemon process has used so far."""
    assert daemon.process is not None
    with open(f"/proc/{daemon.process.pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
