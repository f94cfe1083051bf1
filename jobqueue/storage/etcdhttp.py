"""Requests to etcd's JSON gateway over kept-alive HTTP/1.1 connections.

``GatewayConnections`` lends each call a connection of its own to one
endpoint (made on demand, kept idle afterwards, a bounded number per
endpoint) and posts one JSON request on it. It uses the standard library's
``http.client``: measured here, one request through ``requests`` cost the
daemon about 0.72 ms of CPU, through ``http.client`` 0.24 ms, and the etcd
store makes one to three requests per job (doc/ha.rst, "Why this client").

A failure says how far the request got, which decides whether a write may
be tried on another endpoint. ``GatewayError.sent`` is False when etcd
cannot have acted on the request: no connection, TLS refused, or the
connection failed while the request was still being sent (etcd acts only
on a whole request). It is True when etcd may have received all of it: no
answer in time, or the connection lost while waiting for the answer. Any
answer, whatever its HTTP status, is returned with its body for the
caller to read.

Thread-safe. An idle connection is checked before it is lent: one the
server has closed meanwhile is dropped. TLS files (CA, client certificate
and key) are read again when they change on disk, for the next new
connection.
"""

from __future__ import annotations

import errno
import http.client
import os
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping

#: Idle connections kept per endpoint; more are closed when returned.
MAX_IDLE = 16


class GatewayError(Exception):
    """A request failed before an answer came: an errno, a message, and ``sent``,
    whether etcd may have received it (see the module text)."""

    def __init__(self, code: int, message: str, *, sent: bool) -> None:
        super().__init__(code, message)
        self.errno, self.message, self.sent = code, message, sent


class GatewayConnections:
    """Connections to the endpoints of one etcd cluster, with one TLS set-up.

    ``ca_file`` verifies the servers (the system's CAs when None);
    ``cert_file`` and ``key_file`` are our client certificate.
    """

    def __init__(
        self,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self._ca_file, self._cert_file, self._key_file = ca_file, cert_file, key_file
        # The TLS set-up, and the state of its files when it was made; under _lock.
        self._tls: tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext] | None = None
        self._lock = threading.Lock()
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}  # under _lock
        self._closed = False  # under _lock

    def post(
        self,
        endpoint: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
    ) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``path`` of ``endpoint``; (HTTP status, answer body).

        ``timeout`` bounds the connection and each wait for the server, in
        seconds. Raises ``GatewayError`` when no whole answer came.
        """
        reused = self._idle_connection(endpoint, timeout)
        connection = reused or self._connect(endpoint, timeout)
        try:
            try:
                connection.request(
                    "POST", path, body, {"Content-Type": "application/json", **headers}
                )
            except (OSError, http.client.HTTPException) as err:
                raise _unsent(err, fresh=reused is None) from err
            try:
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as err:
                raise _unanswered(err, fresh=reused is None) from err
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._keep(endpoint, connection)
        return response.status, data

    def close(self) -> None:
        """Close every idle connection; those lent out are closed when returned."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _idle_connection(self, endpoint: str, timeout: float) -> http.client.HTTPConnection | None:
        """An idle connection to ``endpoint`` still open, set to ``timeout``; None if none."""
        while True:
            with self._lock:
                connections = self._idle.get(endpoint)
                if not connections:
                    return None
                connection = connections.pop()
            sock = connection.sock
            if sock is not None and not _closed_by_peer(sock):
                sock.settimeout(timeout)
                return connection
            connection.close()

    def _connect(self, endpoint: str, timeout: float) -> http.client.HTTPConnection:
        """A new connection to ``endpoint``, TLS handshake done; ``GatewayError`` (unsent)."""
        parts = urllib.parse.urlsplit(endpoint)
        host, port = parts.hostname or "", parts.port
        connection: http.client.HTTPConnection
        try:
            if parts.scheme == "https":
                connection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=self._tls_context()
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
        except OSError as err:  # the TLS files (ssl.SSLError is an OSError too)
            raise GatewayError(errno.EACCES, f"TLS set-up failed ({err})", sent=False) from err
        try:
            connection.connect()
            if connection.sock is not None:
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as err:
            connection.close()
            raise GatewayError(errno.ETIMEDOUT, "cannot connect in time", sent=False) from err
        except ssl.SSLError as err:
            connection.close()
            raise GatewayError(errno.EACCES, f"TLS refused ({err})", sent=False) from err
        except OSError as err:
            connection.close()
            reason = f"cannot connect ({err.strerror or err})"
            raise GatewayError(errno.ECONNREFUSED, reason, sent=False) from err
        return connection

    def _keep(self, endpoint: str, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(endpoint, [])
            if not self._closed and len(idle) < MAX_IDLE:
                idle.append(connection)
                return
        connection.close()

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS set-up for a new connection, made again when a TLS file changed."""
        files = [name for name in (self._ca_file, self._cert_file, self._key_file) if name]
        stamp = tuple((info.st_ino, info.st_mtime_ns, info.st_size) for info in map(os.stat, files))
        with self._lock:
            if self._tls is not None and self._tls[0] == stamp:
                return self._tls[1]
        context = ssl.create_default_context(cafile=self._ca_file)
        if self._cert_file and self._key_file:
            context.load_cert_chain(self._cert_file, self._key_file)
        with self._lock:
            self._tls = (stamp, context)
        return context


#: Words of the TLS alerts a server sends when it refuses us in the handshake.
_HANDSHAKE_REFUSALS = ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE", "ACCESS_DENIED")


def _unsent(err: BaseException, *, fresh: bool) -> GatewayError:
    """The connection failed while the request was being sent: etcd did not act on it."""
    if isinstance(err, TimeoutError):
        return GatewayError(errno.ETIMEDOUT, "cannot send in time", sent=False)
    if isinstance(err, ssl.SSLError) and fresh:  # TLS 1.3: a refusal comes after connect()
        return GatewayError(errno.EACCES, f"TLS refused ({err})", sent=False)
    reason = f"connection closed before the request was sent ({err or type(err).__name__})"
    return GatewayError(errno.ECONNREFUSED, reason, sent=False)


def _unanswered(err: BaseException, *, fresh: bool) -> GatewayError:
    """The connection failed while waiting for the answer: etcd may have acted on it.

    Except a handshake alert on a new connection (TLS 1.3 says a refused
    client certificate only then): etcd read nothing.
    """
    if isinstance(err, TimeoutError):
        return GatewayError(errno.ETIMEDOUT, "no answer in time", sent=True)
    alert = str(getattr(err, "reason", None) or "")
    refused = "ALERT" in alert and any(word in alert for word in _HANDSHAKE_REFUSALS)
    if fresh and isinstance(err, ssl.SSLError) and refused:
        return GatewayError(errno.EACCES, f"TLS refused ({err})", sent=False)
    return GatewayError(
        errno.ETIMEDOUT, f"connection lost ({err or type(err).__name__})", sent=True
    )


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server's close (or junk)."""
    poller = select.poll()  # not select(): it fails on descriptors past 1023
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
