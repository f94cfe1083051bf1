"""``etcdhttp.GatewayConnections`` against small real HTTP servers on loopback:
kept-alive connections, and how far a failed request got."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobqueue.storage.etcdhttp import MAX_IDLE, GatewayConnections, GatewayError
from tests.etcd_cluster import TlsFiles, make_tls_files
from tests.loopback_http import ANSWER, Server, answer, read_request
from tests.polling import poll_until


@pytest.fixture
def gateway() -> Iterator[GatewayConnections]:
    connections = GatewayConnections()
    yield connections
    connections.close()


def answering(
    server_requests: list[bytes], reply: bytes = b"", hangups: list[int] | None = None
) -> Callable[[socket.socket, int], None]:
    """Answer every request on the connection with ``reply`` (200 and ANSWER by default);
    the number of each connection the client closed goes to ``hangups``."""

    def serve(conn: socket.socket, number: int) -> None:
        while (request := read_request(conn)) is not None:
            server_requests.append(request)
            conn.sendall(reply or answer("200 OK", ANSWER))
        if hangups is not None:
            hangups.append(number)  # the client closed the connection

    return serve


def test_calls_share_one_kept_alive_connection(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    seen: list[bytes] = []
    server = servers(answering(seen))
    headers = {"Authorization": "token-1"}
    for number in range(3):
        body = b'{"key": "%d"}' % number
        assert gateway.post(server.endpoint, "/v3/kv/range", body, headers, 5.0) == (200, ANSWER)
    assert server.connections == 1 and len(seen) == 3
    head, _, body = seen[2].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v3/kv/range HTTP/1.1\r\n")
    assert b"\r\nAuthorization: token-1" in head and b"Content-Type: application/json" in head
    assert body == b'{"key": "2"}'


def test_an_answer_with_an_error_status_is_returned_with_its_body(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    refusal = b'{"error": "etcdserver: no leader", "code": 14}'
    server = servers(answering([], answer("503 Service Unavailable", refusal)))
    assert gateway.post(server.endpoint, "/v3/kv/txn", b"{}", {}, 5.0) == (503, refusal)
    assert gateway.post(server.endpoint, "/v3/kv/txn", b"{}", {}, 5.0) == (503, refusal)
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_never_sent_on(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    hung_up = threading.Event()

    def one_answer_then_close(conn: socket.socket, number: int) -> None:
        if read_request(conn) is not None:
            conn.sendall(answer("200 OK", ANSWER))
        conn.shutdown(socket.SHUT_RDWR)
        hung_up.set()

    server = servers(one_answer_then_close)
    assert gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0) == (200, ANSWER)
    assert hung_up.wait(5)
    # Once the server's close has arrived, it is seen before sending: a new
    # connection, no failure.
    assert poll_until(lambda: _idle_closed(gateway, server.endpoint), timeout=5)
    assert gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0) == (200, ANSWER)
    assert server.connections == 2


def _idle_closed(gateway: GatewayConnections, endpoint: str) -> bool:
    """Whether the idle connection to ``endpoint`` would be dropped now (it is put back)."""
    connection = gateway._idle_connection(endpoint, 5.0)
    if connection is None:
        return True
    gateway._keep(endpoint, connection)
    return False


def test_connection_close_is_honoured(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    server = servers(answering([], answer("200 OK", ANSWER, close=True)))
    for _ in range(2):
        assert gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0) == (200, ANSWER)
    assert server.connections == 2


def test_a_refused_connection_was_never_sent(gateway: GatewayConnections) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # nobody listens there now
    with pytest.raises(GatewayError) as caught:
        gateway.post(endpoint, "/v3/kv/txn", b"{}", {}, 5.0)
    assert caught.value.errno == errno.ECONNREFUSED and not caught.value.sent
    assert caught.value.message.startswith("cannot connect")


def test_no_answer_in_time_may_have_been_received(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    release = threading.Event()

    def silent(conn: socket.socket, number: int) -> None:
        read_request(conn)
        release.wait(30)

    server = servers(silent)
    started = time.monotonic()
    try:
        with pytest.raises(GatewayError) as caught:
            gateway.post(server.endpoint, "/v3/kv/txn", b"{}", {}, 0.3)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert caught.value.errno == errno.ETIMEDOUT and caught.value.sent
    assert caught.value.message == "no answer in time"


def test_a_connection_lost_after_sending_may_have_been_received(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    def read_and_hang_up(conn: socket.socket, number: int) -> None:
        read_request(conn)

    server = servers(read_and_hang_up)
    with pytest.raises(GatewayError) as caught:
        gateway.post(server.endpoint, "/v3/kv/txn", b"{}", {}, 5.0)
    assert caught.value.errno == errno.ETIMEDOUT and caught.value.sent
    assert caught.value.message.startswith("connection lost")


def test_a_connection_lost_while_sending_was_never_sent(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    # etcd acts only on a whole request: a write that failed while it was being
    # sent may go to another endpoint.
    def reset_after_the_head(conn: socket.socket, number: int) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, with most of the body still to come

    server = servers(reset_after_the_head)
    body = b"[" + b" " * (64 << 20) + b"]"  # more than the socket buffers hold
    with pytest.raises(GatewayError) as caught:
        gateway.post(server.endpoint, "/v3/kv/txn", body, {}, 10.0)
    assert caught.value.errno == errno.ECONNREFUSED and not caught.value.sent
    assert caught.value.message.startswith("connection closed before the request was sent")


def test_concurrent_calls_each_get_a_connection_and_few_stay_idle(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    callers = MAX_IDLE + 4
    inside = threading.Barrier(callers, timeout=30)

    hangups: list[int] = []

    def wait_for_all(conn: socket.socket, number: int) -> None:
        first = True
        while (request := read_request(conn)) is not None:
            if first and number <= callers:
                inside.wait()  # every call is in flight at once, on its own connection
            first = False
            conn.sendall(answer("200 OK", request.partition(b"\r\n\r\n")[2]))
        hangups.append(number)

    server = servers(wait_for_all)
    results: dict[int, tuple[int, bytes]] = {}

    def call(index: int) -> None:
        body = b'{"caller": %d}' % index
        results[index] = gateway.post(server.endpoint, "/v3/kv/range", body, {}, 30.0)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: (200, b'{"caller": %d}' % i) for i in range(callers)}
    assert server.connections == callers
    # MAX_IDLE stay open for later calls; the client closed the others.
    assert poll_until(lambda: len(hangups) == callers - MAX_IDLE, timeout=10)
    for _ in range(3):
        assert gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0) == (200, b"{}")
    assert server.connections == callers and len(hangups) == callers - MAX_IDLE
    gateway.close()
    assert poll_until(lambda: len(hangups) == callers, timeout=10)


def test_connections_are_kept_when_the_daemon_has_many_files_open(
    servers: Callable[..., Server], gateway: GatewayConnections
) -> None:
    # select() cannot watch a descriptor past 1023; the daemon may well have them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"needs 1,200 open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    read_end, write_end = os.pipe()
    held = [os.dup(read_end) for _ in range(1100)]
    try:
        server = servers(answering([]))
        for _ in range(3):
            assert gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0) == (200, ANSWER)
        assert server.connections == 1
    finally:
        for fd in (*held, read_end, write_end):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- TLS -------------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs openssl to make certificates"
)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, TlsFiles]:
    """Two throw-away CAs, each with a server and a client certificate."""
    base = tmp_path_factory.mktemp("tls")
    return make_tls_files(base / "one"), make_tls_files(base / "other")


def server_tls(files: TlsFiles) -> ssl.SSLContext:
    """A server's TLS set-up that asks for a client certificate signed by the CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)
    context.load_verify_locations(files.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client(
    files: TlsFiles, *, certificate: bool = True, ca: Path | None = None
) -> GatewayConnections:
    key = (str(files.client_cert), str(files.client_key)) if certificate else (None, None)
    return GatewayConnections(str(ca or files.ca), *key)


@needs_openssl
def test_tls_with_a_client_certificate_keeps_its_connection(
    servers: Callable[..., Server], tls_files: tuple[TlsFiles, TlsFiles]
) -> None:
    files = tls_files[0]
    server = servers(answering([]), server_tls(files))
    gateway = client(files)
    try:
        for _ in range(3):
            assert gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0) == (200, ANSWER)
    finally:
        gateway.close()
    assert server.connections == 1


@needs_openssl
@pytest.mark.parametrize("refusal", ["no client certificate", "unknown server CA"])
def test_tls_refused_was_never_sent(
    servers: Callable[..., Server], tls_files: tuple[TlsFiles, TlsFiles], refusal: str
) -> None:
    seen: list[bytes] = []
    files, other = tls_files
    server = servers(answering(seen), server_tls(files))
    if refusal == "no client certificate":
        gateway = client(files, certificate=False)
    else:
        gateway = client(files, ca=other.ca)
    try:
        with pytest.raises(GatewayError) as caught:
            gateway.post(server.endpoint, "/v3/kv/txn", b"{}", {}, 5.0)
    finally:
        gateway.close()
    assert caught.value.errno == errno.EACCES and not caught.value.sent, caught.value.message
    assert caught.value.message.startswith("TLS refused")
    assert seen == []


@needs_openssl
def test_a_renewed_ca_file_counts_for_the_next_connection(
    servers: Callable[..., Server], tls_files: tuple[TlsFiles, TlsFiles], tmp_path: Path
) -> None:
    files, other = tls_files
    server = servers(answering([]), server_tls(files))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(other.ca.read_bytes())  # the wrong CA at first
    gateway = client(files, ca=ca)
    try:
        with pytest.raises(GatewayError):
            gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0)
        renewed = tmp_path / "ca.pem.new"
        renewed.write_bytes(files.ca.read_bytes())
        renewed.replace(ca)  # as an operator renews it: a new file under the name
        assert gateway.post(server.endpoint, "/v3/kv/range", b"{}", {}, 5.0) == (200, ANSWER)
    finally:
        gateway.close()
