"""End to end: opcodes as Ganeti's tools send them, reason trails, nesting bounds.

The real daemon, driven through raw sockets with Ganeti's framing and through
our client.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.opcodes import MAX_NESTING, REASON_SOURCE_DAEMON
from tests.daemon_helper import Daemon, raw_exchange, request, wait_until

#: ``gnt-debug delay 0`` as Ganeti's Python 3 client puts it on the wire.
GANETI_DELAY = {
    "OP_ID": "OP_TEST_DELAY",
    "duration": 0.0,
    "on_master": True,
    "on_nodes": [],
    "on_node_uuids": None,
    "repeat": 0,
    "interruptible": False,
    "no_locks": True,
    "dry_run": False,
    "debug_level": 0,
    "priority": 0,
    "depends": None,
    "comment": None,
    "reason": [["gnt:client:gnt-debug", "delay", 1_700_000_000_000_000_000]],
}
FINAL = ("success", "error", "canceled")


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def test_ganeti_submit_job_with_a_reason_trail(daemon: Daemon) -> None:
    before = time.time_ns()
    reply = raw_exchange(daemon.paths.master_socket, request("SubmitJob", [GANETI_DELAY]))
    after = time.time_ns()
    assert reply["success"] is True, reply
    job_id = reply["result"]
    assert daemon.wait_job(job_id) == "success"
    query = request("QueryJobs", [str(job_id)], ["status", "ops", "opresult"])
    ((status, (op,), results),) = raw_exchange(daemon.paths.master_socket, query)["result"]
    assert (status, results) == ("success", [None])
    client_entry, (source, text, stamp) = op["reason"]
    assert client_entry == GANETI_DELAY["reason"][0]
    assert (source, text) == (REASON_SOURCE_DAEMON, f"submitted as job {job_id}")
    assert before <= stamp <= after
    assert {**op, "reason": GANETI_DELAY["reason"]} == GANETI_DELAY, "stored as sent"


def test_jobs_an_lu_submits_inherit_the_trail(daemon: Daemon) -> None:
    client = daemon.client()
    trail = [["gnt:client:test", "parent", 1_600_000_000_000_000_000]]
    children = [[{"OP_ID": "OP_TEST_DUMMY", "result": "child"}]]
    parent = {"OP_ID": "OP_TEST_DUMMY", "submit_jobs": children, "reason": trail}
    job_id = client.submit_job([parent])
    assert daemon.wait_job(job_id) == "success"
    ((result,), (parent_op,)) = client.query_jobs([job_id], ["opresult", "ops"])[0]
    ((accepted, child_id),) = result["jobs"]
    assert accepted is True and daemon.wait_job(child_id) == "success"
    ((child_op,),) = client.query_jobs([child_id], ["ops"])[0]
    *inherited, by_parent, by_queue = child_op["reason"]
    assert inherited == parent_op["reason"] and inherited[0] == trail[0]
    assert by_parent[:2] == ["gnt:opcode:OP_TEST_DUMMY", f"submitted by job {job_id}"]
    assert by_queue[:2] == [REASON_SOURCE_DAEMON, f"submitted as job {child_id}"]
    assert child_op["comment"] == "Submitted by OP_TEST_DUMMY"


def fanout_then(result: Any) -> dict[str, Any]:
    then = [{"OP_ID": "OP_TEST_DUMMY", "result": result}]
    return {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["true"], "items": ["a"], "then": then}


@pytest.mark.parametrize(
    "deep",
    [
        {"OP_ID": "OP_TEST_DUMMY", "result": nested(MAX_NESTING)},
        {"OP_ID": "OP_TEST_DUMMY", "result": nested(400)},  # deeper: refused at parse time
        fanout_then(nested(MAX_NESTING - 2)),
        # dummy (1) > submit_jobs (2) > job (3) > opcode (4) > result: 61 lists end at 65
        {
            "OP_ID": "OP_TEST_DUMMY",
            "submit_jobs": [[{"OP_ID": "OP_TEST_DUMMY", "result": nested(61)}]],
        },
    ],
)
def test_deep_nesting_is_refused_at_submission(daemon: Daemon, deep: dict[str, Any]) -> None:
    client = daemon.client()
    with pytest.raises(errors.OpPrereqError) as info:
        client.submit_job([deep])
    assert info.value.args[1] == "wrong_input"
    assert f"nested deeper than {MAX_NESTING} levels" in info.value.args[0]
    reply = raw_exchange(daemon.paths.master_socket, request("SubmitJob", [deep]))
    assert reply["success"] is False and reply["result"][0] == "OpPrereqError"
    assert client.query_jobs(None, ["id"]) == []


def test_every_accepted_job_stays_cancelable(daemon: Daemon) -> None:
    """The deepest opcodes accepted still copy, store and cancel: none is stuck."""
    client = daemon.client()
    blocker = client.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 60}])
    wait_until(lambda: client.query_jobs([blocker], ["status"])[0][0] == "running")
    waits = [[blocker, []]]
    deepest = [
        {"OP_ID": "OP_TEST_DUMMY", "result": nested(MAX_NESTING - 1), "depends": waits},
        {**fanout_then(nested(MAX_NESTING - 3)), "depends": waits},
        {
            "OP_ID": "OP_TEST_DUMMY",
            "submit_jobs": [[{"OP_ID": "OP_TEST_DUMMY", "result": nested(MAX_NESTING - 4)}]],
            "depends": waits,
        },
    ]
    job_ids = [client.submit_job([op]) for op in deepest]
    for job_id in job_ids:
        wait_until(lambda job_id=job_id: client.query_jobs([job_id], ["status"])[0][0] == "waiting")
        accepted, message = client.cancel_job(job_id)
        assert accepted is True, message
        assert daemon.wait_job(job_id) == "canceled"
    assert client.cancel_job(blocker, kill=True)[0] is True
    assert daemon.wait_job(blocker) == "canceled"
    (row,) = client.query_jobs([job_ids[0]], ["ops"])
    assert row[0][0]["result"] == nested(MAX_NESTING - 1), "stored whole"


def test_gnt_debug_test_jobqueue_notifications(daemon: Daemon) -> None:
    """Play Ganeti's test client: at each notification check the status, then confirm."""
    client = daemon.client()
    op = {
        "OP_ID": "OP_TEST_JQUEUE",
        "notify_waitlock": True,
        "notify_exec": True,
        "log_messages": ["hello"],
    }
    job_id = client.submit_job([op])
    seen: list[tuple[str, Any, str]] = []
    messages: list[str] = []
    prev_info: list[Any] | None = None
    prev_serial: int | None = None
    deadline = time.monotonic() + 60
    while prev_info is None or prev_info[0] not in FINAL:
        assert time.monotonic() < deadline, f"job {job_id} did not finish; saw {seen}"
        answer = client.wait_for_job_change(job_id, ["status"], prev_info, prev_serial, 10)
        if answer == "nochange":
            continue
        assert isinstance(answer, list)
        prev_info, entries = answer
        for serial, _, log_type, message in entries:
            prev_serial = serial
            if log_type != "jqueue-test":
                messages.append(message)
                continue
            path, test, argument = message
            seen.append((test, argument, prev_info[0]))
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as notified:
                notified.connect(path)
                notified.sendall(b"\0")
    assert prev_info[0] == "success"
    assert seen == [
        ("expandnames", None, "waiting"),
        ("exec", None, "running"),
        ("startmsg", 1, "running"),
        ("logmsg", 1, "running"),
    ]
    assert messages == ["TESTMSG=hello"]
