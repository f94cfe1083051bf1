"""jobqueue-rapi's connections: the limit, and the connections that stall.

``Connections.check`` is driven with a clock and transports of the test's own;
the rest runs a real master and a real jobqueue-rapi over HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helper import Daemon, state_dir_under, wait_until
from tests.rapi_client import RapiClient
from tests.rapi_helper import USERS, Rapi

pytest.importorskip("aiohttp")
pytest.importorskip("cryptography")

from jobqueue.rapi.connections import REFUSAL, Connections

# -- the checks, on transports of the test's own ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Transport(asyncio.Transport):
    """What ``Connections`` asks of a transport; ``pending`` is what waits to be sent."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0
        self.written = b""
        self.aborted = self.closed = False

    def get_write_buffer_size(self) -> int:
        return self.pending

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted or self.closed


class Waiter:
    """aiohttp's future of a connection's next request: pending while it waits for one."""

    def __init__(self, done: bool = False) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


class Inner:
    """aiohttp's protocol, as far as ``Connections`` uses it: idle (waiting for a
    request) unless told otherwise."""

    def __init__(self) -> None:
        self.transport: Any = None
        self._waiter: Waiter | None = Waiter()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def accepted(connections: Connections) -> tuple[Inner, Transport]:
    inner, transport = Inner(), Transport()
    protocol = connections.protocol_factory(lambda: inner)()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return inner, transport


def test_a_connection_past_the_limit_is_told_503_and_closed() -> None:
    connections = Connections(max_connections=2)
    first, second = accepted(connections), accepted(connections)
    assert connections.count() == 2 and first[0].transport is first[1]
    for inner, _ in (first, second):  # each serving a request: none can make room
        connections.request_started(inner)
    inner, refused = accepted(connections)
    assert inner.transport is None and refused.closed
    assert refused.written == REFUSAL and b" 503 " in REFUSAL.split(b"\r\n")[0]
    second_protocol_lost = connections._open[id(second[0])]
    connections._closed(second_protocol_lost)  # one goes away: room for one more
    assert accepted(connections)[0].transport is not None


def test_at_the_limit_a_new_connection_takes_the_place_of_a_silent_one() -> None:
    clock = Clock()
    connections = Connections(max_connections=3, clock=clock)
    silent_first, silent_later, busy = (accepted(connections) for _ in range(3))
    connections.request_started(busy[0])
    clock.now += 5
    newcomer = accepted(connections)
    assert newcomer[0].transport is newcomer[1] and connections.count() == 3
    assert silent_first[1].aborted  # accepted first, and never sent a request
    assert not silent_later[1].aborted and not busy[1].aborted
    assert accepted(connections)[0].transport is not None  # then the next silent one
    assert silent_later[1].aborted and not newcomer[1].aborted and not busy[1].aborted


def test_only_a_connection_aiohttp_holds_nothing_of_makes_room() -> None:
    clock = Clock()
    connections = Connections(max_connections=3, clock=clock)
    parsed, sending, answered = (accepted(connections) for _ in range(3))
    parsed[0]._waiter = Waiter(done=True)  # a request read whole, not yet handed to a handler
    for inner, _ in (sending, answered):
        connections.request_started(inner)
        connections.request_ended(inner)
    sending[1].pending = 10_000  # its answer still waits to be sent
    clock.now += 1
    newcomer = accepted(connections)
    assert newcomer[0].transport is not None and answered[1].aborted
    assert not parsed[1].aborted and not sending[1].aborted
    parsed[0]._waiter = None  # aiohttp handling it (or an aiohttp without the attribute)
    sending[1].pending = 0
    refused = accepted(connections)  # the newcomer never had a request answered: it goes first
    assert refused[0].transport is not None and newcomer[1].aborted
    assert not sending[1].aborted and not parsed[1].aborted
    connections.request_started(refused[0])  # serving a request: only ``sending`` is idle now
    assert accepted(connections)[0].transport is not None and sending[1].aborted


def test_a_connection_closed_before_its_tls_handshake_began_starts_none() -> None:
    async def scenario() -> list[Any]:
        started: list[Any] = []

        async def start_tls(raw: Any, *args: Any, **kwargs: Any) -> None:
            started.append(raw)  # the real one would hold 256 KiB until its timeout

        asyncio.get_running_loop().start_tls = start_tls  # type: ignore[method-assign]
        connections = Connections(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        connections.max_connections = 1
        first, second = accepted(connections), accepted(connections)  # in one loop turn
        assert first[1].aborted  # it made room before its handshake's turn came
        for _ in range(3):
            await asyncio.sleep(0)
        return [raw is second[1] for raw in started]

    assert asyncio.run(scenario()) == [True]


def test_a_connection_without_a_request_is_closed_after_the_idle_timeout() -> None:
    clock = Clock()
    connections = Connections(idle_timeout=30, clock=clock)
    idle, busy = accepted(connections), accepted(connections)
    connections.request_started(busy[0])
    clock.now += 29.9
    connections.check()
    assert not idle[1].aborted
    clock.now += 0.1
    connections.check()
    assert idle[1].aborted and not busy[1].aborted  # a request in progress keeps it
    connections.request_ended(busy[0])
    clock.now += 29.9
    connections.check()
    assert not busy[1].aborted  # counted from its last answer
    clock.now += 0.1
    connections.check()
    assert busy[1].aborted and connections.count() == 0


def test_a_client_that_takes_nothing_of_its_answer_is_closed_after_the_send_timeout() -> None:
    clock = Clock()
    connections = Connections(send_timeout=10, clock=clock)
    slow, stuck = accepted(connections), accepted(connections)
    for inner, _ in (slow, stuck):
        connections.request_started(inner)
    slow[1].pending = stuck[1].pending = 1_000_000
    connections.check()
    for _ in range(9):
        clock.now += 1.0
        slow[1].pending -= 1000  # takes a little each second
        connections.check()
    assert not stuck[1].aborted
    clock.now += 1.0
    slow[1].pending -= 1000
    connections.check()
    assert stuck[1].aborted and not slow[1].aborted


def test_held_answers_over_the_budget_close_the_longest_stalled_first() -> None:
    clock = Clock()
    connections = Connections(max_pending_output=250, send_timeout=60, clock=clock)
    first, second, third = (accepted(connections) for _ in range(3))
    first[1].pending = 100
    connections.check()
    clock.now += 1
    second[1].pending = third[1].pending = 100
    connections.check()
    assert first[1].aborted and not second[1].aborted and not third[1].aborted


# -- a real jobqueue-rapi ----------------------------------------------------------------


@pytest.fixture
def rapi(tmp_path: Path) -> Iterator[Rapi]:
    master = Daemon(state_dir_under(tmp_path), workers=2).start()
    server = Rapi(
        tmp_path,
        master.paths.master_socket,
        "--max-connections",
        "4",
        "--client-timeout",
        "1",
        "--send-timeout",
        "1",
    ).start()
    yield server
    assert server.stop() == 0, server.log()
    master.stop()


def client(rapi: Rapi, user: str = "writer") -> RapiClient:
    return RapiClient(rapi.url, str(rapi.cert), user, USERS[user][1])


def raw_connection(rapi: Rapi) -> socket.socket:
    host, port = rapi.url.removeprefix("https://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def tls_connection(rapi: Rapi) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(rapi.cert))
    return context.wrap_socket(raw_connection(rapi), server_hostname="localhost")


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def silent_connections(rapi: Rapi, count: int) -> list[socket.socket]:
    """``count`` connections that say nothing: all but the last never start TLS,
    the last never ends its request's head."""
    silent = [raw_connection(rapi) for _ in range(count - 1)]
    silent.append(tls_connection(rapi))
    silent[-1].sendall(b"GET /version HTTP/1.1\r\nHost: localhost\r\n")
    return silent


def test_silent_connections_are_closed_when_idle(rapi: Rapi) -> None:
    for sock in silent_connections(rapi, 4):  # closed after the client timeout (1 s)
        sock.settimeout(10)
        assert closed_by_server(sock)
        sock.close()
    assert client(rapi).version() == 2


def test_silent_connections_at_the_limit_make_room_for_a_client(tmp_path: Path) -> None:
    master = Daemon(state_dir_under(tmp_path), workers=1).start()
    patient = Rapi(
        tmp_path, master.paths.master_socket, "--max-connections", "4", "--client-timeout", "600"
    ).start()
    try:
        # Past TLS, each with a request's head begun and never ended: aiohttp
        # waits for the rest, so each is idle. In the order accepted.
        silent = [tls_connection(patient) for _ in range(4)]
        for sock in silent:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: localhost\r\n")
        assert client(patient).version() == 2  # long before any of them times out
        silent[0].settimeout(10)
        assert closed_by_server(silent[0])  # the one accepted first made room
        assert "closing idle ones to let new ones in (1 so far)" in patient.log()
        for sock in silent:
            sock.close()
    finally:
        assert patient.stop() == 0, patient.log()
        master.stop()


def test_a_request_body_that_never_arrives_is_answered_408(rapi: Rapi) -> None:
    credentials = base64.b64encode(f"writer:{USERS['writer'][1]}".encode()).decode()
    with tls_connection(rapi) as sock:
        sock.sendall(
            b"POST /2/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Authorization: Basic {credentials}\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"ops'
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"}" in answer.partition(b"\r\n\r\n")[2]:
                break
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"did not arrive within 1s" in answer


def test_a_client_that_never_reads_its_answer_is_closed(rapi: Rapi) -> None:
    writer = client(rapi)
    big = writer.submit(
        [{"OP_ID": "OP_TEST_DELAY", "duration": 0, "on_nodes": ["n" * 1000] * 4000}]
    )
    credentials = base64.b64encode(f"reader:{USERS['reader'][1]}".encode()).decode()
    sock = raw_connection(rapi)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    context = ssl.create_default_context(cafile=str(rapi.cert))
    with context.wrap_socket(sock, server_hostname="localhost") as tls:
        request = f"GET /2/jobs/{big} HTTP/1.1\r\nHost: localhost\r\n"
        tls.sendall(f"{request}Authorization: Basic {credentials}\r\n\r\n".encode())
        wait_until(lambda: "it took nothing of" in rapi.log(), what="the send timeout")
        received = 0
        try:
            while chunk := tls.recv(65536):
                received += len(chunk)
        except (ConnectionResetError, ssl.SSLError):
            pass
    assert received < 4_000_000  # cut short: the answer is over 4 MB
    assert writer.version() == 2


def test_a_request_that_cannot_be_parsed_is_one_log_line(rapi: Rapi) -> None:
    for _ in range(3):
        with tls_connection(rapi) as sock:
            sock.sendall(b"GET /version HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            assert sock.recv(65536).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    wait_until(lambda: rapi.log().count("Duplicate Content-Length") == 3, what="three lines")
    assert "Traceback" not in rapi.log()
