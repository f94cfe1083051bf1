"""One LUXI client connection: frames in, answers out, strictly in order.

``Connection`` is an asyncio ``Protocol``, driven by the server's event loop
and nothing else (no task or stream per connection: a request costs a few
callbacks on the loop thread). Per connection:

* Requests are answered strictly in order. While one is in flight, further
  complete requests wait in a queue; once a second one is queued, the
  connection stops reading, so a client that pipelines requests is held
  back by its socket buffer instead of filling the daemon's memory.
* ``handle(connection, frame)`` turns a request into its encoded answer,
  either at once (bytes) or later (an asyncio future of bytes; cancelled if
  the client goes away first).
* A frame over ``max_message_size`` gets one error answer, then the
  connection is closed: the stream is out of step. So does every request
  of a peer that may not use the socket (``allowed`` is False).
* A client that sends no complete request within ``client_timeout`` seconds
  of connecting or of its last answer is closed; one with a request in
  flight never is. An answer the client does not take (the transport's
  buffer stays over its high-water mark) closes the connection after the
  same time.
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
from typing import Any, TypeVar, cast

from jobqueue import errors
from jobqueue.luxi import protocol

#: Turns one request frame into its encoded answer, now or later.
Handler = Callable[["Connection", bytes], "bytes | asyncio.Future[bytes]"]
_Callback = TypeVar("_Callback", bound=Callable[..., Any])


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


def error_answer(err: BaseException) -> bytes:
    """The encoded failure answer carrying ``err``."""
    return protocol.encode_response(False, errors.encode_error(err))


class Connection(asyncio.Protocol):
    """One client of a LUXI socket; see the module docstring.

    ``closed`` is done once the connection is gone.
    """

    def __init__(
        self,
        number: int,
        handle: Handler,
        *,
        read_only: bool,
        allowed: Callable[[Any], bool],
        on_open: Callable[[Connection], None],
        max_message_size: int,
        client_timeout: float,
        logger: logging.Logger,
    ) -> None:
        self.number = number
        self.read_only = read_only
        self._handle = handle
        self._allowed_rule = allowed
        self._allowed = False
        self._on_open = on_open
        self._buffer = protocol.FrameBuffer(max_message_size)
        self._client_timeout = client_timeout
        self._log = logger
        self._pending: collections.deque[bytes] = collections.deque()
        self._in_flight: asyncio.Future[bytes] | None = None  # a request being answered
        self._write_paused = False
        self._reading_paused = False
        self._eof = False
        self._closing = False  # no further request is started
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
        self._allowed = self.read_only or self._allowed_rule(transport.get_extra_info("socket"))
        self._touch()
        self._timer = self._loop.call_later(self._client_timeout, self._check_timeout)
        self._on_open(self)

    @_guarded
    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
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
        self._touch()

    @_guarded
    def resume_writing(self) -> None:
        self._write_paused = False
        self._touch()
        self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self._in_flight is not None:
            self._in_flight.cancel()  # a waiting WaitForJobChange stops waiting
        if exc is not None:
            self._log.debug("Connection %d lost: %s", self.number, exc)
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
    def _advance(self) -> None:
        """Start the next request if none is in flight; close when nothing more is coming."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._in_flight is not None:
            return
        if self._write_paused:
            return
        if self._pending and not self._closing:
            frame = self._pending.popleft()
            self._start(frame)
            if self._pending and not self._reading_paused and not transport.is_closing():
                transport.pause_reading()  # a pipelining client waits in its socket buffer
                self._reading_paused = True
            return
        if self._closing or self._eof:
            transport.close()
        elif self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _start(self, frame: bytes) -> None:
        if not self._allowed:
            denied = errors.AccessDenied("Permission denied: not allowed to use the master socket")
            self._last_word(error_answer(denied))
            return
        answer = self._handle(self, frame)
        if isinstance(answer, bytes):
            self._finish(answer)
        else:
            self._in_flight = answer
            answer.add_done_callback(self._on_answer)

    @_guarded
    def _on_answer(self, future: asyncio.Future[bytes]) -> None:
        self._in_flight = None
        if future.cancelled():
            return  # the connection is gone
        try:
            answer = future.result()
        except Exception as err:  # the handler promises bytes; stay usable anyway
            self._log.exception("Connection %d: the request handler failed", self.number)
            answer = error_answer(err)
        self._finish(answer)

    def _finish(self, answer: bytes) -> None:
        """Send ``answer`` to the request in flight, then go on with the next."""
        self._touch()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)  # may call pause_writing
        self._advance()

    def _last_word(self, answer: bytes) -> None:
        """Send ``answer`` and close once it is out, starting no other request."""
        self._closing = True
        self._pending.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)
            self._transport.close()

    # -- timeouts ----------------------------------------------------------------
    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    @_guarded
    def _check_timeout(self) -> None:
        """The client timeout's one timer: re-armed until the client is idle too long."""
        self._timer = None
        if self._transport is None or self._transport.is_closing():
            return
        if self._in_flight is not None:  # the daemon is the slow side
            self._timer = self._loop.call_later(self._client_timeout, self._check_timeout)
            return
        remaining = self._last_activity + self._client_timeout - self._loop.time()
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._check_timeout)
            return
        what = "take its answer" if self._write_paused else "send a complete request"
        self._log.debug(
            "Connection %d did not %s within %s seconds; closing it",
            self.number,
            what,
            self._client_timeout,
        )
        self._transport.abort()
