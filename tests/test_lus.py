"""Every built-in LU, and the queue around them, through a real JobQueue on files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import jobqueue.lus.test
from jobqueue import constants
from jobqueue.children import ProcessGroups
from jobqueue.daemon import Core, build_core, start_core
from jobqueue.errors import (
    ECODE_INVAL,
    JobQueueDrainError,
    JobQueueError,
    JobQueueFull,
    OpPrereqError,
)
from jobqueue.jobstep import Verdict
from jobqueue.locking import LockAttemptTimeoutStrategy
from jobqueue.lus import builtin_registry
from jobqueue.lus.command import OpCommandFanout, base_environment
from jobqueue.lus.test import ELOG_JQUEUE_TEST, MAX_DELAY_REPEAT
from jobqueue.opcodes import REASON_SOURCE_DAEMON
from jobqueue.storage.files import FileJobStore
from tests.polling import poll_until
from tests.queue_harness import QueueUnderTest

#: Upper bound for waiting on anything that should happen soon.
WAIT = 15.0
#: What "promptly" means for cancel, kill and timeouts.
PROMPT = 5.0
FINAL = ("success", "error", "canceled")
RS_NORMAL, RS_UNKNOWN = 0, 1


MakeQueue = Callable[..., QueueUnderTest]


@pytest.fixture
def make_queue(tmp_path: Path) -> Iterator[MakeQueue]:
    """Build started queues on files under tmp_path; all are shut down afterwards."""
    cores: list[Core] = []

    def make(
        *,
        workers: int = 4,
        max_jobs: int = constants.DEFAULT_MAX_JOBS,
        queue_dir: Path | None = None,
        strategy_factory: Callable[[], LockAttemptTimeoutStrategy] | None = None,
        processes: ProcessGroups | None = None,
    ) -> QueueUnderTest:
        registry = builtin_registry()
        store = FileJobStore(str(queue_dir or tmp_path / "queue"))
        extra: dict[str, Any] = {}
        if strategy_factory is not None:
            extra["strategy_factory"] = strategy_factory
        core = build_core(
            store,
            registry,
            max_jobs=max_jobs,
            kill_grace=1.0,
            processes=processes,
            logger=logging.getLogger("test.queue"),
            **extra,
        )
        cores.append(core)
        start_core(core, workers)
        return QueueUnderTest(core)

    yield make
    for core in cores:
        core.queue.prepare_shutdown()
        core.queue.kill_running()  # long test commands must not hold up the join
        core.stop()


@pytest.fixture
def queue(make_queue: MakeQueue) -> QueueUnderTest:
    return make_queue()


def wait_for_status(
    queue: QueueUnderTest, job_id: int, statuses: Iterable[str] | str, timeout: float = WAIT
) -> str:
    """Poll the job's status until it is one of ``statuses``; return it.

    A bounded poll of a condition: fails the test after ``timeout`` seconds.
    """
    wanted = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        (row,) = queue.query_jobs([job_id], ["status"])
        if row[0] in wanted:
            return str(row[0])
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} is {row[0]}, not {sorted(wanted)}, after {timeout}s"
            )
        time.sleep(0.01)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """``poll_until`` with this module's default bound."""
    return poll_until(predicate, timeout, interval=0.01)


FIELDS = ["id", "status", "opstatus", "opresult", "oplog", "start_ts", "end_ts", "comment"]


def info(queue: QueueUnderTest, job_id: int) -> dict[str, Any]:
    (row,) = queue.query_jobs([job_id], FIELDS)
    return dict(zip(FIELDS, row, strict=True))


def run_job(
    queue: QueueUnderTest, ops: list[dict[str, Any]], timeout: float = WAIT
) -> dict[str, Any]:
    """Submit a job, wait until it is finished, return its fields."""
    job_id = queue.submit_job(ops)
    wait_for_status(queue, job_id, FINAL, timeout)
    return info(queue, job_id)


def log_of(job: dict[str, Any], op_index: int = 0, log_type: str | None = None) -> list[Any]:
    """The messages logged by one opcode, optionally of one type only."""
    return [e[3] for e in job["oplog"][op_index] if log_type is None or e[2] == log_type]


def stamp(value: list[int]) -> float:
    return value[0] + value[1] / 1_000_000


def py(code: str, *args: str) -> list[str]:
    """argv running ``code`` in this Python (no site import: faster start)."""
    return [sys.executable, "-S", "-c", code, *args]


def command(argv: list[str], **params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_COMMAND_RUN", "argv": argv, **params}


def dummy(**params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DUMMY", **params}


def delay(duration: float, **params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DELAY", "duration": duration, **params}


def start_blocker(queue: QueueUnderTest, **params: Any) -> int:
    """A job that runs until it is killed; returns once it runs."""
    job_id = queue.submit_job([delay(60, **params)])
    wait_for_status(queue, job_id, "running")
    return job_id


def kill(queue: QueueUnderTest, job_id: int) -> None:
    assert queue.cancel_job(job_id, kill=True)[0]
    assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"


class TestTestDelay:
    def test_sleeps_for_the_duration(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(0.2)])
        wait_for_status(queue, job_id, FINAL)
        (row,) = queue.query_jobs([job_id], ["status", "opresult", "opexec", "opend", "oplog"])
        assert row[:2] == ["success", [None]]
        assert stamp(row[3][0]) - stamp(row[2][0]) >= 0.2
        assert row[4] == [[]], "no repeat: a silent delay"

    def test_repeat_logs_each_iteration(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [delay(0, repeat=3)])
        assert job["status"] == "success"
        assert log_of(job) == [f"Test delay iteration {i}/3" for i in (1, 2, 3)]

    def test_on_nodes_fails_the_opcode(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [delay(0, on_nodes=["node1"]), dummy()])
        assert job["opstatus"] == ["error", "error"]
        name, args = job["opresult"][0]
        assert name == "OpPrereqError" and args[1] == ECODE_INVAL and "on_nodes" in args[0]
        assert job["opresult"][1] == ["OpExecError", [constants.MSG_PRECEDING_FAILED]]

    def test_ganeti_parameters_run(self, queue: QueueUnderTest) -> None:
        ganeti = {"on_node_uuids": None, "interruptible": True, "no_locks": False}
        job = run_job(queue, [delay(0, **ganeti), delay(0, on_node_uuids=[])])
        assert job["opstatus"] == ["success", "success"]

    def test_on_node_uuids_fails_the_opcode(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [delay(0, on_node_uuids=["uuid-1"])])
        name, args = job["opresult"][0]
        assert name == "OpPrereqError" and args == [
            "OP_TEST_DELAY.on_node_uuids: this queue has no remote nodes",
            ECODE_INVAL,
        ]

    def test_repeat_beyond_the_cap_rejected_at_submit(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError, match=r"OP_TEST_DELAY\.repeat"):
            queue.submit_job([delay(0, repeat=MAX_DELAY_REPEAT + 1)])
        assert queue.live.count() == 0

    def test_negative_duration_rejected_at_submit(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError, match=r"OP_TEST_DELAY\.duration"):
            queue.submit_job([delay(-1)])
        assert queue.live.count() == 0


class TestTestJqueue:
    def test_log_messages(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [{"OP_ID": "OP_TEST_JQUEUE", "log_messages": ["one", "two"]}])
        assert job["status"] == "success" and job["opresult"] == [True]
        assert log_of(job, 0, "message") == ["one", "two"]
        serials = [entry[0] for entry in job["oplog"][0]]
        assert serials == sorted(set(serials))

    def test_fail(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [{"OP_ID": "OP_TEST_JQUEUE", "fail": True, "log_messages": ["x"]}])
        assert job["status"] == "error"
        assert job["opresult"] == [["OpExecError", ["Opcode failure was requested"]]]
        assert log_of(job) == ["x"]

    def test_notifications_as_gnt_debug_test_jobqueue_drives_them(
        self, queue: QueueUnderTest
    ) -> None:
        op = {
            "OP_ID": "OP_TEST_JQUEUE",
            "notify_waitlock": True,
            "notify_exec": True,
            "log_messages": ["one", "two"],
        }
        job_id = queue.submit_job([op])
        answered = answer_notifications(queue, job_id)
        job = info(queue, job_id)
        assert job["status"] == "success" and job["opresult"] == [True]
        assert answered == [
            ("expandnames", None, "waiting"),
            ("exec", None, "running"),
            ("startmsg", 2, "running"),
            ("logmsg", 1, "running"),
            ("logmsg", 2, "running"),
        ]
        assert log_of(job, 0, "message") == ["TESTMSG=one", "TESTMSG=two"]
        sockets = [entry[0] for entry in log_of(job, 0, ELOG_JQUEUE_TEST)]
        assert len(set(sockets)) == 5 and not any(os.path.exists(p) for p in sockets)

    def test_unanswered_notification_fails_the_opcode(
        self, queue: QueueUnderTest, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(jobqueue.lus.test, "NOTIFY_CONNECT_TIMEOUT", 0.3)
        job = run_job(queue, [{"OP_ID": "OP_TEST_JQUEUE", "notify_exec": True}])
        assert job["status"] == "error"
        message = "Test notification 'exec': no answer within 0.3s"
        assert job["opresult"] == [["OpExecError", [message]]]

    def test_unconfirmed_notification_fails_the_opcode(
        self, queue: QueueUnderTest, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(jobqueue.lus.test, "NOTIFY_CONFIRM_TIMEOUT", 0.3)
        job_id = queue.submit_job([{"OP_ID": "OP_TEST_JQUEUE", "notify_exec": True}])
        path = wait_for_notification(queue, job_id)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)  # and never confirms
            assert wait_for_status(queue, job_id, FINAL) == "error"
        message = "Test notification 'exec': no answer within 0.3s"
        assert info(queue, job_id)["opresult"] == [["OpExecError", [message]]]

    def test_cancel_while_a_notification_waits_before_the_locks(
        self, queue: QueueUnderTest
    ) -> None:
        job_id = queue.submit_job([{"OP_ID": "OP_TEST_JQUEUE", "notify_waitlock": True}])
        wait_for_notification(queue, job_id)
        assert queue.query_jobs([job_id], ["status"]) == [["waiting"]]
        started = time.monotonic()
        assert queue.cancel_job(job_id)[0]
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"
        assert time.monotonic() - started < PROMPT


def wait_for_notification(queue: QueueUnderTest, job_id: int) -> str:
    """The socket path of the job's first test notification, once it is logged."""
    found: list[str] = []

    def logged() -> bool:
        (row,) = queue.query_jobs([job_id], ["oplog"])
        found.extend(e[3][0] for op in row[0] for e in op if e[2] == ELOG_JQUEUE_TEST)
        return bool(found)

    assert wait_until(logged), "no test notification"
    return found[0]


def answer_notifications(queue: QueueUnderTest, job_id: int) -> list[tuple[str, Any, str]]:
    """Play gnt-debug's test client until the job ends: note the job's status at
    each notification, connect to its socket and confirm. Returns (test, argument,
    status) per notification. A bounded poll of the job's log.
    """
    answered: list[tuple[str, Any, str]] = []
    last_serial = 0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        (row,) = queue.query_jobs([job_id], ["status", "oplog"])
        status, oplog = row
        for serial, _, log_type, message in (e for op in oplog for e in op):
            if serial > last_serial and log_type == ELOG_JQUEUE_TEST:
                path, test, argument = message
                answered.append((test, argument, status))
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(path)
                    client.sendall(b"\0")
            last_serial = max(last_serial, serial)
        if status in FINAL:
            return answered
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish; answered {answered}")


class TestTestDummy:
    def test_result_and_messages(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [dummy(result={"a": [1, 2]}, messages=["m1", "m2"])])
        assert job["status"] == "success"
        assert job["opresult"] == [{"a": [1, 2]}]
        assert log_of(job, 0, "message") == ["m1", "m2"]

    def test_fail(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [dummy(fail=True), dummy()])
        assert job["opstatus"] == ["error", "error"]
        assert job["opresult"][0] == ["OpExecError", ["Opcode failure was requested"]]

    def test_submit_jobs(self, queue: QueueUnderTest) -> None:
        children = [[dummy(result="c1")], [dummy(result="c2"), dummy(result="c3")]]
        job = run_job(queue, [dummy(submit_jobs=children, priority=constants.PRIO_LOW)])
        assert job["status"] == "success"
        (result,) = job["opresult"]
        assert [ok for ok, _ in result["jobs"]] == [True, True]
        child_ids = [job_id for _, job_id in result["jobs"]]
        assert all(child_id > job["id"] for child_id in child_ids)
        for child_id in child_ids:
            assert wait_for_status(queue, child_id, FINAL) == "success"
        first, second = (info(queue, child_id) for child_id in child_ids)
        assert first["opresult"] == ["c1"] and second["opresult"] == ["c2", "c3"]
        assert first["comment"] == "Submitted by OP_TEST_DUMMY"
        (priority,) = queue.query_jobs([child_ids[0]], ["oppriority"])[0]
        assert priority == [constants.PRIO_LOW]

    def test_lu_submitted_jobs_inherit_the_reason_trail(self, queue: QueueUnderTest) -> None:
        client = ["gnt:client:test", "why", 1_600_000_000_000_000_000]
        parent = dummy(submit_jobs=[[dummy(), dummy()]], reason=[client])
        job = run_job(queue, [parent])
        ((_, child_id),) = job["opresult"][0]["jobs"]
        assert wait_for_status(queue, child_id, FINAL) == "success"
        ((parent_input,),) = queue.query_jobs([job["id"]], ["ops"])[0]
        (child_inputs,) = queue.query_jobs([child_id], ["ops"])[0]
        parent_trail = parent_input["reason"]
        assert parent_trail[0] == client
        assert parent_trail[1][:2] == [REASON_SOURCE_DAEMON, f"submitted as job {job['id']}"]
        for child in child_inputs:
            *inherited, by_parent, by_queue = child["reason"]
            assert inherited == parent_trail
            assert by_parent[:2] == ["gnt:opcode:OP_TEST_DUMMY", f"submitted by job {job['id']}"]
            assert by_queue[:2] == [REASON_SOURCE_DAEMON, f"submitted as job {child_id}"]
            assert parent_trail[1][2] <= by_parent[2] <= by_queue[2]


class TestCommandRun:
    def test_output_becomes_log_entries(self, queue: QueueUnderTest) -> None:
        code = (
            "import sys\n"
            "for n in range(3):\n"
            "    print(f'out {n}', flush=True)\n"
            "    print(f'err {n}', file=sys.stderr, flush=True)\n"
            "sys.stdout.write('no newline at the end')\n"
        )
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "success"
        assert job["opresult"][0]["exit_code"] == 0
        assert log_of(job, 0, "stdout") == ["out 0", "out 1", "out 2", "no newline at the end"]
        assert log_of(job, 0, "stderr") == ["err 0", "err 1", "err 2"]
        serials = [entry[0] for entry in job["oplog"][0]]
        assert serials == sorted(set(serials))

    def test_non_zero_exit(self, queue: QueueUnderTest) -> None:
        code = "import sys; print('first problem', file=sys.stderr); sys.exit('last problem')"
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "error"
        name, (message, details) = job["opresult"][0]
        assert name == "OpExecError" and details == {"exit_code": 1}
        assert "code 1" in message and "last problem" in message
        assert log_of(job, 0, "stderr") == ["first problem", "last problem"]

    def test_exit_code_is_named(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(py("raise SystemExit(7)"))])
        assert "code 7" in job["opresult"][0][1][0]

    def test_missing_program(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        job = run_job(queue, [command([str(tmp_path / "no-such-program")])])
        assert job["status"] == "error"
        assert "Cannot run" in job["opresult"][0][1][0]

    def test_timeout(self, queue: QueueUnderTest) -> None:
        started = time.monotonic()
        job = run_job(queue, [command(py("import time; time.sleep(30)"), timeout=0.3)])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "error"
        assert "timed out" in job["opresult"][0][1][0]

    def test_timeout_with_output_closed(self, queue: QueueUnderTest) -> None:
        code = "import os, time; os.close(1); os.close(2); time.sleep(30)"
        started = time.monotonic()
        job = run_job(queue, [command(py(code), timeout=0.3)])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "error"
        assert "timed out" in job["opresult"][0][1][0]

    def test_environment_is_base_plus_requested(self, queue: QueueUnderTest) -> None:
        code = "import json, os; print(json.dumps(dict(os.environ)))"
        extra = {"JQ_TEST_VAR": "hello world", "HOME": "/nonexistent-home"}
        job = run_job(queue, [command(py(code), env=extra)])
        assert job["status"] == "success"
        (line,) = log_of(job, 0, "stdout")
        environment = json.loads(line)
        expected = base_environment(job["id"]) | extra
        assert environment == expected
        assert environment["JOBQUEUE_JOB_ID"] == str(job["id"])

    def test_cwd(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        workdir = tmp_path / "work dir"
        workdir.mkdir()
        job = run_job(queue, [command(py("import os; print(os.getcwd())"), cwd=str(workdir))])
        assert log_of(job, 0, "stdout") == [str(workdir)]

    def test_output_is_capped(self, queue: QueueUnderTest) -> None:
        lines = constants.COMMAND_LOG_MAX_LINES + 50
        code = f"import sys; sys.stdout.write(''.join(f'{{n}}\\n' for n in range({lines})))"
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "success"
        stdout = log_of(job, 0, "stdout")
        assert len(stdout) == constants.COMMAND_LOG_MAX_LINES
        assert stdout[:2] == ["0", "1"] and stdout[-1] == str(constants.COMMAND_LOG_MAX_LINES - 1)
        assert log_of(job, 0, "message") == ["output truncated"]
        assert job["oplog"][0][-1][2:] == ["message", "output truncated"]

    def test_output_cap_counts_bytes_as_written(self, queue: QueueUnderTest) -> None:
        line = "\u00e9" * 1000  # 1,000 characters, 2,000 bytes in UTF-8
        code = f"import sys; sys.stdout.buffer.write(({line!r} + '\\n').encode() * 600)"
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "success"
        stdout = log_of(job, 0, "stdout")
        assert len(stdout) == constants.COMMAND_LOG_MAX_BYTES // 2000
        assert set(stdout) == {line}
        assert log_of(job, 0, "message") == ["output truncated"]

    def test_output_without_newlines_is_logged_in_pieces(self, queue: QueueUnderTest) -> None:
        size = 3 * constants.COMMAND_LOG_MAX_BYTES
        code = (
            f"import sys; sys.stdout.write('x' * {size}); sys.stdout.flush(); "
            "sys.stderr.write('boom\\n'); sys.exit(1)"
        )
        job = run_job(queue, [command(py(code))])
        stdout = log_of(job, 0, "stdout")
        piece = constants.COMMAND_LOG_MAX_LINE_BYTES
        assert stdout == ["x" * piece] * (constants.COMMAND_LOG_MAX_BYTES // piece)
        assert log_of(job, 0, "message") == ["output truncated"]
        assert log_of(job, 0, "stderr") == []  # after the cap, output is dropped...
        assert job["status"] == "error"
        assert "stderr: boom" in str(job["opresult"][0])  # ...but the error still quotes it

    def test_background_child_does_not_hold_the_job(self, queue: QueueUnderTest) -> None:
        started = time.monotonic()
        job = run_job(queue, [command(["sh", "-c", "sleep 30 & echo started"])])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "success"
        assert log_of(job, 0, "stdout") == ["started"]

    def test_background_child_is_killed(self, queue: QueueUnderTest) -> None:
        started = time.monotonic()
        job = run_job(queue, [command(["sh", "-c", "echo $$; sleep 30 &"])])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "success"
        (pgid_text,) = log_of(job, 0, "stdout")
        pgid = int(pgid_text)
        assert wait_until(lambda: group_is_gone(pgid), PROMPT), f"group {pgid} still alive"

    def test_kill(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([command(py("import time; time.sleep(30)")), dummy()])
        wait_for_status(queue, job_id, "running")
        started = time.monotonic()
        assert queue.cancel_job(job_id, kill=True) == [True, f"Job {job_id} will be killed"]
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"
        assert time.monotonic() - started < PROMPT
        assert info(queue, job_id)["opresult"] == [constants.MSG_CANCELED] * 2

    def test_killed_by_a_slow_shutdown_is_an_error_not_a_cancel(
        self, queue: QueueUnderTest
    ) -> None:
        job_id = queue.submit_job([command(py("import time; time.sleep(30)")), dummy()])
        wait_for_status(queue, job_id, "running")
        queue.prepare_shutdown()
        queue.kill_running()
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "error"
        first, second = info(queue, job_id)["opresult"]
        assert first == ["OpExecError", [constants.MSG_KILLED_AT_SHUTDOWN]]
        assert second == ["OpExecError", [constants.MSG_PRECEDING_FAILED]]

    def test_running_command_group_is_recorded(self, make_queue: MakeQueue, tmp_path: Path) -> None:
        directory = tmp_path / "commands"
        directory.mkdir()
        queue = make_queue(processes=ProcessGroups(str(directory)))
        job_id = queue.submit_job([command(["sh", "-c", "echo $$; exec sleep 30"])])

        def pgid() -> int | None:
            lines = log_of(info(queue, job_id), 0, "stdout")
            return int(lines[0]) if lines else None

        assert wait_until(lambda: pgid() is not None)
        record = directory / str(pgid())
        assert wait_until(record.exists)
        assert record.read_text().split()[0] == str(job_id)
        kill(queue, job_id)
        assert os.listdir(directory) == []
        assert run_job(queue, [command(["true"])])["status"] == "success"
        assert os.listdir(directory) == []

    def test_dry_run(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        marker = tmp_path / "marker"
        argv = ["touch", str(marker)]
        job = run_job(queue, [command(argv, dry_run=True)])
        assert job["status"] == "success"
        assert job["opresult"] == [{"argv": argv}]
        assert not marker.exists()


def group_is_gone(pgid: int) -> bool:
    """No process of group ``pgid`` is alive (zombies awaiting their reaper count as gone)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            return False
    return True


TIMES_SCRIPT = (
    "import sys, time\n"
    "path = sys.argv[1]\n"
    "open(path + '.start', 'w').write(repr(time.time()))\n"
    "time.sleep(0.2)\n"
    "open(path + '.end', 'w').write(repr(time.time()))\n"
)


def intervals(directory: Path, items: list[str]) -> list[tuple[float, float]]:
    return [
        (float((directory / f"{i}.start").read_text()), float((directory / f"{i}.end").read_text()))
        for i in items
    ]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


class TestCommandFanout:
    def test_fanout_with_then_job(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        items = [f"item-{n:02d}" for n in range(50)]
        then_path = out / "then"
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": py(TIMES_SCRIPT, str(out / "{item}")),
            "items": items,
            "then": [command(py(TIMES_SCRIPT, str(then_path)))],
        }
        job = run_job(queue, [op])
        assert job["status"] == "success"
        submitted = job["opresult"][0]["jobs"]
        assert len(submitted) == 51 and all(ok for ok, _ in submitted)
        job_ids = [job_id for _, job_id in submitted]
        for job_id in job_ids:
            assert wait_for_status(queue, job_id, FINAL, 30) == "success"
        spans = intervals(out, items)
        assert 2 <= max_overlap(spans) <= 4, "children run in parallel, at most one per worker"
        then_start = float((out / "then.start").read_text())
        assert then_start > max(end for _, end in spans)
        # the job starts (and waits) at once; its opcode runs after every child ended
        (then_exec,) = queue.query_jobs([job_ids[-1]], ["opexec"])[0]
        child_ends = [stamp(info(queue, job_id)["end_ts"]) for job_id in job_ids[:-1]]
        assert stamp(then_exec[0]) >= max(child_ends)
        (ops,) = queue.query_jobs([job_ids[-1]], ["ops"])[0]
        assert sorted(dep[0] for dep in ops[0]["depends"]) == sorted(job_ids[:-1])

    def test_shared_exclusive_lock_serialises(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        items = ["s1", "s2", "s3"]
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": py(TIMES_SCRIPT, str(out / "{item}")),
            "items": items,
            "locks": ["shared-lock"],
        }
        job = run_job(queue, [op])
        job_ids = [job_id for _, job_id in job["opresult"][0]["jobs"]]
        assert len(job_ids) == 3
        for job_id in job_ids:
            assert wait_for_status(queue, job_id, FINAL) == "success"
        assert max_overlap(intervals(out, items)) == 1
        (ops,) = queue.query_jobs([job_ids[0]], ["ops"])[0]
        assert ops[0]["locks"] == ["shared-lock"]

    @pytest.mark.parametrize(
        "params",
        [
            {"locks": ["{item}"], "items": ["a", ""]},
            {"shared_locks": ["clus{item}"], "items": ["ter"]},
            {"items": ["x"] * (OpCommandFanout.FANOUT_LIMIT + 1)},
            {"then": [dummy(fail="no")]},
        ],
    )
    def test_fanout_refused_at_submit(self, queue: QueueUnderTest, params: dict[str, Any]) -> None:
        op = {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["true"], "items": ["a"], **params}
        with pytest.raises(OpPrereqError, match="OP_COMMAND_FANOUT"):
            queue.submit_job([op])
        assert queue.live.count() == 0

    def test_fanout_items_get_their_own_locks(self, queue: QueueUnderTest) -> None:
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": ["true", "{item}"],
            "items": ["h1", "h2"],
            "locks": ["host:{item}"],
            "shared_locks": ["site"],
        }
        job = run_job(queue, [op])
        job_ids = [job_id for _, job_id in job["opresult"][0]["jobs"]]
        ops = [queue.query_jobs([i], ["ops"])[0][0][0] for i in job_ids]
        assert [(o["argv"], o["locks"], o["shared_locks"]) for o in ops] == [
            (["true", "h1"], ["host:h1"], ["site"]),
            (["true", "h2"], ["host:h2"], ["site"]),
        ]
        for job_id in job_ids:
            assert wait_for_status(queue, job_id, FINAL) == "success"


class TestProcessing:
    def test_one_worker_per_job_even_if_enqueued_twice(
        self, queue: QueueUnderTest, caplog: pytest.LogCaptureFixture
    ) -> None:
        job_id = queue.submit_job([delay(0.3, repeat=1)])
        wait_for_status(queue, job_id, "running")
        with caplog.at_level(logging.ERROR, logger="test.queue"):
            queue._enqueue([job_id])
            queue._enqueue([job_id])
            assert wait_for_status(queue, job_id, FINAL) == "success"
            assert wait_until(lambda: queue.pool.stats()["queued"] == 0)
            assert wait_until(lambda: not queue.pool.has_running_tasks())
        assert log_of(info(queue, job_id)) == ["Test delay iteration 1/1"]
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

    def test_wake_up_while_parking_is_not_lost(
        self, queue: QueueUnderTest, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second worker that finds the job busy just as it is parked makes it run again.

        Regression: the "look again" flag was read before the job's run lock
        was released, so a notification arriving in between was lost and the
        job waited forever.
        """
        blocker = start_blocker(queue)
        job_id = queue.submit_job([dummy(depends=[[blocker, ["canceled"]]])])
        assert wait_until(lambda: job_id in queue.depmgr.waiting_jobs())
        assert wait_until(lambda: not queue._active[job_id].run_lock.locked())
        checks: list[int] = []
        real_check = queue.depmgr.check

        def counting_check(waiting_id: int, dep_id: int, wanted: Any) -> Any:
            if waiting_id == job_id:
                checks.append(dep_id)
            return real_check(waiting_id, dep_id, wanted)

        monkeypatch.setattr(queue.depmgr, "check", counting_check)
        active = queue._active[job_id]
        real_lock = active.run_lock

        class RacingLock:
            """Another worker fails to take the job just before it is let go."""

            fired = False

            def acquire(self, blocking: bool = True) -> bool:
                return real_lock.acquire(blocking)

            def release(self) -> None:
                if not self.fired:
                    self.fired = True
                    active.rerun = True  # what the other worker does
                real_lock.release()

            def locked(self) -> bool:
                return real_lock.locked()

        active.run_lock = RacingLock()  # type: ignore[assignment]
        queue._enqueue([job_id])
        assert wait_until(lambda: len(checks) >= 2, PROMPT), "the job was not looked at again"
        kill(queue, blocker)
        assert wait_for_status(queue, job_id, FINAL) == "success"

    def test_steps_report_verdicts(self, queue: QueueUnderTest) -> None:
        assert {verdict.value for verdict in Verdict} == {"defer", "waitdep", "finished"}
        job = run_job(queue, [dummy(result=n) for n in range(5)])
        assert job["opresult"] == [0, 1, 2, 3, 4]


class TestSubmission:
    def test_relative_dependencies(self, queue: QueueUnderTest) -> None:
        results = queue.submit_many_jobs(
            [
                [delay(0.1)],
                [dummy(result="b", depends=[[-1, ["success"]]])],
                [dummy(result="c", depends=[[-2, []], [-1, ["success"]]])],
            ]
        )
        assert [ok for ok, _ in results] == [True, True, True]
        first, second, third = (job_id for _, job_id in results)
        (ops,) = queue.query_jobs([third], ["ops"])[0]
        assert ops[0]["depends"] == [[first, []], [second, ["success"]]]
        (ops,) = queue.query_jobs([second], ["ops"])[0]
        assert ops[0]["depends"] == [[first, ["success"]]]
        for job_id in (first, second, third):
            assert wait_for_status(queue, job_id, FINAL) == "success"
        rows = queue.query_jobs([first, second, third], ["opexec", "end_ts"])
        (exec_second,), (exec_third,) = rows[1][0], rows[2][0]
        assert stamp(exec_second) >= stamp(rows[0][1])
        assert stamp(exec_third) >= max(stamp(rows[0][1]), stamp(rows[1][1]))

    def test_unresolvable_relative_dependency(self, queue: QueueUnderTest) -> None:
        results = queue.submit_many_jobs([[dummy(depends=[[-1, []]])], [dummy()]])
        assert results[0] == [False, "Unable to resolve relative job ID -1"]
        assert results[1][0] is True

    def test_relative_dependency_in_submit_job(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError, match="Relative"):
            queue.submit_job([dummy(depends=[[-1, []]])])

    def test_dependency_on_missing_job(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError, match="9999"):
            queue.submit_job([dummy(depends=[[9999, []]])])
        (result,) = queue.submit_many_jobs([[dummy(depends=[[9999, []]])]])
        assert result[0] is False and "9999" in result[1]
        assert queue.live.count() == 0

    def test_dependency_on_archived_job(self, queue: QueueUnderTest) -> None:
        done = run_job(queue, [dummy()])["id"]
        assert queue.archive_job(done)
        job = run_job(queue, [dummy(result="after", depends=[[done, ["success"]]])])
        assert job["opresult"] == ["after"]

    def test_failing_job_does_not_stop_the_others(self, queue: QueueUnderTest) -> None:
        results = queue.submit_many_jobs(
            [
                [dummy(result=1)],
                [{"OP_ID": "OP_NO_SUCH"}],
                [dummy(priority=5)],
                [],
                [dummy(result=4)],
            ]
        )
        assert [ok for ok, _ in results] == [True, False, False, False, True]
        assert "OP_NO_SUCH" in results[1][1]
        assert "priority" in results[2][1]
        for _, job_id in (results[0], results[4]):
            assert wait_for_status(queue, job_id, FINAL) == "success"
        assert queue.live.count() == 2

    def test_drained_queue(self, queue: QueueUnderTest) -> None:
        assert queue.set_drain_flag(True)
        assert queue.query_config_values(["drain_flag"]) == [True]
        with pytest.raises(JobQueueDrainError):
            queue.submit_job([dummy()])
        with pytest.raises(JobQueueDrainError):
            queue.submit_many_jobs([[dummy()]])
        job_id = queue.submit_job([dummy()], drained_ok=True)
        assert wait_for_status(queue, job_id, FINAL) == "success"
        queue.set_drain_flag(False)
        assert queue.submit_job([dummy()]) > job_id

    def test_drained_queue_fails_lu_jobs_not_the_lu(self, queue: QueueUnderTest) -> None:
        queue.set_drain_flag(True)
        job_id = queue.submit_job([dummy(submit_jobs=[[dummy()], [dummy()]])], drained_ok=True)
        wait_for_status(queue, job_id, FINAL)
        job = info(queue, job_id)
        assert job["status"] == "success"
        assert job["opresult"] == [{"jobs": [[False, constants.MSG_DRAINED]] * 2}]

    def test_queue_full(self, make_queue: MakeQueue) -> None:
        queue = make_queue(max_jobs=3)
        results = queue.submit_many_jobs([[dummy()] for _ in range(4)])
        assert [ok for ok, _ in results] == [True, True, True, False]
        assert results[3][1] == "The job queue is full (3 jobs)"
        with pytest.raises(JobQueueFull):
            queue.submit_job([dummy()])
        for _, job_id in results[:3]:
            wait_for_status(queue, job_id, FINAL)
        assert queue.auto_archive_jobs(-1, 10) == [3, 0]
        assert queue.submit_job([dummy()]) > results[2][1]

    def test_concurrent_submissions_never_overfill_the_queue(self, make_queue: MakeQueue) -> None:
        queue = make_queue(max_jobs=40, workers=0)
        start = threading.Barrier(16)

        def submit_ten() -> None:
            start.wait(WAIT)
            for _ in range(10):
                with contextlib.suppress(JobQueueFull):
                    queue.submit_job([dummy()])

        threads = [threading.Thread(target=submit_ten) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert queue.live.count() <= 40
        while True:  # no claimed slot is left behind: the queue fills up exactly
            try:
                queue.submit_job([dummy()])
            except JobQueueFull:
                break
        assert queue.live.count() == 40


def hand_written_job(job_id: int, op_statuses: list[str]) -> dict[str, Any]:
    """A job file as a previous daemon would have left it, written without the model."""
    ops = []
    for index, status in enumerate(op_statuses):
        started = status != "queued"
        ops.append(
            {
                "input": {"OP_ID": "OP_TEST_DUMMY", "result": f"{job_id}/{index}"},
                "status": status,
                "result": f"{job_id}/{index}" if status == "success" else None,
                "log": [],
                "priority": 0,
                "start_timestamp": [1_700_000_000, index] if started else None,
                "exec_timestamp": [1_700_000_001, index]
                if status in ("running", "success")
                else None,
                "end_timestamp": [1_700_000_002, index] if status == "success" else None,
            }
        )
    started = any(status != "queued" for status in op_statuses)
    return {
        "id": job_id,
        "ops": ops,
        "received_timestamp": [1_699_999_999, 0],
        "start_timestamp": [1_700_000_000, 0] if started else None,
        "end_timestamp": None,
    }


class TestRecovery:
    def test_restart(self, make_queue: MakeQueue, tmp_path: Path) -> None:
        queue_dir = tmp_path / "queue"
        first = make_queue(queue_dir=queue_dir)
        done = run_job(first, [dummy(result="before")])["id"]
        first.prepare_shutdown()
        first.shutdown()
        layouts = {
            "queued": ["queued", "queued"],
            "waiting": ["success", "waiting", "queued"],
            "running": ["success", "running", "queued"],
            "canceling": ["canceling", "canceling"],
        }
        ids = {}
        for offset, (name, op_statuses) in enumerate(layouts.items(), start=1):
            ids[name] = done + offset
            text = json.dumps(hand_written_job(ids[name], op_statuses))
            (queue_dir / f"job-{ids[name]}").write_text(text)

        second = make_queue(queue_dir=queue_dir)
        unclean = constants.MSG_UNCLEAN_SHUTDOWN
        running = info(second, ids["running"])
        assert running["opstatus"] == ["success", "error", "error"]
        assert running["opresult"] == [f"{ids['running']}/0", unclean, unclean]
        assert running["end_ts"] is not None
        canceling = info(second, ids["canceling"])
        assert canceling["opstatus"] == ["error", "error"]
        assert canceling["opresult"] == [unclean, unclean]
        for name in ("queued", "waiting"):
            assert wait_for_status(second, ids[name], FINAL) == "success"
        waiting = info(second, ids["waiting"])
        assert waiting["opresult"] == [f"{ids['waiting']}/{n}" for n in range(3)]
        assert info(second, ids["queued"])["opresult"] == [f"{ids['queued']}/{n}" for n in range(2)]
        assert info(second, done)["opresult"] == ["before"]
        assert second.submit_job([dummy()]) > max(ids.values())


class TestCancel:
    def test_cancel_queued_is_immediate(self, make_queue: MakeQueue) -> None:
        queue = make_queue(workers=1)
        blocker = start_blocker(queue)
        job_id = queue.submit_job([dummy(), dummy()])
        assert queue.cancel_job(job_id) == [True, f"Job {job_id} canceled"]
        job = info(queue, job_id)
        assert job["status"] == "canceled"
        assert job["opresult"] == [constants.MSG_CANCELED] * 2
        assert job["start_ts"] is None and job["end_ts"] is not None
        assert queue.cancel_job(job_id)[0] is False
        kill(queue, blocker)
        assert queue.cancel_job(12345) == [False, "Job 12345 not found"]

    def test_cancel_job_waiting_for_a_lock(self, make_queue: MakeQueue) -> None:
        def slow_strategy() -> LockAttemptTimeoutStrategy:
            return LockAttemptTimeoutStrategy(total=300, min_wait=30, max_wait=30)

        queue = make_queue(strategy_factory=slow_strategy)
        holder = queue.submit_job([command(py("import time; time.sleep(60)"), locks=["L"])])
        wait_for_status(queue, holder, "running")
        waiter = queue.submit_job([command(["true"], locks=["L"])])

        def queued_for_lock() -> bool:
            return any(
                entry["name"] == "L" and waiter in entry["pending"][0][1]
                for entry in queue.locks.lock_info()
                if entry["pending"]
            )

        assert wait_until(queued_for_lock)
        assert info(queue, waiter)["status"] == "waiting"
        started = time.monotonic()
        assert queue.cancel_job(waiter) == [True, f"Job {waiter} will be canceled"]
        assert wait_for_status(queue, waiter, FINAL, PROMPT) == "canceled"
        assert time.monotonic() - started < PROMPT
        assert info(queue, waiter)["opresult"] == [constants.MSG_CANCELED]
        assert info(queue, holder)["status"] == "running"
        kill(queue, holder)

    def test_cancel_job_waiting_for_a_dependency(self, queue: QueueUnderTest) -> None:
        blocker = start_blocker(queue)
        waiter = queue.submit_job([dummy(depends=[[blocker, []]])])
        wait_for_status(queue, waiter, "waiting")
        assert wait_until(lambda: waiter in queue.depmgr.waiting_jobs())
        rows = queue.query("lock", ["name", "mode", "owner", "pending"], None)["data"]
        values = [[value for _, value in row] for row in rows]
        assert [f"job/{blocker}", None, [], [["job", [str(waiter)]]]] in values
        assert ["cluster", "shared", [str(blocker)], []] in values
        assert queue.cancel_job(waiter)[0] is True
        assert wait_for_status(queue, waiter, FINAL, PROMPT) == "canceled"
        assert queue.depmgr.waiting_jobs() == set()
        kill(queue, blocker)

    def test_cancel_running(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(30)])
        wait_for_status(queue, job_id, "running")
        reply = queue.cancel_job(job_id)
        assert reply[0] is False and "running" in reply[1]
        assert info(queue, job_id)["status"] == "running"
        started = time.monotonic()
        assert queue.cancel_job(job_id, kill=True)[0] is True
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"
        assert time.monotonic() - started < PROMPT
        assert info(queue, job_id)["opresult"] == [constants.MSG_CANCELED]


class TestShutdown:
    def test_prepare_shutdown_sends_lock_waiters_back_to_queued(
        self, make_queue: MakeQueue
    ) -> None:
        def slow_strategy() -> LockAttemptTimeoutStrategy:
            return LockAttemptTimeoutStrategy(total=300, min_wait=30, max_wait=30)

        queue = make_queue(strategy_factory=slow_strategy)
        holder = queue.submit_job([command(py("import time; time.sleep(60)"), locks=["L"])])
        wait_for_status(queue, holder, "running")
        waiter = queue.submit_job([dummy(), command(["true"], locks=["L"])])
        assert wait_until(
            lambda: any(
                entry["name"] == "L" and entry["pending"] for entry in queue.locks.lock_info()
            )
        )
        queue.prepare_shutdown()
        assert wait_for_status(queue, waiter, "queued", PROMPT) == "queued"
        (row,) = queue.query_jobs([waiter], ["opstatus", "start_ts", "end_ts"])
        assert row[0] == ["success", "queued"]
        assert row[1] is not None and row[2] is None
        assert queue.query_config_values(["accepting_jobs"]) == [False]
        with pytest.raises(JobQueueError, match="shutting down"):
            queue.submit_job([dummy()])
        assert info(queue, holder)["status"] == "running"


class TestPriority:
    def test_change_priority_changes_start_order(self, make_queue: MakeQueue) -> None:
        queue = make_queue(workers=1)
        blocker = start_blocker(queue)
        low = [queue.submit_job([dummy(priority=constants.PRIO_LOW)]) for _ in range(3)]
        raised = low[2]
        reply = queue.change_job_priority(raised, constants.PRIO_HIGH)
        assert reply[0] is True
        assert queue.query_jobs([raised], ["priority", "oppriority"]) == [
            [constants.PRIO_HIGH, [constants.PRIO_HIGH]]
        ]
        kill(queue, blocker)
        for job_id in low:
            assert wait_for_status(queue, job_id, FINAL) == "success"
        starts = {job_id: stamp(info(queue, job_id)["start_ts"]) for job_id in low}
        assert sorted(low, key=starts.__getitem__) == [raised, low[0], low[1]]

    def test_change_priority_errors(self, queue: QueueUnderTest) -> None:
        done = run_job(queue, [dummy()])["id"]
        with pytest.raises(OpPrereqError):
            queue.change_job_priority(done, constants.PRIO_HIGHEST)
        assert queue.change_job_priority(done, constants.PRIO_HIGH)[0] is False
        assert queue.change_job_priority(4242, constants.PRIO_HIGH) == [
            False,
            "Job 4242 not found",
        ]


class TestArchive:
    def test_archive_job(self, queue: QueueUnderTest) -> None:
        done = run_job(queue, [dummy(result="old")])["id"]
        blocker = start_blocker(queue)
        assert queue.archive_job(blocker) is False
        assert queue.archive_job(done) is True
        assert queue.archive_job(done) is False
        assert done not in queue.live.ids()
        assert queue.store.archived_ids() == [done]
        assert queue.query_jobs([done], ["id", "status", "opresult"]) == [
            [done, "success", ["old"]]
        ]
        assert [row[0] for row in queue.query_jobs(None, ["id"])] == [blocker]
        found = queue.query("job", ["id", "status"], ["=", "id", done])
        assert found["data"] == [[[RS_NORMAL, done], [RS_NORMAL, "success"]]]
        live = queue.query("job", ["id"], None)["data"]
        assert live == [[[RS_NORMAL, blocker]]]
        archived = queue.query("job", ["id"], None, archived=True)["data"]
        assert archived == [[[RS_NORMAL, done]]]
        kill(queue, blocker)

    def test_auto_archive(self, queue: QueueUnderTest) -> None:
        finished = [run_job(queue, [dummy(fail=n == 1)])["id"] for n in range(3)]
        blocker = start_blocker(queue)
        assert queue.auto_archive_jobs(3600, 10) == [0, 0]
        assert queue.auto_archive_jobs(-1, 10) == [3, 0]
        assert queue.live.ids() == [blocker]
        assert queue.store.archived_ids() == finished
        kill(queue, blocker)
        assert queue.auto_archive_jobs(-1, 10) == [1, 0]
        assert queue.live.ids() == []


class TestQueries:
    def test_query_fields(self, queue: QueueUnderTest) -> None:
        every = queue.query_fields("job", None)["fields"]
        names = [field["name"] for field in every]
        assert names == sorted(names) and {"id", "status", "oplog"} <= set(names)
        assert all(set(field) == {"name", "title", "kind", "doc"} for field in every)
        some = queue.query_fields("job", ["status", "bogus"])["fields"]
        assert some[0]["name"] == "status" and some[0]["kind"] == "text"
        assert some[1]["name"] == "bogus" and some[1]["kind"] == "unknown"
        with pytest.raises(OpPrereqError):
            queue.query_fields("nodes", None)

    def test_query_filters(self, queue: QueueUnderTest) -> None:
        ok = run_job(queue, [dummy()])["id"]
        failed = run_job(queue, [dummy(fail=True)])["id"]
        canceled_job = queue.submit_job([dummy(depends=[[failed, ["success"]]])])
        wait_for_status(queue, canceled_job, FINAL)
        either = ["|", ["=", "status", "success"], ["=", "status", "error"]]
        result = queue.query("job", ["id", "status"], either)
        assert [field["name"] for field in result["fields"]] == ["id", "status"]
        assert result["data"] == [
            [[RS_NORMAL, ok], [RS_NORMAL, "success"]],
            [[RS_NORMAL, failed], [RS_NORMAL, "error"]],
            [[RS_NORMAL, canceled_job], [RS_NORMAL, "error"]],
        ]
        by_id = queue.query("job", ["id", "opstatus"], ["=", "id", failed])["data"]
        assert by_id == [[[RS_NORMAL, failed], [RS_NORMAL, ["error"]]]]
        negated = queue.query("job", ["id"], ["!", ["=", "status", "error"]])["data"]
        assert negated == [[[RS_NORMAL, ok]]]
        with pytest.raises(OpPrereqError):
            queue.query("job", ["id"], ["=", "no_such_field", 1])
        with pytest.raises(OpPrereqError):
            queue.query("job", ["id"], ["~~", "id", 1])

    def test_unknown_fields(self, queue: QueueUnderTest) -> None:
        job_id = run_job(queue, [dummy()])["id"]
        result = queue.query("job", ["id", "bogus"], None)
        assert result["fields"][1]["kind"] == "unknown"
        assert result["data"] == [[[RS_NORMAL, job_id], [RS_UNKNOWN, None]]]
        with pytest.raises(OpPrereqError, match="bogus"):
            queue.query_jobs([job_id], ["id", "bogus"])

    def test_query_jobs_shapes(self, queue: QueueUnderTest) -> None:
        job_id = run_job(queue, [delay(0, repeat=1), dummy(result=5)])["id"]
        fields = ["id", "status", "summary", "opstatus", "opresult", "priority", "oppriority"]
        assert queue.query_jobs([job_id, 999], fields) == [
            [
                job_id,
                "success",
                ["TEST_DELAY(0)", "TEST_DUMMY"],
                ["success"] * 2,
                [None, 5],
                0,
                [0, 0],
            ],
            [999] + [None] * (len(fields) - 1),  # Ganeti: the id of an unknown job, nulls
        ]
        (row,) = queue.query_jobs([job_id], ["received_ts", "start_ts", "end_ts", "oplog"])
        received, started, ended, oplog = row
        assert stamp(received) <= stamp(started) <= stamp(ended)
        (entry,) = oplog[0]
        assert entry[0] == 1 and entry[2:] == ["message", "Test delay iteration 1/1"]
        assert oplog[1] == []
