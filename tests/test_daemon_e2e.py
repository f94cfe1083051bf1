"""End to end: the real daemon as a subprocess, driven by the client and raw sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobqueue import errors
from jobqueue.constants import MSG_SHUTTING_DOWN, MSG_UNCLEAN_SHUTDOWN
from jobqueue.storage.base import decode_job
from tests.daemon_helper import Daemon, raw_exchange, read_response, request, wait_until
from tests.lu_harness import group_is_gone
from tests.queue_files import load_jobs

DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


def test_submit_and_watch_to_success(daemon: Daemon) -> None:
    client = daemon.client()
    job_id = client.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 0.05, "repeat": 2}])
    assert isinstance(job_id, int)
    seen: list[str] = []
    assert client.wait_for_job(job_id, on_log=lambda entry: seen.append(entry[3])) == "success"
    assert seen == ["Test delay iteration 1/2", "Test delay iteration 2/2"]
    (row,) = client.query_jobs([job_id], ["status", "opstatus", "summary"])
    assert row == ["success", ["success"], ["TEST_DELAY(0.05)"]]


def test_ganeti_compatible_raw_client(daemon: Daemon) -> None:
    """The opcode and framing exactly as Ganeti's tools send them, ids as strings."""
    op = {"OP_ID": "OP_TEST_DELAY", "duration": 0, "on_master": True, "on_nodes": [], "repeat": 0}
    path = daemon.paths.master_socket
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(request("SubmitJob", [op]))
        reply = read_response(sock)
        assert reply["success"] is True and isinstance(reply["result"], int)
        assert "version" not in reply
        job_id = str(reply["result"])
        prev_info, prev_serial, status = None, None, "queued"
        while status not in ("success", "error", "canceled"):
            sock.sendall(
                request("WaitForJobChange", job_id, ["status"], prev_info, prev_serial, 10)
            )
            answer = read_response(sock)["result"]
            if answer == "nochange":
                continue
            prev_info, log = answer
            status = prev_info[0]
            prev_serial = max([prev_serial or 0, *[entry[0] for entry in log]])
        sock.sendall(request("QueryJobs", [job_id], ["status", "opstatus", "opresult"]))
        assert read_response(sock)["result"] == [["success", ["success"], [None]]]


def test_query_fields_and_filters(daemon: Daemon) -> None:
    client = daemon.client()
    ids = [row[1] for row in client.submit_many_jobs([[DELAY0], [DELAY0]])]
    for job_id in ids:
        daemon.wait_job(job_id)
    result = client.query("job", ["id", "status", "bogus"], ["=", "id", ids[1]])
    assert [f["name"] for f in result["fields"]] == ["id", "status", "bogus"]
    assert result["fields"][2]["kind"] == "unknown"
    assert result["data"] == [[[0, ids[1]], [0, "success"], [1, None]]]
    names = [f["name"] for f in client.query_fields("job", None)["fields"]]
    assert names == sorted(names) and {"id", "status", "oplog", "summary"} <= set(names)
    with pytest.raises(errors.OpPrereqError, match="Unknown output fields"):
        client.query_jobs(None, ["nope"])


def test_drain_and_undrain(daemon: Daemon) -> None:
    client = daemon.client()
    assert client.set_drain_flag(True) is True
    assert client.query_config_values(["drain_flag"]) == [True]
    assert (daemon.state_dir / "queue" / "drain").exists()
    with pytest.raises(errors.JobQueueDrainError, match="drained"):
        client.submit_job([DELAY0])
    with pytest.raises(errors.JobQueueDrainError):
        client.submit_many_jobs([[DELAY0]])
    job_id = client.submit_job_to_drained_queue([DELAY0])
    assert daemon.wait_job(job_id) == "success"
    client.set_drain_flag(False)
    assert client.query_config_values(["drain_flag"]) == [False]
    assert daemon.wait_job(client.submit_job([DELAY0])) == "success"


def test_query_socket_serves_everything_to_peers_the_master_socket_serves(
    daemon: Daemon,
) -> None:
    """One socket for everything (Ganeti 2.11+); outsiders: ``tests/test_permissions.py``."""
    client = daemon.client(daemon.paths.query_socket)
    job_id = client.submit_job([DELAY0])
    assert daemon.wait_job(job_id) == "success"
    assert client.set_drain_flag(True) is True
    assert client.query_config_values(["drain_flag"]) == [True]
    assert client.query_jobs(None, ["id"]) == [[job_id]]
    modes = {
        path: stat.S_IMODE(os.stat(path).st_mode)
        for path in (daemon.paths.master_socket, daemon.paths.query_socket)
    }
    assert modes == {daemon.paths.master_socket: 0o660, daemon.paths.query_socket: 0o660}


def test_archive_and_autoarchive(daemon: Daemon) -> None:
    client = daemon.client()
    ids = [row[1] for row in client.submit_many_jobs([[DELAY0]] * 3)]
    for job_id in ids:
        daemon.wait_job(job_id)
    assert client.archive_job(ids[0]) is True
    assert client.archive_job(ids[0]) is False
    archived = daemon.state_dir / "queue" / "archive" / "0" / f"job-{ids[0]}"
    assert archived.is_file()
    assert client.query_jobs([ids[0]], ["status"]) == [["success"]]  # archived, still found
    assert client.auto_archive_jobs(-1, 30) == [2, 0]
    assert client.query_jobs(None, ["id"]) == []


def test_a_job_seen_finished_archives_at_once(daemon: Daemon) -> None:
    """ArchiveJob right after a watcher saw the end: the job is archived, every time
    (it used to answer false while the job's worker was still wrapping up)."""
    client = daemon.client()
    for _ in range(20):
        job_id = client.submit_job([DELAY0])
        assert client.wait_for_job(job_id) == "success"
        assert client.archive_job(job_id) is True


def test_ids_stay_dense_across_a_clean_restart(daemon_factory: Callable[..., Daemon]) -> None:
    first = daemon_factory().start()
    before = first.client().submit_job([DELAY0])
    first.stop()
    second = daemon_factory().start()
    assert second.client().submit_job([DELAY0]) == before + 1


def test_restart_recovery_after_sigkill(daemon_factory: Callable[..., Daemon]) -> None:
    first = daemon_factory(workers=1).start()
    client = first.client()
    running = client.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 60}])
    queued = client.submit_job([DELAY0])
    wait_until(
        lambda: client.query_jobs([running], ["status"]) == [["running"]],
        what="the long job to run",
    )
    first.kill9()
    # The start is in a start record only (one flush): job-N itself still says queued.
    job_file = Path(first.paths.queue_dir, f"job-{running}").read_bytes()
    assert decode_job(job_file).status == "queued"
    assert load_jobs(Path(first.paths.queue_dir))[running].status == "running"
    second = daemon_factory(workers=1).start()
    assert second.wait_job(running) == "error"
    (row,) = second.client().query_jobs([running], ["opresult"])
    assert row == [[MSG_UNCLEAN_SHUTDOWN]]
    assert second.wait_job(queued) == "success"
    assert f"Job {running} was running at an unclean shutdown" in second.log()


def test_restart_stops_commands_left_by_a_sigkill(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = daemon_factory("--kill-grace", "5", workers=1).start()
    client = first.client()
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}.new && mv {pid_file}.new {pid_file}; exec sleep 600"
    job_id = client.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", script]}])
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="the pid"))
    record = Path(first.paths.commands_dir, str(pid))
    wait_until(record.exists, what="the command's record")
    try:
        first.kill9()
        assert not group_is_gone(pid)  # the daemon's death did not take the command with it
        second = daemon_factory("--kill-grace", "5", workers=1).start()
        wait_until(lambda: group_is_gone(pid), timeout=10, what="the command to be stopped")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    assert second.wait_job(job_id) == "error"
    (row,) = second.client().query_jobs([job_id], ["opresult"])
    assert row == [[MSG_UNCLEAN_SHUTDOWN]]
    assert f"Stopped the leftover command of job {job_id} (process group {pid})" in second.log()
    assert os.listdir(first.paths.commands_dir) == []


@pytest.fixture
def detached_pid_file(tmp_path: Path) -> Iterator[Path]:
    """Where a command's detached process writes its pid; that process is killed after."""
    pid_file = tmp_path / "detached.pid"
    yield pid_file
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _leave_detached(pid_file: Path, then: str) -> dict[str, object]:
    """A command that leaves a process in a session of its own holding its output; then ``then``."""
    detach = f"echo $$ > {pid_file}.new && mv {pid_file}.new {pid_file}; exec sleep 120"
    script = f"setsid sh -c '{detach}' & {then}"
    return {"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", script]}


def test_a_command_is_over_when_its_own_process_exits(
    daemon: Daemon, detached_pid_file: Path
) -> None:
    """A detached process holding the output pipes does not keep the job running."""
    client = daemon.client()
    job_id = client.submit_job([_leave_detached(detached_pid_file, "echo done; sleep 0.2")])
    assert daemon.wait_job(job_id, timeout=15) == "success"
    detached = int(detached_pid_file.read_text())
    os.kill(detached, 0)  # still there: it left the group, so it is not the daemon's to stop
    (row,) = client.query_jobs([job_id], ["oplog"])
    messages = [entry[3] for entry in row[0][0]]
    assert "done" in messages
    assert any("still holds its output" in str(message) for message in messages)


def test_kill_ends_a_command_whose_detached_process_holds_its_output(
    daemon_factory: Callable[..., Daemon], detached_pid_file: Path
) -> None:
    grace = 1.0
    daemon = daemon_factory("--kill-grace", str(grace)).start()
    client = daemon.client()
    job_id = client.submit_job([_leave_detached(detached_pid_file, "exec sleep 100")])
    wait_until(detached_pid_file.exists, what="the detached process")
    wait_until(lambda: client.query_jobs([job_id], ["status"]) == [["running"]], what="running")
    asked = time.monotonic()
    assert client.cancel_job(job_id, kill=True)[0] is True
    assert daemon.wait_job(job_id, timeout=15) == "canceled"
    took = time.monotonic() - asked
    print(f"killed in {took:.2f}s with --kill-grace {grace}")
    assert took < grace + 5  # the promise is grace + 1 s; the margin is for a loaded machine


def test_second_daemon_refused(daemon: Daemon, daemon_factory: Callable[..., Daemon]) -> None:
    intruder = daemon_factory()
    result = subprocess.run(intruder.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"in use by another daemon (pid {daemon.proc.pid})" in result.stderr  # type: ignore
    assert daemon.client().query_config_values(["drain_flag"]) == [False]  # still serving


def test_graceful_sigterm_with_job_in_flight(daemon: Daemon) -> None:
    client = daemon.client()
    job_id = client.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 1.0}])
    wait_until(lambda: client.query_jobs([job_id], ["status"]) == [["running"]])
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            with daemon.client() as probe:
                probe.submit_job([DELAY0])
        except errors.JobQueueError as err:
            return MSG_SHUTTING_DOWN in str(err)
        except errors.LuxiError:
            return False
        return False

    wait_until(refused, what="submissions to be refused during shutdown")
    assert daemon.proc.wait(30) == 0
    assert not os.path.exists(daemon.paths.master_socket)
    assert not os.path.exists(daemon.paths.query_socket)
    job_file = daemon.state_dir / "queue" / f"job-{job_id}"
    assert '"status":"success"' in job_file.read_text()


def test_waiting_for_lock_goes_back_to_queued_on_shutdown(daemon: Daemon) -> None:
    client = daemon.client()
    holder = client.submit_job(
        [{"OP_ID": "OP_COMMAND_RUN", "argv": ["sleep", "1"], "locks": ["res"]}]
    )
    wait_until(lambda: client.query_jobs([holder], ["status"]) == [["running"]])
    waiter = client.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "locks": ["res"]}])
    wait_until(lambda: client.query_jobs([waiter], ["status"]) == [["waiting"]])
    assert daemon.stop() == 0
    text = (daemon.state_dir / "queue" / f"job-{waiter}").read_text()
    assert '"status":"queued"' in text


def test_sighup_reopens_log_file(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    log_file = tmp_path / "masterd.log"
    daemon = daemon_factory("--log-file", str(log_file)).start()
    wait_until(lambda: "ready on" in log_file.read_text(), what="the daemon to log it is ready")
    rotated = tmp_path / "masterd.log.1"
    os.rename(log_file, rotated)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: log_file.exists() and "Log file reopened" in log_file.read_text(),
        what="a new log file after SIGHUP",
    )
    assert "ready on" in rotated.read_text()
    assert "ready on" not in log_file.read_text()


def test_daemonize_writes_pid_file_and_detaches(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("--daemonize")
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid = int(Path(daemon.paths.pid_file).read_text())
    assert pid != os.getpid()
    with daemon.client() as client:
        assert client.query_config_values(["drain_flag"]) == [False]
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(daemon.paths.master_socket), what="daemon to stop")
    wait_until(lambda: not os.path.exists(daemon.paths.pid_file), what="pid file removal")


def test_unknown_version_refuses_to_start(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    queue = daemon.state_dir / "queue"
    queue.mkdir(parents=True)
    (queue / "version").write_text("9\n")
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "version '9'" in result.stderr and "not supported" in result.stderr


def test_help_documents_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobqueue.daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for option in (
        "--state-dir",
        "--workers",
        "--max-jobs",
        "--socket-group",
        "--plugin",
        "--log-file",
        "--daemonize",
        "--shutdown-timeout",
        "--kill-grace",
    ):
        assert option in result.stdout


class TestHostileInput:
    """Malformed requests get a typed error; the daemon keeps serving everyone."""

    @pytest.mark.parametrize(
        "payload",
        [
            b"not json\x03",
            b"[1, 2]\x03",
            b'{"method": "SubmitJob"}\x03',
            b'{"args": []}\x03',
            b'{"method": "Bogus", "args": []}\x03',
            b'{"method": "SubmitJob", "args": {"a": 1}}\x03',
            b'{"method": "CancelJob", "args": ["x"]}\x03',
            b'{"method": "SubmitJob", "args": [[{"OP_ID": "OP_TEST_DELAY", "duration": "x"}]]}\x03',
            b'{"method": "SubmitJob", "args": [[{"OP_ID": "OP_NOPE"}]]}\x03',
            b"\xff\xfe\x00\x03",
        ],
    )
    def test_malformed_then_same_connection_works(self, daemon: Daemon, payload: bytes) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(daemon.paths.master_socket)
            sock.sendall(payload)
            reply = read_response(sock)
            assert reply["success"] is False
            assert reply["result"][0] in ("LuxiError", "OpPrereqError", "OpCodeUnknown")
            sock.sendall(request("QueryConfigValues", ["drain_flag"]))
            assert read_response(sock) == {"success": True, "result": [False]}

    def test_oversized_message(self, daemon_factory: Callable[..., Daemon]) -> None:
        daemon = daemon_factory("--max-message-size", "4096").start()
        reply = raw_exchange(daemon.paths.master_socket, b'{"method": "' + b"x" * 10000)
        assert reply["success"] is False and "exceeds" in reply["result"][1][0]
        assert daemon.client().query_config_values(["drain_flag"]) == [False]

    def test_half_message_then_silence(self, daemon_factory: Callable[..., Daemon]) -> None:
        daemon = daemon_factory("--client-timeout", "1").start()
        with socket.socket(socket.AF_UNIX) as silent:
            silent.settimeout(10)
            silent.connect(daemon.paths.master_socket)
            silent.sendall(b'{"method": "QueryJo')
            assert daemon.client().query_config_values(["drain_flag"]) == [False]
            assert silent.recv(100) == b""  # closed by the server after the idle timeout

    def test_thousand_connections(self, daemon: Daemon) -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 2100:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        sockets = []
        try:
            for _ in range(1000):
                sock = socket.socket(socket.AF_UNIX)
                sock.settimeout(30)
                sock.connect(daemon.paths.query_socket)
                sockets.append(sock)
            for sock in sockets:
                sock.sendall(request("QueryConfigValues", ["drain_flag"]))
            assert all(read_response(sock)["result"] == [False] for sock in sockets)
            assert daemon.client().query_config_values(["drain_flag"]) == [False]
        finally:
            for sock in sockets:
                sock.close()
