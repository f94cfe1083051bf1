"""Tests for jobqueue.luxi.server: its sockets and connections, through the fake queue
of tests/server_harness.py.

Covers the order of answers on one connection, the socket files and who may
connect, the query socket's rule on changes, message size and idle limits,
handler pools, the output budget and connection limits, and stopping the server.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import resource
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobqueue import constants, errors
from jobqueue.luxi import access, protocol
from jobqueue.luxi import server as server_module
from jobqueue.luxi.client import Client
from jobqueue.luxi.server import SHUTDOWN_GRACE, LuxiServer
from tests.server_harness import (
    LOGGER,
    OP,
    WAIT,
    FakeQueue,
    Harness,
    assert_ok,
    call_raw,
    closed_by_server,
    connect,
    recv_frame,
    recv_frames,
    wait_until,
)
from tests.server_harness import harness as harness  # the fixture
from tests.server_harness import make_server as make_server  # the fixture
from tests.server_harness import tmp_dir as tmp_dir  # the fixture


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


# -- order of answers on a connection -----------------------------------------------
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


def test_requests_split_across_reads_of_several_clients_arrive_whole(harness: Harness) -> None:
    """The connections share one read buffer: what one read brings is copied out at once."""
    first = protocol.encode_request("QueryJobs", [[7], ["id"]])
    long_ids = list(range(1000, 1000 + 20_000))  # about 120 KB: more than one read
    second = protocol.encode_request("QueryJobs", [long_ids, ["id"]])
    with connect(harness.master) as one, connect(harness.master) as two:
        one.sendall(first[:20])
        two.sendall(second[: len(second) // 2])
        with connect(harness.master) as third:  # read between the halves of the others
            assert_ok(third)
        one.sendall(first[20:])
        assert protocol.parse_response(recv_frame(one)) == (True, [[7, "queued"]])
        two.sendall(second[len(second) // 2 :])
        success, rows = protocol.parse_response(recv_frame(two))
        assert success and [row[0] for row in rows] == long_ids


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
    threads_before = set(threading.enumerate())  # others may end meanwhile: compare sets
    bad_master = LuxiServer(
        FakeQueue(),
        FakeQueue(),
        master_path=os.path.join(tmp_dir, "missing", "master"),
        query_path=os.path.join(tmp_dir, "query"),
    )
    with pytest.raises(errors.LuxiError, match="Cannot listen"):
        bad_master.start()
    assert sorted(os.listdir(tmp_dir)) == []
    assert not set(threading.enumerate()) - threads_before
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


def test_without_the_kernels_groups_they_are_read_from_proc_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access, "peer_groups", lambda sock: None)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        peer = access.peer_credentials(left)
    assert peer.groups == frozenset(os.getgroups())  # this process's, from /proc


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
    # No reserve and no share for this test's own user: only the limit.
    harness = make_server(max_connections=3, max_connections_per_user=3, admin_uids=())
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
