"""Tests for jobqueue.luxi.server: a fake queue and reader behind real Unix sockets.

The fake keeps job statuses in memory and, like the real queue, announces
each change to the jobs' watches from the changing thread, so
WaitForJobChange is woken as by the real queue.

This module holds the fake, the server fixtures and the raw socket helpers that
test_server_waits and test_server_connections import, and tests how requests
are handled: dispatch to the queue, encoded errors, malformed input and bad
arguments.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobqueue import constants, errors
from jobqueue.luxi import protocol
from jobqueue.luxi.client import Client
from jobqueue.luxi.methods import QueueApi
from jobqueue.luxi.server import LuxiServer

#: Bound on every wait that should succeed, so a bug fails instead of hanging.
WAIT = 5.0
OP = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
LOGGER = "test.luxi.server"


class FakeQueue:
    """Records each call as ``(name, *normalised args)`` and answers canned values.

    ``fail_with[name]`` makes that method raise; ``gate``, when set, holds
    ``query_config_values`` until it is set, to keep a request in flight.
    """

    def __init__(self) -> None:
        self._calls_changed = threading.Condition()
        self.calls: list[tuple[Any, ...]] = []
        self.jobs: dict[int, str] = {}
        self.watches: dict[int, list[FakeWatch]] = {}
        self.fail_with: dict[str, BaseException] = {}
        self.gate: threading.Event | None = None
        self.config_result: list[Any] = [False]
        self.finished: set[int] = set()  # jobs whose watches hold no state: read them
        self.callers: list[Any] = []  # the caller passed to each method that changes something
        self.outputs: dict[int, bytes] = {}  # each job's stdout

    def _record(self, name: str, *args: Any) -> None:
        with self._calls_changed:
            self.calls.append((name, *args))
            self._calls_changed.notify_all()
        if name in self.fail_with:
            raise self.fail_with[name]

    def calls_named(self, name: str) -> list[tuple[Any, ...]]:
        with self._calls_changed:
            return [call for call in self.calls if call[0] == name]

    def wait_calls(self, name: str, count: int) -> None:
        with self._calls_changed:
            seen = self._calls_changed.wait_for(
                lambda: sum(call[0] == name for call in self.calls) >= count, WAIT
            )
        assert seen, f"expected {count} calls of {name}, got {len(self.calls_named(name))}"

    def set_job(self, job_id: int, status: str) -> None:
        """Change a job and announce it, as the queue publishes a durable write."""
        with self._calls_changed:
            self.jobs[job_id] = status
            watches = list(self.watches.get(job_id, ()))
        for watch in watches:
            watch.on_change()

    def add_output(self, job_id: int, data: bytes) -> None:
        """Append to a job's stdout and announce it, as ``LiveJobs.output_grew`` does."""
        with self._calls_changed:
            self.outputs[job_id] = self.outputs.get(job_id, b"") + data
            watches = list(self.watches.get(job_id, ()))
        for watch in watches:
            watch.on_change()

    def watch_count(self) -> int:
        with self._calls_changed:
            return sum(len(watches) for watches in self.watches.values())

    # -- ReaderApi ----------------------------------------------------------------
    def watch_job(self, job_id: int, on_change: Callable[[], None]) -> FakeWatch:
        with self._calls_changed:
            watch = FakeWatch(self, job_id, on_change)
            self.watches.setdefault(job_id, []).append(watch)
        return watch

    def read_job(self, job_id: int) -> str | None:
        self._record("read_job", job_id)
        with self._calls_changed:
            return self.jobs.get(job_id)

    def job_change(
        self, job: str, fields: list[str], prev_job_info: Any, prev_log_serial: int | None
    ) -> list[Any] | None:
        self._record("job_change", job, fields, prev_job_info, prev_log_serial)
        info = [job]
        return None if info == prev_job_info else [info, []]

    def read_output(
        self, job_id: int, offsets: dict[str, int], max_bytes: int
    ) -> dict[str, Any] | None:
        self._record("read_output", job_id, offsets, max_bytes)
        with self._calls_changed:
            status = self.jobs.get(job_id)
            data = self.outputs.get(job_id, b"")
        if status is None:
            return None
        answer: dict[str, Any] = {"status": status, "finished": status == "success"}
        for name, offset in offsets.items():
            chunk = data[offset : offset + max_bytes] if name == "stdout" else b""
            encoded = base64.b64encode(chunk).decode()
            answer[name] = {"offset": offset, "data": encoded, "size": len(data)}
        return answer

    # -- QueueApi --------------------------------------------------------------
    def submit_job(self, ops: list[Any], *, drained_ok: bool = False, submitter: Any = None) -> int:
        self.callers.append(submitter)
        self._record("submit_job", ops, drained_ok)
        return 17

    def submit_many_jobs(
        self, jobs: list[Any], *, drained_ok: bool = False, submitter: Any = None
    ) -> list[list[Any]]:
        self.callers.append(submitter)
        self._record("submit_many_jobs", jobs, drained_ok)
        return [[True, 18], [False, "bad opcode"]]

    def cancel_job(self, job_id: int, kill: bool = False, *, caller: Any = None) -> list[Any]:
        self.callers.append(caller)
        self._record("cancel_job", job_id, kill)
        return [True, f"Job {job_id} canceled"]

    def change_job_priority(self, job_id: int, priority: int, *, caller: Any = None) -> list[Any]:
        self.callers.append(caller)
        self._record("change_job_priority", job_id, priority)
        return [True, f"Priority of job {job_id} changed to {priority}"]

    def archive_job(self, job_id: int, *, caller: Any = None) -> bool:
        self.callers.append(caller)
        self._record("archive_job", job_id)
        return True

    def auto_archive_jobs(self, age: float, timeout: float, *, caller: Any = None) -> list[int]:
        self.callers.append(caller)
        self._record("auto_archive_jobs", age, timeout)
        return [3, 0]

    def query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> list[list[Any]]:
        self._record("query_jobs", job_ids, fields)
        return [[job_id, "queued"] for job_id in job_ids or [1]]

    def query(
        self, what: str, fields: list[str], qfilter: Any, archived: bool = False
    ) -> dict[str, Any]:
        self._record("query", what, fields, qfilter, archived)
        return {"fields": [{"name": "id"}], "data": [[[0, 1]]]}

    def iter_query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> Iterator[list[Any]]:
        return iter(self.query_jobs(job_ids, fields))

    def iter_query(
        self, what: str, fields: list[str], qfilter: Any, archived: bool = False
    ) -> dict[str, Any]:
        answer = self.query(what, fields, qfilter, archived)
        return {**answer, "data": iter(answer["data"])}

    def query_fields(self, what: str, fields: list[str] | None) -> dict[str, Any]:
        self._record("query_fields", what, fields)
        return {"fields": [{"name": "id", "kind": "number"}]}

    def set_drain_flag(self, flag: bool, *, caller: Any = None) -> bool:
        self.callers.append(caller)
        self._record("set_drain_flag", flag)
        return True

    def query_config_values(self, fields: list[str]) -> list[Any]:
        self._record("query_config_values", fields)
        if self.gate is not None:
            assert self.gate.wait(WAIT), "gate never opened"
        return self.config_result


class FakeWatch:
    """A watch of ``FakeQueue``: ``latest`` is the job's current status (None if unknown)."""

    def __init__(self, queue: FakeQueue, job_id: int, on_change: Callable[[], None]) -> None:
        self.queue, self.job_id, self.on_change = queue, job_id, on_change

    @property
    def latest(self) -> str | None:
        with self.queue._calls_changed:
            if self.job_id in self.queue.finished:
                return None
            return self.queue.jobs.get(self.job_id)

    def close(self) -> None:
        with self.queue._calls_changed:
            self.queue.watches[self.job_id].remove(self)


_CONTRACT_CHECK: Callable[[], QueueApi] = FakeQueue  # the fake satisfies the Protocol


@dataclasses.dataclass
class Harness:
    server: LuxiServer
    queue: FakeQueue
    master: str
    query: str


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="jq", dir="/tmp")  # AF_UNIX paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_server(tmp_dir: str) -> Iterator[Callable[..., Harness]]:
    servers: list[LuxiServer] = []

    def make(**kwargs: Any) -> Harness:
        queue = FakeQueue()
        number = len(servers)
        master = os.path.join(tmp_dir, f"master{number}")
        query = os.path.join(tmp_dir, f"query{number}")
        kwargs.setdefault("logger", logging.getLogger(LOGGER))
        server = LuxiServer(queue, queue, master_path=master, query_path=query, **kwargs)
        servers.append(server)
        server.start()
        return Harness(server, queue, master, query)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def harness(make_server: Callable[..., Harness]) -> Harness:
    return make_server()


# -- raw socket helpers ----------------------------------------------------------
def connect(path: str, timeout: float = WAIT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_frames(sock: socket.socket, count: int) -> list[bytes]:
    """Read exactly ``count`` answers (the server never sends more than asked for)."""
    data = b""
    while data.count(constants.LUXI_EOM) < count or not data.endswith(constants.LUXI_EOM):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    frames = data.split(constants.LUXI_EOM)[:-1]
    assert len(frames) == count
    return frames


def recv_frame(sock: socket.socket) -> bytes:
    return recv_frames(sock, 1)[0]


def send_frame(sock: socket.socket, frame: bytes) -> tuple[bool, Any]:
    sock.sendall(frame + constants.LUXI_EOM)
    return protocol.parse_response(recv_frame(sock))


def call_raw(
    sock: socket.socket, method: str, args: list[Any], version: int | None = constants.LUXI_VERSION
) -> tuple[bool, Any]:
    sock.sendall(protocol.encode_request(method, args, version))
    return protocol.parse_response(recv_frame(sock))


def closed_by_server(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True once the server has closed ``sock`` (EOF or reset), False on timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_ok(sock: socket.socket) -> None:
    assert call_raw(sock, "QueryJobs", [[1], ["id"]]) == (True, [[1, "queued"]])


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


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
