"""Tests for jobqueue.luxi.server: a fake queue and reader behind real Unix sockets.

The fake keeps job statuses in memory and, like the real queue, announces
each change to the jobs' watches from the changing thread, so
WaitForJobChange is woken as by the real queue.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import json
import logging
import os
import resource
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobqueue import constants, errors
from jobqueue.luxi import access, protocol
from jobqueue.luxi import server as server_module
from jobqueue.luxi.client import Client
from jobqueue.luxi.methods import QueueApi, wfjc_timeout
from jobqueue.luxi.server import SHUTDOWN_GRACE, LuxiServer

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


@pytest.fixture
def many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2600
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


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


def test_requests_on_a_connection_are_handled_in_order(harness: Harness) -> None:
    harness.queue.gate = gate = threading.Event()
    with connect(harness.master) as sock:
        sock.sendall(
            protocol.encode_request("QueryConfigValues", [["drain_flag"]])
            + protocol.encode_request("ArchiveJob", [8])
        )
        harness.queue.wait_calls("query_config_values", 1)
        # The second request is not even read while the first is unanswered.
        with connect(harness.master) as other:
            assert_ok(other)
        assert harness.queue.calls_named("archive_job") == []
        gate.set()
        answers = [protocol.parse_response(frame) for frame in recv_frames(sock, 2)]
        assert answers == [(True, [False]), (True, True)]


def test_a_half_closed_client_still_gets_every_answer(harness: Harness) -> None:
    harness.queue.gate = gate = threading.Event()
    with connect(harness.master) as sock:
        sock.sendall(
            protocol.encode_request("QueryConfigValues", [["drain_flag"]])
            + protocol.encode_request("ArchiveJob", [8])
        )
        sock.shutdown(socket.SHUT_WR)
        harness.queue.wait_calls("query_config_values", 1)
        gate.set()
        answers = [protocol.parse_response(frame) for frame in recv_frames(sock, 2)]
        assert answers == [(True, [False]), (True, True)]
        assert closed_by_server(sock)


def test_a_pipelining_client_is_not_read_ahead_of_its_answers(harness: Harness) -> None:
    """Requests beyond the next one stay in the client's socket buffer, not in the daemon."""
    harness.queue.gate = gate = threading.Event()
    request = protocol.encode_request("QueryConfigValues", [["drain_flag"]])
    with connect(harness.master) as sock:
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.sendall(request * 200_000)  # ~12 MB: far more than the socket buffers hold
        gate.set()
        with connect(harness.master) as other:
            assert_ok(other)


# -- size and idle limits -------------------------------------------------------------
def test_oversized_message_gets_one_error_then_close(make_server: Callable[..., Harness]) -> None:
    harness = make_server(max_message_size=1024)
    with connect(harness.master) as sock:
        assert_ok(sock)  # a message within the limit is fine
        sock.sendall(b"x" * 2000)
        success, result = protocol.parse_response(recv_frame(sock))
        assert not success
        assert result == ["LuxiError", ["Message exceeds the maximum size of 1024 bytes"]]
        assert closed_by_server(sock)
    with connect(harness.master) as sock:
        sock.sendall(b'{"method": "QueryJobs", "args": [null, ["' + b"a" * 1100 + b'"]]}\x03')
        assert protocol.parse_response(recv_frame(sock))[1][0] == "LuxiError"
        assert closed_by_server(sock)


def test_half_a_message_then_silence_is_closed_while_others_are_served(
    make_server: Callable[..., Harness],
) -> None:
    harness = make_server(client_timeout=0.5)
    begin = time.monotonic()
    with connect(harness.master) as silent, connect(harness.master) as busy:
        silent.sendall(b'{"method": "QueryJo')
        for _ in range(3):
            assert_ok(busy)
        assert time.monotonic() - begin < 0.5
        assert closed_by_server(silent)
        assert 0.4 <= time.monotonic() - begin < WAIT


def test_idle_connection_is_closed_after_client_timeout(
    make_server: Callable[..., Harness],
) -> None:
    harness = make_server(client_timeout=0.5)
    with connect(harness.master) as never_spoke, connect(harness.query) as spoke_once:
        assert_ok(spoke_once)
        begin = time.monotonic()
        assert closed_by_server(never_spoke)
        assert closed_by_server(spoke_once)
        assert 0.3 <= time.monotonic() - begin < WAIT


def test_request_in_flight_longer_than_client_timeout_is_answered(
    make_server: Callable[..., Harness],
) -> None:
    harness = make_server(client_timeout=0.3)
    harness.queue.set_job(1, "running")
    harness.queue.gate = gate = threading.Event()
    with connect(harness.master) as waiting:
        begin = time.monotonic()
        assert call_raw(waiting, "WaitForJobChange", [1, ["status"], ["running"], None, 0.8]) == (
            True,
            constants.JOB_NOTCHANGED,
        )
        assert time.monotonic() - begin >= 0.7
    with connect(harness.master) as gated:
        gated.sendall(protocol.encode_request("QueryConfigValues", [["x"]]))
        harness.queue.wait_calls("query_config_values", 1)
        assert not closed_by_server(gated, timeout=0.6)  # in flight: never closed
        gate.set()
        assert protocol.parse_response(recv_frame(gated)) == (True, [False])


# -- the query socket -------------------------------------------------------------------
WRITE_CALLS: list[tuple[str, list[Any]]] = [
    ("SubmitJob", [[OP]]),
    ("SubmitJobToDrainedQueue", [[OP]]),
    ("SubmitManyJobs", [[[OP]]]),
    ("CancelJob", [1, False]),
    ("ChangeJobPriority", [1, 10]),
    ("ArchiveJob", [1]),
    ("AutoArchiveJobs", [60, 29]),
    ("SetDrainFlag", [True]),
]


def test_query_socket_refuses_writes_to_others_and_serves_reads(
    make_server: Callable[..., Harness],
) -> None:
    harness = make_server(allowed_uids=())  # not even root may change anything
    harness.queue.set_job(1, "success")
    with connect(harness.query) as sock:
        for method, args in WRITE_CALLS:
            success, result = call_raw(sock, method, args)
            assert not success
            assert result[0] == "PermissionError" and method in result[1][0], result
            assert_ok(sock)
        assert call_raw(sock, "Query", ["job", ["id"], None])[0]
        assert call_raw(sock, "QueryFields", ["job", None])[0]
        assert call_raw(sock, "QueryConfigValues", [["drain_flag"]]) == (True, [False])
        assert call_raw(sock, "WaitForJobChange", [1, ["status"], None, None, 1]) == (
            True,
            [["success"], []],
        )
    written = {name for name, *_ in harness.queue.calls} & {
        "submit_job",
        "submit_many_jobs",
        "cancel_job",
        "change_job_priority",
        "archive_job",
        "auto_archive_jobs",
        "set_drain_flag",
    }
    assert written == set()
    with Client(harness.query, timeout=WAIT) as client, pytest.raises(errors.AccessDenied):
        client.submit_job([OP])


def test_query_socket_accepts_writes_from_peers_the_master_socket_serves(
    harness: Harness,
) -> None:
    """Ganeti 2.11+ sends everything to the query socket: root (allowed) may change things."""
    with connect(harness.query) as sock:
        for method, args in WRITE_CALLS:
            success, result = call_raw(sock, method, args)
            assert success, (method, result)
    assert len(harness.queue.callers) == len(WRITE_CALLS)
    for caller in harness.queue.callers:  # each call says who sent it
        assert (caller.by, caller.uid, caller.gid, caller.pid) == (
            "client",
            os.geteuid(),
            os.getegid(),
            os.getpid(),
        )


# -- WaitForJobChange -------------------------------------------------------------------
def test_wfjc_returns_at_once_when_the_job_already_differs(harness: Harness) -> None:
    harness.queue.set_job(42, "running")
    with connect(harness.query) as sock:
        begin = time.monotonic()
        assert call_raw(sock, "WaitForJobChange", ["42", ["status"], ["queued"], 3, 30]) == (
            True,
            [["running"], []],
        )
        assert time.monotonic() - begin < 1
    # A live job is compared as published: nothing is read.
    assert harness.queue.calls == [("job_change", "running", ["status"], ["queued"], 3)]


def test_wfjc_blocks_until_the_job_changes(harness: Harness) -> None:
    queue = harness.queue
    queue.set_job(3, "queued")
    with connect(harness.master) as sock:
        sock.sendall(
            protocol.encode_request("WaitForJobChange", [3, ["status"], ["queued"], None, 30])
        )
        queue.wait_calls("job_change", 1)  # watching, compared, now waiting
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing changed, so no answer
        sock.settimeout(WAIT)
        queue.set_job(3, "running")
        assert protocol.parse_response(recv_frame(sock)) == (True, [["running"], []])
    assert queue.calls_named("read_job") == []


def test_wfjc_reads_a_job_the_queue_does_not_hold(make_server: Callable[..., Harness]) -> None:
    harness = make_server()
    harness.queue.jobs[8] = "success"
    harness.queue.finished.add(8)
    with connect(harness.query) as sock:
        assert call_raw(sock, "WaitForJobChange", [8, ["status"], None, None, 30]) == (
            True,
            [["success"], []],
        )
    assert harness.queue.calls_named("read_job") == [("read_job", 8)]


def test_wfjc_times_out_with_nochange(harness: Harness) -> None:
    harness.queue.set_job(3, "waiting")
    with connect(harness.master) as sock:
        begin = time.monotonic()
        assert call_raw(sock, "WaitForJobChange", [3, ["status"], ["waiting"], None, 0.3]) == (
            True,
            constants.JOB_NOTCHANGED,
        )
        assert 0.25 <= time.monotonic() - begin < WAIT
        # A negative timeout means: look once, do not wait.
        assert call_raw(sock, "WaitForJobChange", [3, ["status"], ["waiting"], None, -5]) == (
            True,
            constants.JOB_NOTCHANGED,
        )


def test_wfjc_timeout_bounds() -> None:
    assert wfjc_timeout(3600) == constants.WFJC_MAX_TIMEOUT == 60
    assert wfjc_timeout(89) == 60
    assert wfjc_timeout(20) == 20
    assert wfjc_timeout(-1) == 0


def test_wfjc_timeout_is_capped_at_sixty_seconds(make_server: Callable[..., Harness]) -> None:
    # The first reading fixes the deadline; every later one is 59.9 s on. A capped
    # deadline has 0.1 s left, an uncapped one (3600 s) would block the call.
    readings = iter([1000.0])
    harness = make_server(clock=lambda: next(readings, 1059.9))
    harness.queue.set_job(3, "queued")
    with connect(harness.master) as sock:
        begin = time.monotonic()
        assert call_raw(sock, "WaitForJobChange", [3, ["status"], ["queued"], None, 3600]) == (
            True,
            constants.JOB_NOTCHANGED,
        )
        assert time.monotonic() - begin < WAIT


def test_wfjc_unknown_job_is_job_lost(harness: Harness) -> None:
    with connect(harness.master) as sock:
        success, result = call_raw(sock, "WaitForJobChange", [99, ["status"], None, None, 10])
        assert not success and result[0] == "JobLost"
        assert_ok(sock)


def test_wfjc_stops_waiting_when_its_client_goes_away(harness: Harness) -> None:
    def subscriptions() -> int:
        server = harness.server
        assert server._loop is not None
        count = asyncio.run_coroutine_threadsafe(_call(server.waiter_count), server._loop)
        return count.result(WAIT)

    harness.queue.set_job(3, "queued")
    with connect(harness.master) as sock:
        sock.sendall(
            protocol.encode_request("WaitForJobChange", [3, ["status"], ["queued"], None, 60])
        )
        harness.queue.wait_calls("job_change", 1)
        assert subscriptions() == 1 and harness.queue.watch_count() == 1
    wait_until(lambda: subscriptions() == 0, "the waiter to stop")
    assert harness.queue.watch_count() == 0


async def _call(function: Callable[[], Any]) -> Any:
    return function()


def test_wfjc_many_waiters_cost_no_threads_and_all_wake(harness: Harness) -> None:
    queue, count = harness.queue, 200
    for job_id in range(1, count + 1):
        queue.set_job(job_id, "queued")
    threads_before = threading.active_count()
    socks = [connect(harness.query) for _ in range(count)]
    try:
        for job_id, sock in enumerate(socks, start=1):
            sock.sendall(
                protocol.encode_request(
                    "WaitForJobChange", [job_id, ["status"], ["queued"], None, 30]
                )
            )
        queue.wait_calls("job_change", count)
        assert threading.active_count() <= threads_before + 16
        begin = time.monotonic()
        with connect(harness.master) as sock:
            assert_ok(sock)
        assert time.monotonic() - begin < 1
        for job_id in range(1, count + 1):
            queue.set_job(job_id, "success")
        for job_id, sock in enumerate(socks, start=1):
            assert protocol.parse_response(recv_frame(sock)) == (True, [["success"], []]), job_id
    finally:
        for sock in socks:
            sock.close()


def test_a_thousand_connections_at_once(
    make_server: Callable[..., Harness], many_fds: None
) -> None:
    harness = make_server(max_connections=1001)
    socks: list[socket.socket] = []
    try:
        for _ in range(1000):
            socks.append(connect(harness.master))
        for number, sock in enumerate(socks):
            sock.sendall(protocol.encode_request("QueryJobs", [[number], ["id"]]))
        begin = time.monotonic()
        with Client(harness.master, timeout=WAIT) as client:
            assert client.query_config_values(["drain_flag"]) == [False]
        # Served in bounded time, not after the thousand (generous: the machine is shared).
        assert time.monotonic() - begin < 5
        for number, sock in enumerate(socks):
            assert protocol.parse_response(recv_frame(sock)) == (True, [[number, "queued"]])
    finally:
        for sock in socks:
            sock.close()


# -- sockets and access ------------------------------------------------------------------
def test_socket_files_are_renamed_into_place_and_removed_on_stop(
    make_server: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def recording_rename(src: str, dst: str) -> None:
        renames.append((src, dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", recording_rename)
    harness = make_server(socket_group=os.getgid())
    for path, mode in ((harness.master, 0o660), (harness.query, 0o660)):
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == mode
        (temp,) = [src for src, dst in renames if dst == path]
        assert os.path.dirname(temp) == os.path.dirname(path) and temp != path
        assert not os.path.exists(temp)
    assert os.stat(harness.master).st_gid == os.getgid()
    assert os.stat(harness.query).st_gid == os.getgid()
    harness.server.stop()
    assert not os.path.exists(harness.master) and not os.path.exists(harness.query)
    assert os.listdir(os.path.dirname(harness.master)) == []
    harness.server.stop()  # idempotent


def test_stale_socket_file_is_replaced(tmp_dir: str, make_server: Callable[..., Harness]) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(tmp_dir, "master0"))
    stale.close()  # the file stays, nobody listens
    harness = make_server()
    with connect(harness.master) as sock:
        assert_ok(sock)


def test_start_failure_leaves_nothing_behind(tmp_dir: str) -> None:
    threads_before = threading.active_count()
    bad_master = LuxiServer(
        FakeQueue(),
        FakeQueue(),
        master_path=os.path.join(tmp_dir, "missing", "master"),
        query_path=os.path.join(tmp_dir, "query"),
    )
    with pytest.raises(errors.LuxiError, match="Cannot listen"):
        bad_master.start()
    assert sorted(os.listdir(tmp_dir)) == []
    assert threading.active_count() == threads_before
    bad_master.stop()  # harmless after a failed start


def test_same_uid_is_allowed_on_the_master_socket(harness: Harness) -> None:
    with connect(harness.master) as sock:
        creds = access.peer_credentials(sock)
        assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.geteuid(), os.getegid())
        assert_ok(sock)


def test_peer_outside_uids_and_group_is_denied(make_server: Callable[..., Harness]) -> None:
    other_uid = next(uid for uid in range(60000, 70000) if uid != os.geteuid())
    harness = make_server(allowed_uids={other_uid})
    with connect(harness.master) as sock:
        success, result = call_raw(sock, "QueryJobs", [None, ["id"]])
        assert not success and result[0] == "PermissionError"
        assert closed_by_server(sock)
    with connect(harness.query) as sock:  # the query socket allows anyone
        assert_ok(sock)
    assert harness.queue.calls_named("query_jobs") == [("query_jobs", [1], ["id"])]


def test_peer_in_the_socket_group_is_allowed(make_server: Callable[..., Harness]) -> None:
    harness = make_server(allowed_uids=(), socket_group=os.getegid())
    with connect(harness.master) as sock:
        assert_ok(sock)


def test_access_rule_uses_uids_primary_and_supplementary_groups() -> None:
    groups = {100: frozenset({27, 50})}
    rule = access.MasterAccess(
        allowed_uids={0, 1000}, group=50, groups_of=lambda pid: groups.get(pid, frozenset())
    )
    assert rule.allows(access.PeerCredentials(pid=1, uid=1000, gid=1000))
    assert rule.allows(access.PeerCredentials(pid=1, uid=2000, gid=50))
    assert rule.allows(access.PeerCredentials(pid=100, uid=2000, gid=2000))
    assert not rule.allows(access.PeerCredentials(pid=101, uid=2000, gid=2000))
    no_group = access.MasterAccess(allowed_uids={0}, group=None, groups_of=lambda pid: groups[100])
    assert not no_group.allows(access.PeerCredentials(pid=100, uid=2000, gid=50))


def test_groups_reported_with_the_credentials_are_used_over_proc() -> None:
    def must_not_read(pid: int) -> frozenset[int]:
        raise AssertionError("the kernel reported the groups")

    rule = access.MasterAccess(allowed_uids={0}, group=50, groups_of=must_not_read)
    assert rule.allows(access.PeerCredentials(pid=7, uid=2000, gid=2000, groups=frozenset({50})))
    assert not rule.allows(access.PeerCredentials(pid=7, uid=2000, gid=2000, groups=frozenset()))


def test_peer_credentials_carry_the_supplementary_groups() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        peer = access.peer_credentials(left)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert peer.groups == frozenset(os.getgroups())


def test_supplementary_groups_from_proc(tmp_dir: str) -> None:
    os.makedirs(os.path.join(tmp_dir, "123"))
    with open(os.path.join(tmp_dir, "123", "status"), "w", encoding="ascii") as handle:
        handle.write("Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nVmPeak:\t1 kB\n")
    assert access.supplementary_groups(123, proc_dir=tmp_dir) == {4, 24, 27}
    assert access.supplementary_groups(124, proc_dir=tmp_dir) == frozenset()
    assert access.supplementary_groups(0) == frozenset()
    assert access.supplementary_groups(os.getpid()) == set(os.getgroups())


def test_a_failing_connection_does_not_affect_others(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = access.peer_credentials
    calls = iter(range(1_000_000))

    def first_one_fails(sock: socket.socket) -> access.PeerCredentials:
        if next(calls) == 0:
            raise RuntimeError("peer check exploded")
        return real(sock)

    monkeypatch.setattr(access, "peer_credentials", first_one_fails)
    with connect(harness.master) as broken:
        assert closed_by_server(broken)
    with connect(harness.master) as sock:
        assert_ok(sock)
    failures = [r for r in caplog.records if r.getMessage().endswith("failed")]
    assert failures and failures[0].exc_info is not None


# -- stopping -----------------------------------------------------------------------------
def test_stop_lets_the_request_in_flight_finish(harness: Harness) -> None:
    queue = harness.queue
    queue.gate = gate = threading.Event()
    queue.set_job(1, "queued")
    with (
        connect(harness.master) as in_flight,
        connect(harness.query) as waiting,
        connect(harness.master) as idle,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        waiting.sendall(
            protocol.encode_request("WaitForJobChange", [1, ["status"], ["queued"], None, 30])
        )
        queue.wait_calls("job_change", 1)
        in_flight.sendall(protocol.encode_request("QueryConfigValues", [["drain_flag"]]))
        queue.wait_calls("query_config_values", 1)
        begin = time.monotonic()
        stopping = pool.submit(harness.server.stop)
        wait_until(
            lambda: not os.path.exists(harness.master) and not os.path.exists(harness.query),
            "both socket files are removed",
        )
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            connect(harness.master)
        assert closed_by_server(idle)
        # A waiting WaitForJobChange is answered at once, not after its 30 s.
        assert protocol.parse_response(recv_frame(waiting)) == (True, constants.JOB_NOTCHANGED)
        gate.set()
        assert protocol.parse_response(recv_frame(in_flight)) == (True, [False])
        assert closed_by_server(in_flight)
        stopping.result(timeout=WAIT)
        assert time.monotonic() - begin < SHUTDOWN_GRACE


def test_stop_before_start_and_twice(tmp_dir: str) -> None:
    server = LuxiServer(
        FakeQueue(),
        FakeQueue(),
        master_path=os.path.join(tmp_dir, "m"),
        query_path=os.path.join(tmp_dir, "q"),
    )
    server.stop()
    server.start()
    with pytest.raises(errors.ProgrammerError):
        server.start()
    server.stop()
    server.stop()
    assert not os.path.exists(os.path.join(tmp_dir, "m"))


def test_stop_is_bounded_when_a_handler_hangs(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "SHUTDOWN_GRACE", 0.3)
    harness.queue.gate = gate = threading.Event()
    try:
        with connect(harness.master) as stuck:
            stuck.sendall(protocol.encode_request("QueryConfigValues", [["drain_flag"]]))
            harness.queue.wait_calls("query_config_values", 1)
            begin = time.monotonic()
            harness.server.stop()
            assert 0.25 <= time.monotonic() - begin < WAIT
            assert closed_by_server(stuck)
    finally:
        gate.set()


# -- resources: handler pools, output budget, connection limits -------------------------
def test_submissions_do_not_wait_behind_readers(make_server: Callable[..., Harness]) -> None:
    """Every reader thread busy: changes have their own pool and are answered at once."""
    harness = make_server(reader_threads=1)
    harness.queue.gate = gate = threading.Event()
    with connect(harness.master) as reader, connect(harness.master) as second_reader:
        reader.sendall(protocol.encode_request("QueryConfigValues", [["x"]]))
        harness.queue.wait_calls("query_config_values", 1)
        second_reader.sendall(protocol.encode_request("QueryJobs", [[5], ["id"]]))
        with connect(harness.master) as submitter:
            assert call_raw(submitter, "SubmitJob", [[OP]]) == (True, 17)
        assert harness.queue.calls_named("query_jobs") == []  # still waiting for the reader
        gate.set()
        assert protocol.parse_response(recv_frame(reader)) == (True, [False])
        assert protocol.parse_response(recv_frame(second_reader)) == (True, [[5, "queued"]])


def test_reads_wait_while_unread_answers_fill_the_output_budget(
    make_server: Callable[..., Harness],
) -> None:
    harness = make_server(output_budget=100_000)
    harness.queue.config_result = ["x" * 1_000_000]  # one answer spends the whole budget
    with connect(harness.master) as hog, connect(harness.master) as other:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.sendall(protocol.encode_request("QueryConfigValues", [["x"]]))
        budget = harness.server._budget
        wait_until(lambda: budget.held >= budget.limit, "the hog's answer to fill the budget")
        other.sendall(protocol.encode_request("QueryJobs", [[5], ["id"]]))
        with connect(harness.master) as submitter:  # changes never wait for the budget
            assert call_raw(submitter, "SubmitJob", [[OP]]) == (True, 17)
        other.settimeout(0.5)
        with pytest.raises(TimeoutError):
            other.recv(1)
        assert harness.queue.calls_named("query_jobs") == []
        # The hog takes its answer: the waiting read is started and answered.
        assert protocol.parse_response(recv_frame(hog)) == (True, ["x" * 1_000_000])
        other.settimeout(WAIT)
        assert protocol.parse_response(recv_frame(other)) == (True, [[5, "queued"]])


def test_a_client_that_does_not_take_its_answer_is_closed_after_the_send_timeout(
    make_server: Callable[..., Harness],
) -> None:
    harness = make_server(send_timeout=0.5, client_timeout=60)
    harness.queue.config_result = ["x" * 5_000_000]
    with connect(harness.master) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(protocol.encode_request("QueryConfigValues", [["x"]]))
        harness.queue.wait_calls("query_config_values", 1)
        sock.sendall(protocol.encode_request("QueryConfigValues", [["x"]]) * 100)
        wait_until(lambda: not harness.server._connections, "the server to drop the client")
    assert len(harness.queue.calls_named("query_config_values")) == 1  # nothing more was read


def test_connections_past_the_limit_are_refused_at_once(
    make_server: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    harness = make_server(max_connections=3)
    caplog.set_level(logging.WARNING, LOGGER)
    kept = [connect(harness.query) for _ in range(3)]
    try:
        for sock in kept:
            assert_ok(sock)
        for _ in range(20):
            with connect(harness.query) as refused:
                sock_answer = protocol.parse_response(recv_frame(refused))
                assert sock_answer == (
                    False,
                    [
                        "LuxiError",
                        ["Too many connections to the query socket (3); try again later"],
                    ],
                )
                assert closed_by_server(refused)
        with connect(harness.master) as master:  # each socket has its own limit
            assert_ok(master)
    finally:
        for sock in kept:
            sock.close()
    refusals = [r for r in caplog.records if "Refusing a connection" in r.getMessage()]
    assert len(refusals) == 1  # at a bounded rate
    wait_until(lambda: len(harness.server._connections) == 0, "the connections to close")
    with connect(harness.query) as again:
        assert_ok(again)


def test_rate_limited_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = server_module.RateLimitedLog(logging.getLogger(LOGGER), 10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, LOGGER)
    for _ in range(5):
        log.warning("a", "event %s", "A")
    log.warning("b", "event B")
    now[0] += 10
    log.warning("a", "event %s", "A")
    assert [r.getMessage() for r in caplog.records] == [
        "event A",
        "event B",
        "event A (4 more like this not logged)",
    ]


# -- ReadJobOutput --------------------------------------------------------------------
def read_output(sock: socket.socket, *args: Any) -> Any:
    success, result = call_raw(sock, "ReadJobOutput", list(args))
    assert success, result
    return result


def test_output_is_answered_at_once_when_there_is_some(harness: Harness) -> None:
    harness.queue.set_job(3, "running")
    harness.queue.add_output(3, b"hello")
    with connect(harness.query) as sock:
        begin = time.monotonic()
        answer = read_output(sock, 3, {"stdout": 1}, 3, 30)
        assert time.monotonic() - begin < 1
    assert answer["stdout"] == {"offset": 1, "data": base64.b64encode(b"ell").decode(), "size": 5}


def test_output_waits_for_more_output(harness: Harness) -> None:
    queue = harness.queue
    queue.set_job(3, "running")
    queue.add_output(3, b"seen")
    with connect(harness.master) as sock:
        sock.sendall(protocol.encode_request("ReadJobOutput", [3, {"stdout": 4}, 100, 30]))
        queue.wait_calls("read_output", 1)
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing new: no answer yet
        sock.settimeout(WAIT)
        queue.add_output(3, b" more")
        success, answer = protocol.parse_response(recv_frame(sock))
    assert success and base64.b64decode(answer["stdout"]["data"]) == b" more"


def test_output_of_a_job_that_ends_is_answered(harness: Harness) -> None:
    queue = harness.queue
    queue.set_job(3, "running")
    with connect(harness.master) as sock:
        sock.sendall(protocol.encode_request("ReadJobOutput", [3, {"stdout": 0}, 100, 30]))
        queue.wait_calls("read_output", 1)
        queue.set_job(3, "success")
        success, answer = protocol.parse_response(recv_frame(sock))
    assert success and answer["finished"] and answer["stdout"]["data"] == ""


def test_output_without_a_timeout_or_after_it(harness: Harness) -> None:
    harness.queue.set_job(3, "running")
    with connect(harness.master) as sock:
        assert read_output(sock, 3, {"stdout": 0}, 100)["stdout"]["data"] == ""
        begin = time.monotonic()
        assert read_output(sock, 3, {"stdout": 0}, 100, 0.3)["stdout"]["data"] == ""
        assert 0.25 <= time.monotonic() - begin < WAIT


def test_output_answers_are_bounded(harness: Harness) -> None:
    harness.queue.set_job(3, "success")
    with connect(harness.master) as sock:
        read_output(sock, 3, {"stdout": 0, "stderr": 0}, 10**9)
    (call,) = harness.queue.calls_named("read_output")
    assert call == ("read_output", 3, {"stdout": 0, "stderr": 0}, constants.OUTPUT_READ_MAX)


def test_output_answers_fit_the_largest_answer(make_server: Callable[..., Harness]) -> None:
    harness = make_server(max_answer_size=10_000)
    harness.queue.set_job(3, "success")
    harness.queue.add_output(3, b"x" * 20_000)
    with connect(harness.master) as sock:
        answer = read_output(sock, 3, {"stdout": 0, "stderr": 0}, 10**9)
    assert 0 < len(base64.b64decode(answer["stdout"]["data"])) <= 10_000 * 3 // 8


def test_output_of_an_unknown_job_is_job_lost(harness: Harness) -> None:
    with connect(harness.query) as sock:
        success, result = call_raw(sock, "ReadJobOutput", [99, {"stdout": 0}, 10, 10])
        assert not success and result[0] == "JobLost"
