"""Tests for jobqueue.luxi.server: the calls that wait on a job, WaitForJobChange and
ReadJobOutput, served through the fake queue and real sockets of tests/server_harness.py."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.luxi import protocol
from jobqueue.luxi.methods import wfjc_timeout
from tests.server_harness import WAIT, Harness, assert_ok, call_raw, connect, recv_frame, wait_until
from tests.server_harness import harness as harness  # the fixture
from tests.server_harness import make_server as make_server  # the fixture
from tests.server_harness import tmp_dir as tmp_dir  # the fixture


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
