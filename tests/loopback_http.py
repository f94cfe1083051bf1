"""A small real HTTP/1.1 server on loopback, for the etcd gateway client's tests."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable

#: How a test server handles one connection: ``serve(conn, its number from 1)``.
Serve = Callable[[socket.socket, int], None]

ANSWER = b'{"header": {"revision": "7"}}'


def answer(status: str, body: bytes, *, close: bool = False) -> bytes:
    """An HTTP/1.1 answer; ``close`` asks the client to drop the connection."""
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "")
    return head.encode() + b"\r\n" + body


def read_request(conn: socket.socket) -> bytes | None:
    """One whole request (head and a Content-Length body); None at end of stream."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


class Server:
    """A loopback server; ``serve(conn, number)`` handles its ``number``-th connection."""

    def __init__(self, serve: Serve, tls: ssl.SSLContext | None = None) -> None:
        self._serve, self._tls = serve, tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.requests: list[bytes] = []
        self._stopping = threading.Event()
        self._accepted: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._accepted.append(conn)
            thread = threading.Thread(
                target=self._handle, args=(conn, self.connections), daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket, number: int) -> None:
        with conn:
            try:
                if self._tls is not None:
                    conn.settimeout(10)
                    conn = self._tls.wrap_socket(conn, server_side=True)
                    conn.settimeout(None)
                self._serve(conn, number)
            except OSError:
                pass

    def stop(self) -> None:
        """Stop accepting, hang up on every client, and wait for every thread to end."""
        self._stopping.set()
        for sock in (self._listener, *self._accepted):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
        self._listener.close()
        for thread in self._threads:
            thread.join(10)
            assert not thread.is_alive()
