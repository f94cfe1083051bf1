"""The built-in test LUs (OP_TEST_DELAY, OP_TEST_JQUEUE, OP_TEST_DUMMY) through a real
JobQueue on files.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest

import jobqueue.lus.test
from jobqueue import constants
from jobqueue.errors import ECODE_INVAL, OpPrereqError
from jobqueue.lus.test import ELOG_JQUEUE_TEST, MAX_DELAY_REPEAT
from jobqueue.opcodes import REASON_SOURCE_DAEMON
from tests import lu_harness
from tests.lu_harness import (
    FINAL,
    PROMPT,
    WAIT,
    delay,
    dummy,
    info,
    log_of,
    run_job,
    stamp,
    wait_for_status,
    wait_until,
)
from tests.queue_harness import QueueUnderTest

make_queue = lu_harness.make_queue  # the queue fixtures of the LU tests
queue = lu_harness.queue


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
