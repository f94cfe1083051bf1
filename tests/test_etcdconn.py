"""``EtcdConnection`` against a loopback server playing etcd's JSON gateway:
how answers become results or failures, and how tokens are renewed."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Callable

import pytest

from jobqueue.errors import StorageError
from jobqueue.storage.etcdconn import EtcdConnection, EtcdSettings
from tests.loopback_http import ANSWER, Server, answer, read_request
from tests.polling import poll_until

INVALID_TOKEN = b'{"error": "etcdserver: invalid auth token", "code": 16}'


class Gateway:
    """Answers ``/v3/auth/authenticate`` with a new token (after ``auth_delay``
    seconds, cut short by ``release``) and every other path with ANSWER when
    the request carries a token it issued and has not expired."""

    def __init__(self, auth_delay: float = 0.0) -> None:
        self.auth_delay = auth_delay
        self.release = threading.Event()
        self.authentications = 0
        self.valid: set[str] = set()
        self._lock = threading.Lock()

    def expire(self) -> None:
        """Every token issued so far is refused from now on."""
        with self._lock:
            self.valid.clear()

    def serve(self, conn: socket.socket, number: int) -> None:
        while (request := read_request(conn)) is not None:
            head, _, _ = request.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split()[1]
            fields = dict(line.split(": ", 1) for line in lines[1:])
            if path == "/v3/auth/authenticate":
                with self._lock:
                    self.authentications += 1
                    token = f"token-{self.authentications}"
                self.release.wait(self.auth_delay)
                with self._lock:
                    self.valid.add(token)
                conn.sendall(answer("200 OK", json.dumps({"token": token}).encode()))
            elif fields.get("Authorization") in self.valid:
                conn.sendall(answer("200 OK", ANSWER))
            else:
                conn.sendall(answer("401 Unauthorized", INVALID_TOKEN))


def connect(*endpoints: str, timeout: float = 5.0, **options: str) -> EtcdConnection:
    return EtcdConnection(EtcdSettings(endpoints, timeout=timeout, **options))


def test_threads_refused_at_once_share_one_new_token(servers: Callable[..., Server]) -> None:
    gateway = Gateway(auth_delay=0.3)
    server = servers(gateway.serve)
    connection = connect(server.endpoint, user="root", password="secret")
    try:
        assert connection.call("/kv/range", {}, write=False) == json.loads(ANSWER)
        assert gateway.authentications == 1
        gateway.expire()
        start = threading.Barrier(8)
        results: list[object] = []

        def read() -> None:
            start.wait()
            try:
                results.append(connection.call("/kv/range", {}, write=False))
            except StorageError as err:
                results.append(err)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [json.loads(ANSWER)] * 8
        assert gateway.authentications == 2  # one renewal for the eight refusals
        assert connection.token == "token-2"
    finally:
        connection.close()


def test_waiting_for_another_threads_authentication_ends_at_the_deadline(
    servers: Callable[..., Server],
) -> None:
    gateway = Gateway(auth_delay=20.0)
    server = servers(gateway.serve)
    connection = connect(server.endpoint, user="root", password="secret", timeout=30.0)
    first = threading.Thread(target=lambda: connection.authenticate())
    try:
        first.start()
        poll_until(lambda: gateway.authentications == 1, timeout=10)
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            connection.call("/kv/range", {}, write=False, timeout=0.5)
        assert caught.value.args[1] == errno.ETIMEDOUT
        assert "another thread's authentication" in str(caught.value)
        assert time.monotonic() - started < 10.0  # not the 20 s the first one waits
        assert gateway.authentications == 1
    finally:
        gateway.release.set()
        first.join(10)
        connection.close()
    assert connection.token == "token-1"


def test_an_authentication_answered_without_a_token_is_a_storage_error(
    servers: Callable[..., Server],
) -> None:
    def serve(conn: socket.socket, number: int) -> None:
        while read_request(conn) is not None:
            conn.sendall(answer("200 OK", b'{"header": {}}'))

    connection = connect(servers(serve).endpoint, user="root", password="secret")
    try:
        with pytest.raises(StorageError, match="no token") as caught:
            connection.call("/kv/range", {}, write=False)
        assert caught.value.args[1] == errno.EIO
    finally:
        connection.close()


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1, 2]", b""])
def test_a_write_answered_200_with_no_json_object_is_in_doubt_and_not_sent_again(
    servers: Callable[..., Server], body: bytes
) -> None:
    received: list[int] = []

    def serve(conn: socket.socket, number: int) -> None:
        while read_request(conn) is not None:
            received.append(number)
            conn.sendall(answer("200 OK", body))

    first, second = servers(serve), servers(serve)
    connection = connect(first.endpoint, second.endpoint)
    try:
        with pytest.raises(StorageError) as caught:
            connection.call("/kv/txn", {}, write=True)
        assert caught.value.args[1] == errno.ETIMEDOUT  # etcd may have applied it
        assert "may or may not have been applied" in str(caught.value)
        assert "unreadable answer" in str(caught.value)
        assert len(received) == 1  # never tried on the other endpoint
        with pytest.raises(StorageError) as caught:
            connection.call("/kv/range", {}, write=False)
        assert caught.value.args[1] == errno.EIO
        assert "may or may not" not in str(caught.value)
    finally:
        connection.close()
