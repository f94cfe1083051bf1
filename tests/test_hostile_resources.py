"""Hostile local users against the real daemon: memory, handlers, descriptors, nesting, sockets.

Each test reproduces a defect of issue 14 (items 2, 3, 4 and the socket
part of 11) the way a user on the same machine would, and asserts the
daemon now holds: typed errors, bounded memory, submissions served, a
short log. Every one of them failed on the code before the fix.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.luxi import protocol
from tests.daemon_helper import Daemon, read_response, request, wait_until
from tests.luxi_samples import DELAY0

#: A log message of this many bytes makes a job's ``oplog`` about as large.
BIG_MESSAGE = 100_000


def status_kib(pid: int, key: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def pid_of(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


@pytest.fixture
def start(daemon_factory: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """Start a daemon under tmp_path; ``daemon_factory`` kills it after the test."""
    return lambda *args, **options: daemon_factory(*args, **options).start()


def big_log_jobs(daemon: Daemon, count: int) -> list[int]:
    """``count`` finished jobs, each with a log of about BIG_MESSAGE bytes."""
    op = {"OP_ID": "OP_TEST_DUMMY", "messages": ["x" * BIG_MESSAGE]}
    client = daemon.client()
    ids = [row[1] for row in client.submit_many_jobs([[op]] * count)]
    for job_id in ids:
        assert daemon.wait_job(job_id) == "success"
    return ids


# -- item 2: answers, memory and handlers ---------------------------------------------------
def test_a_huge_answer_is_refused_without_being_built(start: Any) -> None:
    """QueryJobs([id]*5000, ["oplog"]) once made a 521 MB answer and 2.7 GB of RSS."""
    daemon = start()
    (job_id,) = big_log_jobs(daemon, 1)
    pid = pid_of(daemon)
    before = status_kib(pid, "VmRSS")
    with pytest.raises(errors.AnswerTooLarge, match="ask for fewer jobs or fewer fields"):
        daemon.client().query_jobs([job_id] * 5000, ["oplog"])
    growth_mib = (status_kib(pid, "VmHWM") - before) / 1024
    assert growth_mib < 120, f"peak RSS grew by {growth_mib:.0f} MiB"
    # Duplicates are answered, each from the one read: a row per requested id.
    rows = daemon.client().query_jobs([job_id, job_id, job_id], ["id", "status"])
    assert rows == [[job_id, "success"]] * 3
    assert " ERROR " not in daemon.log()


def test_the_answer_cap_is_configurable(start: Any) -> None:
    daemon = start("--max-answer-size", "5000")
    (job_id,) = big_log_jobs(daemon, 1)
    client = daemon.client()
    assert client.query_jobs([job_id], ["status"]) == [["success"]]
    with pytest.raises(errors.AnswerTooLarge):
        client.query_jobs([job_id], ["oplog"])
    with pytest.raises(errors.AnswerTooLarge):
        client.query("job", ["oplog"], ["=", "id", job_id])


def _never_read(path: str, payload: bytes, socks: list[socket.socket]) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(path)
    sock.sendall(payload)
    socks.append(sock)


def test_clients_that_never_read_neither_exhaust_memory_nor_delay_submissions(
    start: Any,
) -> None:
    """150 clients asking for every job's log and never reading once took 1.9 GB and
    held a master-socket SubmitJob for 118 s."""
    daemon = start("--max-pending-output", str(32 * 1024 * 1024))
    big_log_jobs(daemon, 100)  # each answer about 10 MB
    pid = pid_of(daemon)
    client = daemon.client()
    base = status_kib(pid, "VmRSS")
    payload = request("QueryJobs", None, ["id", "oplog", "ops"])
    socks: list[socket.socket] = []
    try:
        for _ in range(60):
            _never_read(daemon.paths.query_socket, payload, socks)
        latencies = []
        for _ in range(20):
            begin = time.monotonic()
            job_id = client.submit_job([DELAY0])
            latencies.append(time.monotonic() - begin)
        peak_mib = (status_kib(pid, "VmHWM") - base) / 1024
        assert max(latencies) < 2.0, latencies
        assert daemon.wait_job(job_id) == "success"
        # A normal reader is served too, in its turn.
        assert client.query_jobs([job_id], ["status"]) == [["success"]]
    finally:
        for sock in socks:
            sock.close()
    assert peak_mib < 250, f"RSS grew by {peak_mib:.0f} MiB"
    wait_until(
        lambda: status_kib(pid, "VmRSS") < base + 100 * 1024, 20, "RSS to come back near its base"
    )


def test_a_client_that_does_not_take_its_answer_is_closed(start: Any) -> None:
    daemon = start("--send-timeout", "1")
    big_log_jobs(daemon, 20)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(daemon.paths.query_socket)
        sock.sendall(request("QueryJobs", None, ["oplog"]))
        # More requests while the answer is stuck: not read, not queued in the daemon.
        sock.sendall(request("QueryConfigValues", ["version"]) * 1000)
        wait_until(
            lambda: "did not take its answer within 1.0 seconds" in daemon.log(),
            15,
            "the daemon to give up on the client",
        )
        received = 0
        sock.settimeout(10)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < 2_000_000  # the daemon gave up on it, far short of the 2 MB answer


# -- item 3: descriptors ---------------------------------------------------------------------
def _limit_fds(soft: int, hard: int) -> Any:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def _soft_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no descriptor limit")


def test_the_daemon_raises_its_soft_descriptor_limit(start: Any) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard descriptor limit {hard} leaves nothing to raise to")
    daemon = start(preexec_fn=_limit_fds(1024, 2048))
    assert _soft_fd_limit(pid_of(daemon)) == 2048


def connect_when_accepted(path: str) -> socket.socket:
    """Connect, retrying while the listener's backlog is full (AF_UNIX says EAGAIN)."""
    sock = socket.socket(socket.AF_UNIX)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_a_connection_flood_leaves_room_for_submissions(start: Any) -> None:
    """2,000 idle connections once made SubmitJob fail with "Too many open files"
    and filled the log with accept() tracebacks at 4 MB/s."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2100:
        pytest.skip("this test itself needs 2,100 descriptors")
    daemon = start(preexec_fn=_limit_fds(1024, 1024))
    log_before = len(daemon.log())
    socks: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(2000):
            socks.append(connect_when_accepted(daemon.paths.query_socket))
        client = daemon.client()
        begin = time.monotonic()
        job_id = client.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"]}])
        assert time.monotonic() - begin < 2
        assert daemon.wait_job(job_id) == "success"
        for sock in socks:  # the excess got one error answer each and was closed
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if data:
                assert b"Too many connections" in data
                refused += 1
    finally:
        for sock in socks:
            sock.close()
    assert 1000 <= refused < 2000
    log = daemon.log()[log_before:]
    assert " ERROR " not in log and "out of system resource" not in log
    assert len(log) < 200_000, len(log)  # --debug: about a line per connection, no more
    assert log.count("Refusing a connection") <= 2


# -- item 4 (parse): nesting -------------------------------------------------------------------
def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize(
    "text",
    [
        '{"method": "SubmitJob", "args": [[{"OP_ID": "OP_TEST_DUMMY", "result": '
        + _nested(900)
        + "}]]}",
        '{"method": "Query", "args": ["job", ["id"], '
        + '["&", ' * 900
        + '["=", "id", 1]'
        + "]" * 900
        + "]}",
        '{"method": "QueryJobs", "args": [null, ' + _nested(900) + "]}",
    ],
    ids=["a deep opcode value", "a deep filter", "deep arguments"],
)
def test_deep_nesting_is_refused_at_parse_time(start: Any, text: str) -> None:
    daemon = start()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(daemon.paths.master_socket)
        sock.sendall(text.encode() + b"\n\x03")
        answer = read_response(sock)
    assert answer["success"] is False
    assert answer["result"][0] == "LuxiError"
    assert f"nested deeper than {protocol.MAX_REQUEST_NESTING}" in answer["result"][1][0]
    assert daemon.client().query_jobs(None, ["id"]) == []
    assert " ERROR " not in daemon.log()


# -- opcodes held by the live jobs --------------------------------------------------------
def test_the_live_jobs_opcodes_are_bounded_across_a_restart(start: Any) -> None:
    """A waiting opcode costs about 1 KiB and its wire form 40 bytes: jobs of
    many small opcodes once grew the daemon without bound, up to ``--max-jobs``
    requests of 16 MiB."""
    daemon = start("--max-opcodes", "30")
    client = daemon.client()
    job = [DELAY0] * 10
    accepted = [client.submit_job(job) for _ in range(3)]
    with pytest.raises(errors.JobQueueFull, match="30 opcodes"):
        client.submit_job([DELAY0])
    with pytest.raises(errors.OpPrereqError, match="31 opcodes; the queue takes at most 30"):
        client.submit_job([DELAY0] * 31)
    assert client.query_config_values(["live_opcodes", "max_opcodes"]) == [30, 30]
    for job_id in accepted:
        assert daemon.wait_job(job_id) == "success"
    assert daemon.stop() == 0
    daemon.start()  # the count is rebuilt from the stored jobs
    client = daemon.client()
    assert client.query_config_values(["live_opcodes"]) == [30]
    with pytest.raises(errors.JobQueueFull):
        client.submit_job([DELAY0])
    assert client.archive_job(accepted[0]) is True
    assert client.query_config_values(["live_opcodes"]) == [20]
    client.submit_job(job)
    assert " ERROR " not in daemon.log()


def test_the_live_jobs_opcode_bytes_are_bounded_across_a_restart(start: Any) -> None:
    """Few opcodes with large values: the opcode count alone let ``--max-jobs``
    requests of 16 MiB each stay in memory."""
    daemon = start("--max-opcode-bytes", "100K")
    client = daemon.client()
    large = {"OP_ID": "OP_TEST_DUMMY", "messages": ["x" * 40_000]}
    accepted = [client.submit_job([large]) for _ in range(3)]  # 0, 40 and 80 KB before each
    with pytest.raises(errors.JobQueueFull, match="102400 bytes of opcodes"):
        client.submit_job([DELAY0])
    held, limit = client.query_config_values(["live_opcode_bytes", "max_opcode_bytes"])
    assert 120_000 < held < 121_000 and limit == 102_400
    for job_id in accepted:
        assert daemon.wait_job(job_id) == "success"
    assert daemon.stop() == 0
    daemon.start()  # measured again from the stored jobs
    client = daemon.client()
    assert client.query_config_values(["live_opcode_bytes"]) == [held]
    with pytest.raises(errors.JobQueueFull):
        client.submit_job([DELAY0])
    assert client.archive_job(accepted[0]) is True
    client.submit_job([DELAY0])
    assert " ERROR " not in daemon.log()


# -- item 11 (sockets): stale socket files -------------------------------------------------------
def _jobctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobqueue.cli.main", "--state-dir", str(daemon.state_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_after_kill_9_jobctl_says_stale_socket_and_a_new_daemon_removes_them(
    start: Any,
) -> None:
    daemon = start("--kill-grace", "3")
    client = daemon.client()
    stubborn = {"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", "trap '' TERM; sleep 60"]}
    job_id = client.submit_job([stubborn])
    wait_until(lambda: client.query_jobs([job_id], ["status"]) == [["running"]], 15, "running")
    wait_until(lambda: os.listdir(daemon.paths.commands_dir), 15, "the command's record")
    client.close()
    daemon.kill9()
    assert os.path.exists(daemon.paths.master_socket)
    result = _jobctl(daemon, "list")
    assert result.returncode == 3, result
    assert result.stderr.strip().endswith("daemon not running (stale socket)"), result.stderr
    # The next daemon stops the stubborn command (SIGKILL after --kill-grace) before it
    # listens; the stale socket files are gone long before that.
    with open(daemon.log_path, "ab") as log:
        daemon.proc = subprocess.Popen(daemon.command(), stdout=log, stderr=log)
    wait_until(
        lambda: (
            not os.path.exists(daemon.paths.master_socket)
            and not os.path.exists(daemon.paths.query_socket)
        ),
        10,
        "the new daemon to remove the stale sockets before it listens",
    )
    wait_until(lambda: os.path.exists(daemon.paths.master_socket), 20, "the new daemon")
    assert daemon.wait_job(job_id) == "error"
