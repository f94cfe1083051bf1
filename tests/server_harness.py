"""A fake queue and reader behind a real LUXI server on Unix sockets, for the tests of
``jobqueue.luxi.server`` (``test_server``, ``test_server_waits``,
``test_server_connections``): ``FakeQueue`` keeps job statuses in memory and, like
the real queue, announces each change to the jobs' watches from the changing thread,
so WaitForJobChange is woken as by the real queue; the server fixtures
(``tmp_dir``, ``make_server``, ``harness``) and the raw socket helpers.
"""

from __future__ import annotations

import base64
import dataclasses
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
    def submit_each(self, submissions: list[Any]) -> list[Any]:
        """Each caller's job through ``submit_job``; what it raises is that caller's answer."""
        results: list[Any] = []
        for item in submissions:
            try:
                results.append(
                    self.submit_job(item.ops, drained_ok=item.drained_ok, submitter=item.submitter)
                )
            except errors.GenericError as err:
                results.append(err)
        return results

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
