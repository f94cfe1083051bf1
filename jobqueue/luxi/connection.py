"""One LUXI client connection: frames in, answers out, strictly in order.

``Connection`` is an asyncio ``BufferedProtocol``, driven by the server's
event loop and nothing else (no task or stream per connection: a request
costs a few callbacks on the loop thread). It reads into one buffer that
the server lends all its connections (``ReadBuffer``), from which each read
is copied out at once: asyncio's plain ``Protocol`` allocates 256 KiB for
every read, which glibc maps and unmaps each time (measured: about 10 us a
read, and a cross-CPU TLB flush in a daemon with many threads). Per
connection:

* The peer's credentials (``SO_PEERCRED``) are read once, at connect; the
  server's ``Gate`` may refuse the connection then (too many on its socket):
  the client gets one error answer and the connection is closed.
* Requests are answered strictly in order. While one is in flight or its
  answer is still going out, further complete requests wait in a queue and
  the connection stops reading, so a client that pipelines requests, or
  sends requests without reading the answers, is held back by its socket
  buffer instead of filling the daemon's memory.
* ``handle(connection, frame)`` turns a request into its encoded answer,
  either at once or later (an asyncio future; cancelled if the client goes
  away first). An answer is a list of pieces; they are handed to the socket
  one at a time, only once the previous one has been taken (the transport's
  buffer holds at most one piece). Every byte not yet taken by the client is
  charged to the server's ``OutputBudget`` until it is.
* A frame over ``max_message_size`` gets one error answer, then the
  connection is closed: the stream is out of step. So does every request
  of a peer the gate does not allow on the socket at all.
* A client that sends no complete request within ``client_timeout`` seconds
  of connecting or of its last answer is closed; one with a request in
  flight never is. A client that takes none of its answer for
  ``send_timeout`` seconds is closed.
* When the client closes its socket, a request in flight is cancelled (a
  waiting ``WaitForJobChange`` stops waiting; a call already running in a
  handler thread completes, unanswered). After a half-close (the client
  shut only its sending side) the requests already received are still
  answered, then the connection closes.

Everything here runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import select
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from jobqueue import errors
from jobqueue.luxi import access, protocol
from jobqueue.model import Submitter

#: An encoded answer: the pieces of one terminated message, in order.
Answer = list[bytes]
#: Turns one request frame into its encoded answer, now or later.
Handler = Callable[["Connection", bytes], "Answer | asyncio.Future[Answer]"]
_Callback = TypeVar("_Callback", bound=Callable[..., Any])

#: Bytes a connection reads from its socket at a time.
READ_SIZE = 65536


class ReadBuffer:
    """The buffer that the connections of one event loop read into, in turn.

    Safe to share because a read and the copying out of what it read
    happen in one callback of the loop thread.
    """

    def __init__(self, size: int = READ_SIZE) -> None:
        self.view = memoryview(bytearray(size))


class Gate(Protocol):
    """The server's side of a connection's life (one per socket)."""

    read_only: bool

    def opened(self, connection: Connection) -> errors.GenericError | None:
        """Count a new connection; the error to refuse it with, or None to serve it."""

    def closed(self, connection: Connection) -> None:
        """The connection is gone."""

    def may_change(self, peer: access.PeerCredentials | None) -> bool:
        """Whether ``peer`` may call methods that change something."""

    def caller(self, peer: access.PeerCredentials | None) -> Submitter | None:
        """Who ``peer`` is, as the queue records and checks it (None: unknown)."""


class OutputBudget:
    """Admits read-only requests to the reader threads, while answers not taken leave room.

    ``held`` counts the bytes of answers the daemon holds for clients that
    have not taken them yet. A read-only request starts only while ``held``
    is under ``limit`` and fewer than ``workers`` reads run; the others wait
    here without a thread, those from the master socket ahead of the others,
    and a request whose client has gone is dropped when its turn comes.
    Loop thread only.
    """

    def __init__(self, limit: int, workers: int) -> None:
        self.limit = limit
        self.workers = workers
        self.held = 0
        self.running = 0
        self._first: collections.deque[Callable[[], bool]] = collections.deque()
        self._waiting: collections.deque[Callable[[], bool]] = collections.deque()

    def adjust(self, delta: int) -> None:
        """Add ``delta`` bytes held (negative: bytes taken by clients); admit what now fits."""
        self.held += delta
        self._admit()

    def when_room(self, start: Callable[[], bool], *, first: bool = False) -> None:
        """Have ``start`` called when a read may begin; it returns False if it did not start.

        ``first``: ahead of every request queued without it.
        """
        (self._first if first else self._waiting).append(start)
        self._admit()

    def finished(self) -> None:
        """A read that ``start`` began is over (its answer is on its way, or dropped)."""
        self.running -= 1
        self._admit()

    def waiting(self) -> int:
        return len(self._first) + len(self._waiting)

    def _admit(self) -> None:
        while self.held < self.limit and self.running < self.workers:
            queue = self._first or self._waiting
            if not queue:
                return
            if queue.popleft()():
                self.running += 1


def _guarded(callback: _Callback) -> _Callback:
    """A loop callback of a ``Connection`` that drops its connection when it fails.

    Whatever goes wrong with one client is logged and ends that connection;
    the loop and every other connection go on.
    """

    @functools.wraps(callback)
    def run(self: Connection, *args: Any) -> Any:
        try:
            return callback(self, *args)
        except Exception:
            self._log.exception("Connection %d failed", self.number)
            self.abort()
            return None

    return cast(_Callback, run)


def _hung_up(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the peer closed its socket entirely, rather than only its sending side.

    Both end in end-of-file; only a socket shut in both directions polls as
    ``POLLHUP``. A client that merely half-closed still reads its answers.
    """
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), 0)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def error_answer(err: BaseException) -> Answer:
    """The encoded failure answer carrying ``err``."""
    return [protocol.encode_response(False, errors.encode_error(err))]


class Connection(asyncio.BufferedProtocol):
    """One client of a LUXI socket; see the module docstring.

    ``closed`` is done once the connection is gone; ``peer`` holds the
    peer's credentials (None if they could not be read), ``caller`` who
    that is for the queue, and ``may_change`` whether it may call methods
    that change something; all three are set once, at connect.
    """

    def __init__(
        self,
        number: int,
        handle: Handler,
        *,
        gate: Gate,
        budget: OutputBudget,
        read_buffer: ReadBuffer,
        max_message_size: int,
        client_timeout: float,
        send_timeout: float,
        logger: logging.Logger,
    ) -> None:
        self.number = number
        self.read_only = gate.read_only
        self.peer: access.PeerCredentials | None = None
        self.caller: Submitter | None = None
        self.may_change = False
        self._handle = handle
        self._gate = gate
        self._budget = budget
        self._read_into = read_buffer.view
        self._buffer = protocol.FrameBuffer(max_message_size)
        self._client_timeout = client_timeout
        self._send_timeout = send_timeout
        self._log = logger
        self._pending: collections.deque[bytes] = collections.deque()
        self._in_flight: asyncio.Future[Answer] | None = None  # a request being answered
        self._outgoing: collections.deque[bytes] = collections.deque()  # answer pieces to send
        self._outgoing_size = 0
        self._charged = 0  # bytes charged to the budget: _outgoing plus the transport's buffer
        self._write_paused = False
        self._reading_paused = False
        self._eof = False
        self._closing = False  # no further request is started
        self._counted = False  # the gate counts this connection
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------
    @_guarded
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # Pause (and hear of the drain) as soon as the kernel does not take a
        # whole piece: the transport's own buffer then holds at most one piece.
        transport.set_write_buffer_limits(high=0)
        self._touch()
        self.peer = self._read_peer(transport)  # the gate counts connections by user
        refusal = self._gate.opened(self)
        if refusal is not None:
            self._last_word(error_answer(refusal))
            return
        self._counted = True
        self.caller = self._gate.caller(self.peer)
        self.may_change = self._gate.may_change(self.peer)
        self._timer = self._loop.call_later(self._client_timeout, self._check_timeout)

    def _read_peer(self, transport: asyncio.Transport) -> access.PeerCredentials | None:
        try:
            return access.peer_credentials(transport.get_extra_info("socket"))
        except OSError as err:
            self._log.warning("Cannot read the peer credentials of a connection: %s", err)
            return None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_into

    @_guarded
    def buffer_updated(self, nbytes: int) -> None:
        if self._closing:
            return
        data = bytes(self._read_into[:nbytes])
        try:
            frames = self._buffer.feed(data)
        except errors.LuxiError as err:  # oversized: the stream is out of step
            self._log.info("Connection %d: %s; closing it", self.number, err)
            self._last_word(error_answer(err))
            return
        if frames:
            self._pending.extend(frames)
            self._advance()

    @_guarded
    def eof_received(self) -> bool:
        self._eof = True
        if _hung_up(self._transport):
            self._log.debug("Connection %d: the client went away", self.number)
            return False  # closes; connection_lost cancels the request in flight
        self._advance()
        return True  # half-closed: the answers owed still go out, then _advance closes

    def pause_writing(self) -> None:
        self._write_paused = True
        self._touch()  # the send timeout counts from here
        self._arm_timer(self._send_timeout)

    @_guarded
    def resume_writing(self) -> None:
        self._write_paused = False
        self._touch()  # the client took everything handed to the socket
        self._send_more()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._pending.clear()
        self._outgoing.clear()
        self._outgoing_size = 0
        self._budget.adjust(-self._charged)
        self._charged = 0
        if self._timer is not None:
            self._timer.cancel()
        if self._in_flight is not None:
            self._in_flight.cancel()  # a waiting WaitForJobChange stops waiting
        if exc is not None:
            self._log.debug("Connection %d lost: %s", self.number, exc)
        if self._counted:
            self._counted = False
            self._gate.closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- for the server ----------------------------------------------------------
    def close_when_idle(self) -> None:
        """Start no further request; close now if nothing is owed, else once answered."""
        self._closing = True
        self._pending.clear()
        self._advance()

    def abort(self) -> None:
        """Drop the connection at once, answered or not."""
        if self._transport is not None:
            self._transport.abort()

    # -- requests ----------------------------------------------------------------
    def _busy(self) -> bool:
        """Whether a request is in flight or its answer is still going out."""
        return self._in_flight is not None or bool(self._outgoing) or self._write_paused

    def _advance(self) -> None:
        """Start the next request if nothing is owed; close when nothing more is coming."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self._busy():
            if self._pending and not self._closing:
                self._start(self._pending.popleft())
            elif self._closing or self._eof:
                transport.close()
                return
        self._update_reading(transport)

    def _update_reading(self, transport: asyncio.Transport) -> None:
        """Read only while no complete request waits: waiting ones stay in the client's buffer."""
        if transport.is_closing():
            return
        if self._pending and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not self._pending and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _start(self, frame: bytes) -> None:
        if self._gate.read_only is False and not self.may_change:
            denied = errors.AccessDenied("Permission denied: not allowed to use the master socket")
            self._last_word(error_answer(denied))
            return
        answer = self._handle(self, frame)
        if isinstance(answer, list):
            self._finish(answer)
        else:
            self._in_flight = answer
            answer.add_done_callback(self._on_answer)

    @_guarded
    def _on_answer(self, future: asyncio.Future[Answer]) -> None:
        self._in_flight = None
        if future.cancelled():
            return  # the connection is gone
        try:
            answer = future.result()
        except Exception as err:  # the handler promises an answer; stay usable anyway
            self._log.exception("Connection %d: the request handler failed", self.number)
            answer = error_answer(err)
        self._finish(answer)

    def _finish(self, answer: Answer) -> None:
        """Queue ``answer`` for the request in flight, start sending it."""
        self._touch()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._outgoing.extend(answer)
        self._outgoing_size += sum(len(piece) for piece in answer)
        self._send_more()

    def _send_more(self) -> None:
        """Hand pieces to the socket while it takes them; go on once all are taken."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        while self._outgoing and not self._write_paused:
            piece = self._outgoing.popleft()
            self._outgoing_size -= len(piece)
            transport.write(piece)  # calls pause_writing unless the kernel took it all
        self._update_charge(transport)
        self._advance()

    def _update_charge(self, transport: asyncio.Transport) -> None:
        owed = self._outgoing_size + transport.get_write_buffer_size()
        self._budget.adjust(owed - self._charged)
        self._charged = owed

    def _last_word(self, answer: Answer) -> None:
        """Send ``answer`` and close once it is out, starting no other request."""
        self._closing = True
        self._pending.clear()
        if self._transport is not None and not self._transport.is_closing():
            for piece in answer:
                self._transport.write(piece)
            self._transport.close()

    # -- timeouts ----------------------------------------------------------------
    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    def _arm_timer(self, delay: float) -> None:
        """Have ``_check_timeout`` run within ``delay`` seconds (sooner if already due)."""
        if self._timer is not None:
            if self._timer.when() <= self._loop.time() + delay:
                return
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._check_timeout)

    @_guarded
    def _check_timeout(self) -> None:
        """The timeouts' one timer: re-armed until the client is idle or stuck too long."""
        self._timer = None
        if self._transport is None or self._transport.is_closing():
            return
        if self._in_flight is not None:  # the daemon is the slow side
            self._timer = self._loop.call_later(self._client_timeout, self._check_timeout)
            return
        sending = bool(self._outgoing) or self._write_paused
        limit = self._send_timeout if sending else self._client_timeout
        remaining = self._last_activity + limit - self._loop.time()
        if remaining > 0:
            self._timer = self._loop.call_later(min(remaining, limit), self._check_timeout)
            return
        what = "take its answer" if sending else "send a complete request"
        self._log.debug(
            "Connection %d did not %s within %s seconds; closing it", self.number, what, limit
        )
        self._transport.abort()
