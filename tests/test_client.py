"""Tests for jobqueue.luxi.client against scripted servers and fake transports."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobqueue import constants, errors
from jobqueue.luxi import client as client_module
from jobqueue.luxi import protocol
from jobqueue.luxi.client import Client, UnixTransport
from jobqueue.paths import StatePaths

#: Script step: close the connection instead of answering.
CLOSE = None
#: Bound on every wait in these tests, so a bug fails instead of hanging.
WAIT = 5.0

Step = bytes | threading.Event | None


def ok(result: Any) -> bytes:
    return protocol.encode_response(True, result)


def fail(exc: errors.GenericError) -> bytes:
    return protocol.encode_response(False, errors.encode_error(exc))


class ScriptedServer:
    """Accepts one connection per script entry and plays its steps in order.

    Each step first reads one request frame, then sends the bytes given,
    closes the connection (``CLOSE``) or waits for an Event and then closes.
    """

    def __init__(self, path: str, connections: list[list[Step]]) -> None:
        self.path = path
        self.frames: list[bytes] = []
        self.error: BaseException | None = None
        self._connections = connections
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(4)
        self._listener.settimeout(WAIT)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[protocol.Request]:
        return [protocol.parse_request(frame) for frame in self.frames]

    def _serve(self) -> None:
        try:
            for steps in self._connections:
                conn, _ = self._listener.accept()
                with conn:
                    conn.settimeout(WAIT)
                    self._play(conn, steps)
        except BaseException as err:
            self.error = err
        finally:
            self._listener.close()

    def _play(self, conn: socket.socket, steps: list[Step]) -> None:
        buffer = protocol.FrameBuffer(1 << 20)
        frames: list[bytes] = []
        for step in steps:
            while not frames:
                data = conn.recv(4096)
                assert data, "client closed the connection early"
                frames.extend(buffer.feed(data))
            self.frames.append(frames.pop(0))
            if isinstance(step, bytes):
                conn.sendall(step)
            elif isinstance(step, threading.Event):
                assert step.wait(WAIT)
                return
            else:
                return

    def finish(self) -> None:
        """Wait for the script to end; re-raise what went wrong in the thread."""
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "scripted server did not finish"
        if self.error is not None:
            raise self.error


@pytest.fixture
def sock_dir(tmp_path: Any) -> Iterator[str]:
    """A directory whose socket paths fit the AF_UNIX limit."""
    if len(str(tmp_path)) < 80:
        yield str(tmp_path)
        return
    short = tempfile.mkdtemp(prefix="jq-", dir="/tmp")
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def serve(sock_dir: str) -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(*connections: list[Step]) -> ScriptedServer:
        server = ScriptedServer(os.path.join(sock_dir, f"s{len(servers)}.sock"), list(connections))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.finish()


OPS = [{"OP_ID": "OP_TEST_DELAY", "duration": 0}]

RPCS: list[tuple[Callable[[Client], Any], str, list[Any], Any, Any]] = [
    (lambda c: c.submit_job(OPS), "SubmitJob", [OPS], 17, 17),
    (lambda c: c.submit_job_to_drained_queue(OPS), "SubmitJobToDrainedQueue", [OPS], 3, 3),
    (
        lambda c: c.submit_many_jobs([OPS, OPS]),
        "SubmitManyJobs",
        [[OPS, OPS]],
        [[True, 1], [False, "full"]],
        [[True, 1], [False, "full"]],
    ),
    (
        lambda c: c.wait_for_job_change(5, ["status"], None, None, 30.0),
        "WaitForJobChange",
        [5, ["status"], None, None, 30.0],
        "nochange",
        "nochange",
    ),
    (lambda c: c.cancel_job(5), "CancelJob", [5, False], [True, "ok"], [True, "ok"]),
    (lambda c: c.cancel_job(5, kill=True), "CancelJob", [5, True], [True, "k"], [True, "k"]),
    (
        lambda c: c.change_job_priority(5, -10),
        "ChangeJobPriority",
        [5, -10],
        [True, "changed"],
        [True, "changed"],
    ),
    (lambda c: c.archive_job(5), "ArchiveJob", [5], True, True),
    (lambda c: c.auto_archive_jobs(3600, 89), "AutoArchiveJobs", [3600, 89], [2, 0], [2, 0]),
    (
        lambda c: c.query_jobs(None, ["id", "status"]),
        "QueryJobs",
        [None, ["id", "status"]],
        [[1, "success"]],
        [[1, "success"]],
    ),
    (
        lambda c: c.query("job", ["id"], ["=", "id", 1]),
        "Query",
        ["job", ["id"], ["=", "id", 1]],
        {"fields": [], "data": []},
        {"fields": [], "data": []},
    ),
    (lambda c: c.query("lock", ["name"]), "Query", ["lock", ["name"], None], {}, {}),
    (lambda c: c.query_fields("job"), "QueryFields", ["job", None], {"fields": []}, {"fields": []}),
    (lambda c: c.set_drain_flag(True), "SetDrainFlag", [True], True, True),
    (
        lambda c: c.query_config_values(["drain_flag"]),
        "QueryConfigValues",
        [["drain_flag"]],
        [False],
        [False],
    ),
    (
        lambda c: c.read_job_output(7, {"stdout": -5}, 100, 20),
        "ReadJobOutput",
        [7, {"stdout": -5}, 100, 20],
        {
            "status": "running",
            "finished": False,
            "stdout": {"offset": 3, "data": "aGk=", "size": 5},
        },
        {"status": "running", "finished": False, "stdout": {"offset": 3, "data": b"hi", "size": 5}},
    ),
]


class TestRpcMethods:
    @pytest.mark.parametrize(
        ("invoke", "method", "args", "answer", "expected"),
        RPCS,
        ids=[f"{index}-{rpc[1]}" for index, rpc in enumerate(RPCS)],
    )
    def test_bytes_sent_and_result(
        self,
        serve: Callable[..., ScriptedServer],
        invoke: Callable[[Client], Any],
        method: str,
        args: list[Any],
        answer: Any,
        expected: Any,
    ) -> None:
        server = serve([ok(answer)])
        with Client(server.path) as client:
            assert invoke(client) == expected
        server.finish()
        assert server.frames[0].endswith(b"\n")
        assert server.requests == [protocol.Request(method, args, constants.LUXI_VERSION)]

    def test_sequential_calls_share_one_connection(
        self, serve: Callable[..., ScriptedServer]
    ) -> None:
        server = serve([ok(1), ok(2), ok(True)])
        with Client(server.path) as client:
            assert client.submit_job(OPS) == 1
            assert client.submit_job(OPS) == 2
            assert client.set_drain_flag(False) is True

    def test_server_error_is_raised_and_connection_kept(
        self, serve: Callable[..., ScriptedServer]
    ) -> None:
        server = serve([fail(errors.OpPrereqError("bad op", errors.ECODE_INVAL)), ok(4)])
        with Client(server.path) as client:
            with pytest.raises(errors.OpPrereqError) as info:
                client.submit_job(OPS)
            assert info.value.args == ("bad op", "wrong_input")
            assert client.submit_job(OPS) == 4


class TestConnections:
    def test_reconnects_on_the_next_call_without_resending(
        self, serve: Callable[..., ScriptedServer]
    ) -> None:
        server = serve([ok(1), CLOSE], [ok(3)])
        with Client(server.path) as client:
            assert client.submit_job(OPS) == 1
            with pytest.raises(errors.ConnectionClosed):
                client.submit_job(OPS)
            assert client.submit_job(OPS) == 3
        server.finish()
        assert [r.args for r in server.requests] == [[OPS], [OPS], [OPS]]

    def test_missing_socket(self, sock_dir: str) -> None:
        path = os.path.join(sock_dir, "absent.sock")
        with pytest.raises(
            errors.NoMasterError,
            match=re.escape(f"Cannot reach the job queue daemon at {path}; is it running?"),
        ):
            Client(path).submit_job(OPS)

    def test_socket_without_listener(self, sock_dir: str) -> None:
        path = os.path.join(sock_dir, "dead.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(path)
        with pytest.raises(errors.NoMasterError, match=re.escape(path)):
            Client(path).set_drain_flag(True)

    @pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
    def test_permission_denied(
        self, sock_dir: str, monkeypatch: pytest.MonkeyPatch, code: int
    ) -> None:
        def refuse(path: str, timeout: float) -> Any:
            raise PermissionError(code, os.strerror(code))

        monkeypatch.setattr(client_module, "_connect_once", refuse)
        path = os.path.join(sock_dir, "locked.sock")
        with pytest.raises(errors.AccessDenied, match=re.escape(path)):
            UnixTransport(path)

    def test_busy_listener_is_retried_until_the_deadline(
        self, sock_dir: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        now = [0.0]
        attempts: list[float] = []

        def busy(path: str, timeout: float) -> Any:
            attempts.append(now[0])
            raise BlockingIOError(errno.EAGAIN, "busy")

        def sleep(seconds: float) -> None:
            now[0] += seconds

        monkeypatch.setattr(client_module, "_connect_once", busy)
        path = os.path.join(sock_dir, "busy.sock")
        with pytest.raises(errors.RequestTimeout, match="busy"):
            UnixTransport(path, connect_timeout=1.0, clock=lambda: now[0], sleep=sleep)
        assert 5 <= len(attempts) <= 12

    def test_read_timeout(self, serve: Callable[..., ScriptedServer]) -> None:
        release = threading.Event()
        server = serve([release], [ok(8)])
        with Client(server.path, timeout=0.2) as client:
            with pytest.raises(errors.RequestTimeout):
                client.submit_job(OPS)
            release.set()
            assert client.submit_job(OPS) == 8

    def test_surplus_answer_is_refused(self, serve: Callable[..., ScriptedServer]) -> None:
        server = serve([ok(1) + ok(2)])
        with Client(server.path) as client, pytest.raises(errors.LuxiError, match="more than"):
            client.submit_job(OPS)

    def test_oversized_answer_is_refused(self, serve: Callable[..., ScriptedServer]) -> None:
        server = serve([ok("x" * 1000)])
        transport = UnixTransport(server.path, max_message_size=100)
        message = protocol.encode_request("M", [])
        with pytest.raises(errors.LuxiError, match="maximum size of 100 bytes"):
            transport.exchange(message)
        with pytest.raises(errors.ConnectionClosed):
            transport.exchange(message)

    def test_default_path_comes_from_the_state_dir(self, tmp_path: Any) -> None:
        client = Client(state_dir=str(tmp_path))
        assert client.path == StatePaths(str(tmp_path)).master_socket


class FakeTransport:
    """Answers from a list; an exception in the list is raised instead."""

    def __init__(self, answers: list[bytes | BaseException]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []
        self.closed = False

    def exchange(self, message: bytes) -> bytes:
        assert not self.closed
        self.sent.append(message)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


class TestPluggableTransport:
    def test_transport_error_drops_the_connection(self) -> None:
        made: list[FakeTransport] = []
        scripts: list[list[bytes | BaseException]] = [
            [ok(1), errors.RequestTimeout("slow")],
            [ok(2)],
        ]

        def factory(path: str, timeout: float) -> FakeTransport:
            assert (path, timeout) == ("/x.sock", 9.0)
            made.append(FakeTransport(scripts.pop(0)))
            return made[-1]

        client = Client("/x.sock", timeout=9.0, transport_factory=factory)
        assert client.submit_job(OPS) == 1
        with pytest.raises(errors.RequestTimeout):
            client.submit_job(OPS)
        assert made[0].closed
        assert client.submit_job(OPS) == 2
        assert len(made) == 2 and not made[1].closed
        client.close()
        assert made[1].closed

    def test_connect_failure_leaves_no_transport(self) -> None:
        calls: list[str] = []

        def factory(path: str, timeout: float) -> FakeTransport:
            calls.append(path)
            if len(calls) == 1:
                raise errors.NoMasterError("nobody home")
            return FakeTransport([ok(True)])

        client = Client("/y.sock", transport_factory=factory)
        with pytest.raises(errors.NoMasterError):
            client.set_drain_flag(True)
        assert client.set_drain_flag(True) is True
        assert calls == ["/y.sock", "/y.sock"]


def _entry(serial: int, message: str) -> list[Any]:
    return [serial, [1_700_000_000 + serial, 500], constants.ELOG_MESSAGE, message]


class TestWaitForJob:
    def test_follows_the_job_to_its_final_status(
        self, serve: Callable[..., ScriptedServer]
    ) -> None:
        server = serve(
            [
                ok(constants.JOB_NOTCHANGED),
                ok([["running"], [_entry(1, "started")]]),
                ok([["canceling"], []]),
                ok([["canceled"], [_entry(2, "stopping"), _entry(3, "canceled")]]),
            ]
        )
        logged: list[list[Any]] = []
        with Client(server.path) as client:
            assert client.wait_for_job(11, logged.append, poll_timeout=7.0) == "canceled"
        server.finish()
        assert logged == [_entry(1, "started"), _entry(2, "stopping"), _entry(3, "canceled")]
        assert [request.args for request in server.requests] == [
            [11, ["status"], None, None, 7.0],
            [11, ["status"], None, None, 7.0],
            [11, ["status"], ["running"], 1, 7.0],
            [11, ["status"], ["canceling"], 1, 7.0],
        ]
        assert {request.method for request in server.requests} == {"WaitForJobChange"}

    def test_already_finished_job_without_callback(
        self, serve: Callable[..., ScriptedServer]
    ) -> None:
        server = serve([ok([["success"], [_entry(1, "done")]])])
        with Client(server.path) as client:
            assert client.wait_for_job(2) == "success"

    @pytest.mark.parametrize("answer", [None, []])
    def test_null_answer_means_job_lost(
        self, serve: Callable[..., ScriptedServer], answer: Any
    ) -> None:
        server = serve([ok(answer)])
        with Client(server.path) as client, pytest.raises(errors.JobLost, match="Job 5 lost"):
            client.wait_for_job(5)

    def test_malformed_answer_is_a_luxi_error(self) -> None:
        client = Client("/z.sock", transport_factory=lambda p, t: FakeTransport([ok([["x"]])]))
        with pytest.raises(errors.LuxiError, match="Unexpected WaitForJobChange answer"):
            client.wait_for_job(5)
