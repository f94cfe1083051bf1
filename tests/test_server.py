"""Tests for jobqueue.luxi.server: a fake queue and reader behind real Unix sockets
(tests/server_harness.py).

Tests how requests are handled: dispatch to the queue, encoded errors, malformed
input and bad arguments.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import pytest

from jobqueue import constants, errors
from jobqueue.luxi import protocol
from jobqueue.luxi.client import Client
from tests.server_harness import (
    LOGGER,
    OP,
    WAIT,
    Harness,
    assert_ok,
    call_raw,
    connect,
    recv_frame,
)
from tests.server_harness import harness as harness  # the fixture
from tests.server_harness import make_server as make_server  # the fixture
from tests.server_harness import tmp_dir as tmp_dir  # the fixture


# -- raw socket helpers ----------------------------------------------------------
def send_frame(sock: socket.socket, frame: bytes) -> tuple[bool, Any]:
    sock.sendall(frame + constants.LUXI_EOM)
    return protocol.parse_response(recv_frame(sock))


# -- dispatch ----------------------------------------------------------------------
DISPATCH: list[tuple[str, list[Any], tuple[Any, ...], Any]] = [
    ("SubmitJob", [[OP]], ("submit_job", [OP], False), 17),
    ("SubmitJobToDrainedQueue", [[OP]], ("submit_job", [OP], True), 17),
    (
        "SubmitManyJobs",
        [[[OP], [OP, OP]]],
        ("submit_many_jobs", [[OP], [OP, OP]], False),
        [[True, 18], [False, "bad opcode"]],
    ),
    ("CancelJob", [3], ("cancel_job", 3, False), [True, "Job 3 canceled"]),
    ("CancelJob", ["3", True], ("cancel_job", 3, True), [True, "Job 3 canceled"]),
    (
        "ChangeJobPriority",
        ["4", -10],
        ("change_job_priority", 4, -10),
        [True, "Priority of job 4 changed to -10"],
    ),
    ("ArchiveJob", ["42"], ("archive_job", 42), True),
    ("AutoArchiveJobs", [3600, 89], ("auto_archive_jobs", 3600.0, 89.0), [3, 0]),
    ("AutoArchiveJobs", [-1, 2.5], ("auto_archive_jobs", -1.0, 2.5), [3, 0]),
    (
        "QueryJobs",
        [None, ["id", "status"]],
        ("query_jobs", None, ["id", "status"]),
        [[1, "queued"]],
    ),
    (
        "QueryJobs",
        [["42", 7], ["status"]],
        ("query_jobs", [42, 7], ["status"]),
        [[42, "queued"], [7, "queued"]],
    ),
    (
        "Query",
        ["job", ["id"], None],
        ("query", "job", ["id"], None, False),
        {"fields": [{"name": "id"}], "data": [[[0, 1]]]},
    ),
    (
        "Query",
        ["job", ["id"], ["=", "id", 1], True],
        ("query", "job", ["id"], ["=", "id", 1], True),
        {"fields": [{"name": "id"}], "data": [[[0, 1]]]},
    ),
    (
        "QueryFields",
        ["job", None],
        ("query_fields", "job", None),
        {"fields": [{"name": "id", "kind": "number"}]},
    ),
    (
        "QueryFields",
        ["job", ["id"]],
        ("query_fields", "job", ["id"]),
        {"fields": [{"name": "id", "kind": "number"}]},
    ),
    ("SetDrainFlag", [True], ("set_drain_flag", True), True),
    ("QueryConfigValues", [["drain_flag"]], ("query_config_values", ["drain_flag"]), [False]),
]


@pytest.mark.parametrize(("method", "args", "expected_call", "result"), DISPATCH)
def test_method_dispatches_with_converted_args(
    harness: Harness, method: str, args: list[Any], expected_call: tuple[Any, ...], result: Any
) -> None:
    with connect(harness.master) as sock:
        assert call_raw(sock, method, args) == (True, result)
    assert harness.queue.calls == [expected_call]
    # Job ids given as strings arrive as ints.
    for got, want in zip(harness.queue.calls[0], expected_call, strict=True):
        assert type(got) is type(want)


def test_client_calls_every_method(harness: Harness) -> None:
    harness.queue.set_job(5, "success")
    with Client(harness.master, timeout=WAIT) as client:
        assert client.submit_job([OP]) == 17
        assert client.submit_job_to_drained_queue([OP]) == 17
        assert client.submit_many_jobs([[OP]]) == [[True, 18], [False, "bad opcode"]]
        assert client.wait_for_job_change(5, ["status"], None, None, 10) == [["success"], []]
        assert client.cancel_job(5, kill=True) == [True, "Job 5 canceled"]
        assert client.change_job_priority(5, 10)[0] is True
        assert client.archive_job(5) is True
        assert client.auto_archive_jobs(60, 29) == [3, 0]
        assert client.query_jobs([5], ["status"]) == [[5, "queued"]]
        assert client.query("job", ["id"])["data"] == [[[0, 1]]]
        assert client.query_fields("job")["fields"][0]["name"] == "id"
        assert client.set_drain_flag(False) is True
        assert client.query_config_values(["drain_flag"]) == [False]
        assert client.wait_for_job(5) == "success"
        harness.queue.add_output(5, b"out")
        answer = client.read_job_output(5, {"stdout": 0, "stderr": 0}, 10)
        assert (answer["stdout"]["data"], answer["stderr"]["data"]) == (b"out", b"")
    assert [call[0] for call in harness.queue.calls].count("job_change") == 2


def test_responses_have_no_version_and_any_request_version_is_accepted(harness: Harness) -> None:
    with connect(harness.master) as sock:
        for version in (None, constants.LUXI_VERSION, 3020000, 1):
            sock.sendall(protocol.encode_request("QueryConfigValues", [["drain_flag"]], version))
            answer = json.loads(recv_frame(sock))
            assert answer == {"success": True, "result": [False]}


def test_queue_errors_are_encoded(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    queue = harness.queue
    queue.fail_with["submit_job"] = errors.JobQueueDrainError(constants.MSG_DRAINED)
    queue.fail_with["cancel_job"] = errors.OpPrereqError("no such job", errors.ECODE_NOENT)
    queue.fail_with["archive_job"] = RuntimeError("disk on fire")
    with connect(harness.master) as sock:
        assert call_raw(sock, "SubmitJob", [[OP]]) == (
            False,
            ["JobQueueDrainError", [constants.MSG_DRAINED]],
        )
        assert call_raw(sock, "CancelJob", [1]) == (
            False,
            ["OpPrereqError", ["no such job", "unknown_entity"]],
        )
        assert call_raw(sock, "ArchiveJob", [1]) == (
            False,
            ["GenericError", ["RuntimeError: disk on fire"]],
        )
        assert_ok(sock)
    unexpected = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(unexpected) == 1
    assert unexpected[0].levelno == logging.ERROR and unexpected[0].exc_info is not None


def test_unserialisable_result_is_an_error_and_the_connection_survives(harness: Harness) -> None:
    harness.queue.config_result = [object()]
    with connect(harness.master) as sock:
        success, result = call_raw(sock, "QueryConfigValues", [["x"]])
        assert not success and result[0] == "LuxiError"
        assert_ok(sock)


# -- malformed input -----------------------------------------------------------------
MALFORMED = [
    b"not json",
    b"",
    b"  \n",
    b"[1, 2]",
    b'"QueryJobs"',
    b'{"args": []}',
    b'{"method": "QueryJobs"}',
    b'{"method": 5, "args": []}',
    b'{"method": "QueryJobs", "args": {"0": null}}',
    b'{"method": "QueryJobs", "args": [null, ["id"]], "version": "2.6"}',
    b'{"method": "QueryJobs", "args": [NaN, ["id"]]}',
    b"\xff\xfe{}",
    b"[" * 50_000,
]


def test_malformed_requests_get_luxi_errors_on_a_usable_connection(harness: Harness) -> None:
    with connect(harness.master) as sock:
        for frame in MALFORMED:
            success, result = send_frame(sock, frame)
            assert not success, frame[:40]
            assert result[0] == "LuxiError", (frame[:40], result)
            assert_ok(sock)
    assert {call[0] for call in harness.queue.calls} == {"query_jobs"}


def test_unknown_method(harness: Harness) -> None:
    with connect(harness.master) as sock:
        assert call_raw(sock, "QueryInstances", [[], [], False]) == (
            False,
            ["LuxiError", ["Unknown method 'QueryInstances'"]],
        )
        success, result = call_raw(sock, "x" * 100_000, [])
        assert not success and len(result[1][0]) < 200
        assert_ok(sock)


BAD_ARGS: list[tuple[str, list[Any], str]] = [
    ("SubmitJob", [], "SubmitJob: expected 1 to 2 arguments, got 0"),
    ("SubmitJob", [{"OP_ID": "x"}], "SubmitJob: argument 1 (ops) must be a list"),
    ("SubmitJobToDrainedQueue", [[OP], 1], "expected 1 arguments, got 2"),
    ("SubmitManyJobs", ["x"], "SubmitManyJobs: argument 1 (jobs) must be a list"),
    ("CancelJob", [], "CancelJob: expected 1 to 2 arguments, got 0"),
    ("CancelJob", [1, False, 3], "CancelJob: expected 1 to 2 arguments, got 3"),
    ("CancelJob", [True], "CancelJob: argument 1 (job_id) must be a job id"),
    ("CancelJob", [-1], "CancelJob: argument 1 (job_id) must be a job id"),
    ("CancelJob", ["4x"], "CancelJob: argument 1 (job_id) must be a job id"),
    ("CancelJob", ["-4"], "CancelJob: argument 1 (job_id) must be a job id"),
    ("CancelJob", [4.0], "CancelJob: argument 1 (job_id) must be a job id"),
    ("CancelJob", ["9" * 5000], "CancelJob: argument 1 (job_id) must be a job id"),
    ("CancelJob", [1, 1], "CancelJob: argument 2 (kill) must be a boolean"),
    ("ChangeJobPriority", [1, True], "ChangeJobPriority: argument 2 (priority) must be an integer"),
    ("ChangeJobPriority", [1, "high"], "argument 2 (priority) must be an integer"),
    ("ArchiveJob", [None], "ArchiveJob: argument 1 (job_id) must be a job id"),
    ("AutoArchiveJobs", ["1h", 10], "AutoArchiveJobs: argument 1 (age) must be a number"),
    ("AutoArchiveJobs", [1, False], "AutoArchiveJobs: argument 2 (timeout) must be a number"),
    ("QueryJobs", ["1", ["id"]], "QueryJobs: argument 1 (job_ids) must be a list of job ids"),
    ("QueryJobs", [["x"], ["id"]], "QueryJobs: argument 1 (job_ids) must be a list of job ids"),
    ("QueryJobs", [None, "id"], "QueryJobs: argument 2 (fields) must be a list of strings"),
    ("QueryJobs", [None, [1]], "QueryJobs: argument 2 (fields) must be a list of strings"),
    ("Query", [1, ["id"], None], "Query: argument 1 (what) must be a string"),
    ("Query", ["job", ["id"], None, "yes"], "Query: argument 4 (archived) must be a boolean"),
    ("Query", ["job", ["id"]], "Query: expected 3 to 4 arguments, got 2"),
    ("QueryFields", ["job", "id"], "QueryFields: argument 2 (fields) must be a list of strings"),
    ("SetDrainFlag", [1], "SetDrainFlag: argument 1 (flag) must be a boolean"),
    ("QueryConfigValues", [None], "QueryConfigValues: argument 1 (fields) must be a list"),
    ("WaitForJobChange", [1, ["status"], None, None], "expected 5 arguments, got 4"),
    ("WaitForJobChange", [1, ["status"], "x", None, 1], "argument 3 (prev_job_info) must be"),
    ("WaitForJobChange", [1, ["status"], None, 1.5, 1], "argument 4 (prev_log_serial) must be"),
    ("WaitForJobChange", [1, ["status"], None, None, "1"], "argument 5 (timeout) must be a num"),
    ("WaitForJobChange", [1.5, ["status"], None, None, 1], "argument 1 (job_id) must be a job"),
    ("ReadJobOutput", [1, {"stdout": 0}], "ReadJobOutput: expected 3 to 4 arguments, got 2"),
    ("ReadJobOutput", [1, {}, 10], "argument 2 (offsets) must be an object of offsets"),
    ("ReadJobOutput", [1, {"stdin": 0}, 10], "argument 2 (offsets) must be an object"),
    ("ReadJobOutput", [1, {"stdout": 0.5}, 10], "argument 2 (offsets) must be an object"),
    ("ReadJobOutput", [1, {"stdout": 0}, -1], "argument 3 (max_bytes) must be a non-negative"),
    ("ReadJobOutput", [1, {"stdout": 0}, 1, "x"], "argument 4 (timeout) must be a number"),
]


def test_wrong_argument_counts_and_types(harness: Harness) -> None:
    with connect(harness.master) as sock:
        for method, args, message in BAD_ARGS:
            success, result = call_raw(sock, method, args)
            assert not success, (method, args)
            assert result[0] == "LuxiError" and message in result[1][0], (method, args, result)
        assert_ok(sock)
    assert {call[0] for call in harness.queue.calls} == {"query_jobs"}
