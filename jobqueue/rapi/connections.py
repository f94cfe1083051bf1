"""The HTTP face's open connections: how many there may be, and which have stalled.

Whatever a client does with its connection, the others stay served:

* at most ``max_connections`` are open at once, counted from the moment a
  connection is accepted (before TLS). At the limit, a new connection takes
  the place of one that is idle: still in its TLS handshake, or with
  aiohttp waiting for its next request (none being read whole, handled or
  answered) and nothing left to send; first of one that never had a
  request answered, accepted first, else of the keep-alive connection idle
  longest. (nginx, too, closes idle keep-alive connections when it runs
  out.) So clients that connect and say nothing, or never finish a
  request's head, cannot lock the others out. Only when none is idle is
  the new one closed at once (over plain HTTP it is first told 503),
  before it costs more than its socket;
* a connection with no request in progress for ``idle_timeout`` seconds
  is closed: one whose client never finishes the TLS handshake or a
  request's head, or an idle keep-alive connection;
* a connection whose client takes none of what it is sent for
  ``send_timeout`` seconds is closed, and what was held for it freed;
  so are, longest stalled first, those that hold more than
  ``max_pending_output`` bytes between them.

TLS is started here, on the accepted connection (``loop.start_tls``), so
that a connection is counted and timed from its first moment.
``Connections.protocol_factory`` wraps aiohttp's protocol factory (the
runner's ``server``) for ``loop.create_server`` (without ``ssl``); the
application's outermost middleware reports each request's start and end
(``request_started``, ``request_ended``, by ``request.protocol``);
``watch`` checks every connection once a second until cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

#: Connections served at once.
DEFAULT_MAX_CONNECTIONS = 256
#: Seconds a connection may go without a request in progress.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds a client may take none of what it is sent.
DEFAULT_SEND_TIMEOUT = 30.0
#: Bytes held for clients that have not taken them, all connections together.
DEFAULT_MAX_PENDING_OUTPUT = 256 * 1024 * 1024
#: Seconds between two checks of every connection.
CHECK_INTERVAL = 1.0
_REFUSAL_BODY = b'{"code": 503, "message": "Too many connections", "explain": ""}\n'
#: What a plain-HTTP connection past the limit is told before it is closed.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Connection:
    """One accepted connection; its fields belong to ``Connections``."""

    def __init__(self, inner: Any, raw: asyncio.Transport, now: float) -> None:
        self.inner = inner  # aiohttp's protocol for it
        self.raw = raw  # the TCP transport
        self.transport: asyncio.Transport | None = None  # what aiohttp writes to, once given
        self.requests = 0  # in progress (aiohttp serves one at a time per connection)
        self.answered = False  # a request of it has ended
        self.idle_since = now
        self.pending = 0  # bytes waiting to be sent, at the last check
        self.sending_since = now  # since when the client took nothing, if ``pending``
        self.early: list[bytes] | None = []  # decrypted before aiohttp had its transport


class _Accepted(asyncio.Protocol):
    """The protocol of an accepted TCP connection; see ``Connections``."""

    def __init__(self, owner: Connections, make_inner: Callable[[], Any]) -> None:
        self._owner = owner
        self._make_inner = make_inner
        self._connection: _Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._connection = self._owner._accept(self._make_inner, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection is not None:  # plain HTTP (under TLS the TLS layer reports it)
            self._owner._closed(self._connection)
            self._connection.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._connection is not None:
            self._connection.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._connection is None:
            return None
        keep_open: bool | None = self._connection.inner.eof_received()
        return keep_open

    def pause_writing(self) -> None:
        if self._connection is not None:
            self._connection.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._connection is not None:
            self._connection.inner.resume_writing()


class _Decrypted(asyncio.Protocol):
    """The protocol under TLS: what arrives before aiohttp has its transport is kept."""

    def __init__(self, owner: Connections, connection: _Connection) -> None:
        self._owner = owner
        self._connection = connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._closed(self._connection)
        if self._connection.transport is not None:
            self._connection.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._connection.early is not None:
            self._connection.early.append(data)
        else:
            self._connection.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._connection.early is not None:
            return None
        keep_open: bool | None = self._connection.inner.eof_received()
        return keep_open

    def pause_writing(self) -> None:
        if self._connection.transport is not None:
            self._connection.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._connection.transport is not None:
            self._connection.inner.resume_writing()


class Connections:
    """Counts and watches the open connections; see the module docstring.

    ``tls`` is the server's context, or None for plain HTTP. Runs on the
    event loop's thread only, so it needs no lock.
    """

    def __init__(
        self,
        tls: ssl.SSLContext | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_pending_output = max_pending_output
        self._tls = tls
        self._clock = clock
        self._log = logger or logging.getLogger("jobqueue.rapi")
        self._open: dict[int, _Connection] = {}  # by id() of aiohttp's protocol
        self._refused = 0
        self._replaced = 0
        self._handshakes: set[asyncio.Task[None]] = set()

    def protocol_factory(self, make_inner: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A factory for ``loop.create_server``: connections served by ``make_inner``'s
        protocols, counted and watched."""
        return lambda: _Accepted(self, make_inner)

    def count(self) -> int:
        """Connections open now."""
        return len(self._open)

    def _accept(self, make_inner: Callable[[], Any], raw: asyncio.Transport) -> _Connection | None:
        if len(self._open) >= self.max_connections and not self._make_room():
            self._refused += 1
            self._now_and_then(self._refused, "refusing more (%d refused so far)")
            if self._tls is None:
                raw.write(REFUSAL)
            raw.close()
            return None
        connection = _Connection(make_inner(), raw, self._clock())
        self._open[id(connection.inner)] = connection
        if self._tls is None:
            connection.early = None
            self._give(connection, raw)
            return connection
        task = asyncio.get_running_loop().create_task(self._start_tls(connection, self._tls))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        return None  # from now on the TLS layer gets the connection's events

    async def _start_tls(self, connection: _Connection, context: ssl.SSLContext) -> None:
        if connection.raw.is_closing():  # closed to make room before its turn came
            return
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                connection.raw,
                _Decrypted(self, connection),
                context,
                server_side=True,
                ssl_handshake_timeout=self.idle_timeout,
            )
        except (OSError, TimeoutError) as err:  # ssl.SSLError and ConnectionError are OSErrors
            self._log.debug("TLS handshake with %s failed: %s", _peer(connection.raw), err)
            self._closed(connection)
            connection.raw.abort()
            return
        if transport is None or connection.raw.is_closing():
            self._closed(connection)
            return
        self._give(connection, transport)
        early, connection.early = connection.early or [], None
        for data in early:
            connection.inner.data_received(data)

    def _make_room(self) -> bool:
        """Close the idle connection that may best make room for a new one; False if none is."""
        spare = [connection for connection in self._open.values() if self._idle(connection)]
        if not spare:
            return False
        victim = min(spare, key=lambda c: (c.answered, c.idle_since))
        self._replaced += 1
        self._now_and_then(self._replaced, "closing idle ones to let new ones in (%d so far)")
        self._close(victim, "idle, and a new connection needs its place", logging.DEBUG)
        return True

    def _now_and_then(self, count: int, what: str) -> None:
        """Warn of the ``count``-th event of a kind: the first, then every thousandth."""
        if count == 1 or count % 1000 == 0:
            self._log.warning("%d connections open: " + what, len(self._open), count)

    def _idle(self, connection: _Connection) -> bool:
        """Whether closing ``connection`` loses nothing but the connection itself."""
        if connection.transport is None:  # in its TLS handshake: aiohttp has nothing of it
            return True
        # aiohttp's own test of an idle connection (its keep-alive timeout):
        # waiting for the next request, none parsed, handled or being answered.
        # Without that attribute (another aiohttp), none counts as idle.
        waiter = getattr(connection.inner, "_waiter", None)
        return (
            waiter is not None
            and not waiter.done()
            and not connection.requests
            and not self._pending(connection)
        )

    def _give(self, connection: _Connection, transport: asyncio.Transport) -> None:
        connection.transport = transport
        connection.inner.connection_made(transport)

    def _closed(self, connection: _Connection) -> None:
        self._open.pop(id(connection.inner), None)

    def request_started(self, protocol: object) -> None:
        """A request's head arrived on the connection of aiohttp's ``protocol``."""
        connection = self._open.get(id(protocol))
        if connection is not None:
            connection.requests += 1

    def request_ended(self, protocol: object) -> None:
        """The request on that connection was answered (or its client went away)."""
        connection = self._open.get(id(protocol))
        if connection is not None:
            connection.requests = max(0, connection.requests - 1)
            connection.answered = True
            connection.idle_since = self._clock()

    async def watch(self) -> None:
        """Check every connection once a second, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            self.check()

    def check(self) -> None:
        """Close the connections that stalled (see the module docstring)."""
        now = self._clock()
        for connection in list(self._open.values()):
            reason = self._stalled(connection, now)
            if reason is not None:
                self._close(connection, reason)
        held = sum(connection.pending for connection in self._open.values())
        stalled = sorted(
            (c for c in self._open.values() if c.pending), key=lambda c: c.sending_since
        )
        for connection in stalled:
            if held <= self.max_pending_output:
                break
            held -= connection.pending
            reason = f"{held + connection.pending} bytes held for clients, over the limit"
            self._close(connection, reason)

    def _close(self, connection: _Connection, reason: str, level: int = logging.INFO) -> None:
        self._log.log(level, "Closing the connection of %s: %s", _peer(connection.raw), reason)
        self._open.pop(id(connection.inner), None)
        connection.raw.abort()

    def _pending(self, connection: _Connection) -> int:
        """Bytes waiting to be sent to the client of ``connection``."""
        pending = connection.raw.get_write_buffer_size()
        if connection.transport not in (None, connection.raw):  # and what TLS still holds
            pending += connection.transport.get_write_buffer_size()
        return pending

    def _stalled(self, connection: _Connection, now: float) -> str | None:
        pending = self._pending(connection)
        if pending == 0 or pending < connection.pending:
            connection.sending_since = now  # the client took something
        connection.pending = pending
        if pending and now - connection.sending_since >= self.send_timeout:
            return f"it took nothing of {pending} bytes for {self.send_timeout:g}s"
        if not connection.requests and now - connection.idle_since >= self.idle_timeout:
            return f"no request for {self.idle_timeout:g}s"
        return None


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "an unknown peer")
