"""Who gets a connection on a LUXI socket (``jobqueue.luxi.listeners``).

The rules are checked on ``Listener`` alone, with connections of the test's
own (only their ``peer`` is read); then on a real server with a fake queue;
then on a real daemon, where a throwaway
user fills its share of the public query socket while root is still served,
also past the socket's limit (needs root, like the other permission tests).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from jobqueue.luxi import access, protocol
from jobqueue.luxi.listeners import ADMIN_RESERVE, Listener, default_per_user
from tests import accounts
from tests.accounts import Account
from tests.daemon_helper import Daemon, read_response, request
from tests.server_harness import LOGGER, Harness, assert_ok, connect, recv_frame, wait_until
from tests.server_harness import make_server as make_server  # the fixture
from tests.server_harness import tmp_dir as tmp_dir  # the fixture it needs

outsider = accounts.outsider  # the account and daemon fixtures
open_state_dir = accounts.open_state_dir
make_daemon = accounts.make_daemon

ADMIN = 0
ALICE, BOB = 60001, 60002


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, kind: str, message: str, *args: Any) -> None:
        self.lines.append(message % args)


class FakeConnection:
    """A connection as far as the listener reads it: its peer."""

    def __init__(self, uid: int | None) -> None:
        self.peer = None if uid is None else access.PeerCredentials(pid=1, uid=uid, gid=uid)


def listener(limit: int, per_user: int | None, log: Log | None = None) -> Listener:
    rule = access.MasterAccess(allowed_uids={ADMIN}, group=None)
    return Listener(
        "query",
        read_only=True,
        limit=limit,
        per_user=per_user,
        rule=rule,
        log=log or Log(),
        admins={ADMIN},
    )


def open_as(gate: Listener, uid: int | None) -> tuple[FakeConnection, Any]:
    connection = FakeConnection(uid)
    return connection, gate.opened(connection)  # type: ignore[arg-type]


def test_a_user_holds_at_most_its_share_and_others_still_get_in() -> None:
    log = Log()
    gate = listener(limit=10, per_user=2, log=log)
    alice = [open_as(gate, ALICE) for _ in range(2)]
    assert [refusal for _, refusal in alice] == [None, None]
    _, refusal = open_as(gate, ALICE)
    assert refusal is not None and type(refusal).__name__ == "LuxiError"
    assert "Too many connections from your user to the query socket (2)" in str(refusal)
    assert f"uid {ALICE} has 2 already" in log.lines[-1]
    assert open_as(gate, BOB)[1] is None
    gate.closed(alice[0][0])  # type: ignore[arg-type]
    assert open_as(gate, ALICE)[1] is None  # a closed connection gives its place back
    assert gate.count == 3 and gate.refused == 1


def test_admins_are_held_to_no_share_and_have_a_reserve_past_the_limit() -> None:
    gate = listener(limit=4, per_user=1)
    assert open_as(gate, ALICE)[1] is None and open_as(gate, BOB)[1] is None
    admins = [open_as(gate, ADMIN) for _ in range(2 + ADMIN_RESERVE)]  # no share holds them
    assert all(refusal is None for _, refusal in admins) and gate.count == 4 + ADMIN_RESERVE
    _, refusal = open_as(gate, ADMIN)
    assert refusal is not None and "Too many connections to the query socket (4)" in str(refusal)
    gate.closed(admins[0][0])  # type: ignore[arg-type]
    _, refusal = open_as(gate, 60003)  # the reserve is the admins' alone
    assert refusal is not None and "Too many connections to the query socket" in str(refusal)


def test_peers_of_unknown_credentials_share_one_share() -> None:
    gate = listener(limit=10, per_user=1)
    assert open_as(gate, None)[1] is None
    assert open_as(gate, None)[1] is not None


def test_counts_go_back_to_nothing() -> None:
    gate = listener(limit=10, per_user=3)
    opened = [open_as(gate, uid)[0] for uid in (ALICE, ALICE, BOB, None, ADMIN)]
    for connection in opened:
        gate.closed(connection)  # type: ignore[arg-type]
    assert gate.count == 0 and gate._by_user == {}


def test_a_closed_connection_gives_its_share_back_on_a_real_server(
    make_server: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    harness = make_server(max_connections=10, max_connections_per_user=1, admin_uids=())
    for _ in range(3):  # counted and given back under the same user each time
        with connect(harness.query) as sock:
            assert_ok(sock)
        wait_until(lambda: not harness.server._connections, "the connection to close")
    with connect(harness.query) as sock, connect(harness.query) as second:
        assert_ok(sock)
        refusal = protocol.parse_response(recv_frame(second))
        assert refusal[0] is False and "from your user" in refusal[1][1][0]
    # Counted as this process's user: its credentials were read before it was counted.
    assert f"uid {os.geteuid()} has 1 already" in caplog.text


def test_the_default_share_is_a_quarter_of_the_limit() -> None:
    assert default_per_user(1000) == 250
    assert default_per_user(3) == 1
    assert listener(limit=100, per_user=None).per_user == 25


# -- a real daemon, a real other user -------------------------------------------------


def _connection(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def _asked(sock: socket.socket) -> Any:
    """The answer to QueryConfigValues on ``sock``, or the refusal it was told."""
    sock.sendall(request("QueryConfigValues", ["drain_flag"]))
    return read_response(sock)


def _hold_as(account: Account, path: str, count: int) -> tuple[int, int, int]:
    """Fork a child that, as ``account``, opens ``count`` connections and one more, then waits.

    Returns (pid, read end of its report, write end that releases it): the
    report is one line per connection, ``ok`` or the error class and text.
    """
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            os.close(release_w)
            os.setgroups([])
            os.setgid(account.gid)
            os.setuid(account.uid)
            held = []
            for number in range(count + 1):
                sock = _connection(path)
                held.append(sock)
                # A refused connection is told at once; asking could meet a closed socket.
                answer = _asked(sock) if number < count else read_response(sock)
                kind, args = (None, None) if answer["success"] else answer["result"]
                line = "ok" if kind is None else f"{kind} {args[0]}"
                os.write(report_w, (line.replace("\n", " ") + "\n").encode())
            os.close(report_w)
            os.read(release_r, 1)  # hold them until the parent has checked
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(release_r)
    return pid, report_r, release_w


def test_one_user_cannot_lock_others_out_and_root_gets_in_past_the_limit(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon(
        "--query-socket-public", "--max-connections", "6", "--max-connections-per-user", "3"
    )
    query = str(daemon.paths.query_socket)
    pid, report_r, release_w = _hold_as(outsider, query, 3)
    try:
        with os.fdopen(report_r, "r") as report:
            lines = report.read().splitlines()
        assert lines[:3] == ["ok"] * 3
        assert lines[3].startswith("LuxiError Too many connections from your user"), lines
        # The outsider holds its share; root fills the rest and goes past the limit.
        mine = [_connection(query) for _ in range(3 + ADMIN_RESERVE)]
        try:
            for sock in mine:
                assert _asked(sock)["success"]
            with _connection(query) as one_too_many:
                refusal = read_response(one_too_many)
            assert not refusal["success"] and refusal["result"][0] == "LuxiError"
            assert "Too many connections to the query socket (6)" in refusal["result"][1][0]
        finally:
            for sock in mine:
                sock.close()
    finally:
        os.close(release_w)
        os.waitpid(pid, 0)
    logged = daemon.log()
    assert f"uid {outsider.uid} has 3 already (--max-connections-per-user)" in logged
