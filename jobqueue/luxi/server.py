"""The LUXI socket server: two Unix sockets, one event-loop thread, a dispatch table.

``LuxiServer`` listens on the master socket (every method; peers checked
with ``SO_PEERCRED``, see ``access``) and on the query socket (read-only
methods, anyone). Its asyncio loop runs in one dedicated thread, so the
daemon's main thread stays free for signals; there is no thread per
connection. Blocking queue calls run in a ``ThreadPoolExecutor``;
``WaitForJobChange`` waits on the ``JobFileWatcher`` in the loop and looks
at the job file there too, so hundreds of waiting clients cost no threads
and a change reaches its waiter without a thread hand-off.

Per connection, requests are handled strictly in order: the next one is
read only once the current one is answered. A malformed request, an
unknown method or bad arguments get a ``LuxiError`` answer and the
connection stays usable. A frame over ``max_message_size`` gets one error
answer, then the connection is closed. A connection that has not sent a
complete request within ``client_timeout`` seconds of connecting or of its
last answer is closed; one with a request in flight never is.

Version: a request may carry ``"version"``. One that differs from
``constants.LUXI_VERSION`` is logged and accepted anyway: newer Ganeti
clients send 3020000 for the same calls, and Ganeti's own later server
ignores the field too. Answers never carry a version, because a Ganeti
client fails any call whose answer has a version different from its own.

Errors are answered as ``{"success": false, "result": [ClassName, [args]]}``;
an exception that is not a ``GenericError`` is logged with its traceback and
answered as a ``GenericError`` carrying its text, never as a bare string.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from jobqueue import constants, errors
from jobqueue.luxi import access, methods, protocol
from jobqueue.luxi.methods import METHODS
from jobqueue.watcher import JobFileWatcher

_T = TypeVar("_T")

MASTER_SOCKET_MODE = 0o660
QUERY_SOCKET_MODE = 0o666
#: Seconds ``stop`` lets in-flight requests finish and their answers go out.
SHUTDOWN_GRACE = 5.0
_BACKLOG = 1024
_READ_SIZE = 65536
_NAME_IN_ERRORS = 100  # characters of a client-supplied method name quoted back


# -- connections --------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Connection:
    """A client connection; ``busy`` while it holds a request not yet answered."""

    number: int
    task: asyncio.Task[None]
    busy: bool = False


class LuxiServer:
    """The daemon's LUXI endpoint; see the module docstring.

    ``allowed_uids`` (default: root and the daemon's effective uid) and
    ``socket_group`` decide who may use the master socket. ``clock`` measures
    WaitForJobChange deadlines. ``start`` and ``stop`` may be called from any
    thread but the server's own; all other state belongs to the loop thread.
    """

    def __init__(
        self,
        queue: methods.QueueApi,
        *,
        master_path: str,
        query_path: str,
        queue_dir: str,
        socket_group: int | None = None,
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        client_timeout: float = constants.DEFAULT_CLIENT_TIMEOUT,
        handler_threads: int = 16,
        logger: logging.Logger | None = None,
        allowed_uids: Collection[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._master_path = master_path
        self._query_path = query_path
        self._queue_dir = queue_dir
        self._socket_group = socket_group
        self._max_message_size = max_message_size
        self._client_timeout = client_timeout
        self._log = logger or logging.getLogger(__name__)
        uids = {0, os.geteuid()} if allowed_uids is None else allowed_uids
        self._access = access.MasterAccess(allowed_uids=uids, group=socket_group)
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=handler_threads, thread_name_prefix="luxi-handler"
        )
        self._state_lock = threading.Lock()  # guards _thread, _ready and _stop_called
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stop_called = False
        self._abandoned_handlers = False
        # Loop-thread state, set up by _main.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._watcher: JobFileWatcher | None = None
        self._listeners: list[tuple[asyncio.AbstractServer, str, int]] = []
        self._connections: set[_Connection] = set()
        self._connection_numbers = itertools.count(1)
        self._closing = False

    # -- life cycle (caller's thread) -------------------------------------------
    def start(self) -> None:
        """Start the loop thread; return once both sockets accept connections.

        Raises LuxiError if a socket cannot be created, JobQueueError if the
        queue directory cannot be watched; nothing is left behind then.
        """
        with self._state_lock:
            if self._thread is not None:
                raise errors.ProgrammerError("A LuxiServer can be started only once")
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._ready = ready
            self._thread = thread = threading.Thread(
                target=self._run_loop, args=(ready,), name="luxi-server", daemon=True
            )
            thread.start()
        try:
            ready.result()
        except BaseException:
            thread.join()
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise

    def stop(self) -> None:
        """Stop serving and release everything; idempotent, bounded by SHUTDOWN_GRACE.

        New connections are refused at once, idle ones closed, in-flight
        requests get up to SHUTDOWN_GRACE seconds to be answered, waiting
        WaitForJobChange calls are answered "nochange". Waits for a
        concurrent ``start`` to finish first.
        """
        with self._state_lock:
            thread, ready = self._thread, self._ready
            if thread is None or self._stop_called:
                return
            if thread is threading.current_thread():
                raise errors.ProgrammerError("LuxiServer.stop called from its own loop thread")
            self._stop_called = True
        concurrent.futures.wait([ready])  # _loop and _stop_requested are set once it is done
        if self._loop is not None and self._stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop_requested.set)
        thread.join()
        self._executor.shutdown(wait=not self._abandoned_handlers, cancel_futures=True)

    def _run_loop(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as err:  # reported to start() or logged
            if not ready.done():
                ready.set_exception(err)
            else:
                self._log.exception("The LUXI server loop failed")

    # -- loop thread ------------------------------------------------------------
    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        """Open, report to ``start`` through ``ready``, serve until stopped, shut down."""
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self._open()
        except BaseException as err:
            self._close_listeners()
            if self._watcher is not None:
                self._watcher.stop()
            ready.set_exception(err)
            return
        ready.set_result(None)
        await self._stop_requested.wait()
        await self._shutdown()

    async def _open(self) -> None:
        """Start the watcher, then bind and serve both sockets."""
        self._watcher = JobFileWatcher(
            self._queue_dir, asyncio.get_running_loop(), logger=self._log
        )
        self._watcher.start()
        for path, mode, group, read_only in (
            (self._master_path, MASTER_SOCKET_MODE, self._socket_group, False),
            (self._query_path, QUERY_SOCKET_MODE, None, True),
        ):
            try:
                sock, inode = access.listen_unix(path, mode, group, backlog=_BACKLOG)
            except OSError as err:
                raise errors.LuxiError(f"Cannot listen on {path}: {err}") from err
            try:
                server = await asyncio.start_unix_server(
                    functools.partial(self._on_connect, read_only=read_only),
                    sock=sock,
                    backlog=_BACKLOG,
                )
            except BaseException:
                sock.close()
                access.remove_socket_file(path, inode)
                raise
            self._listeners.append((server, path, inode))
            self._log.info("Listening on %s", path)

    def _close_listeners(self) -> None:
        """Remove the socket files first (no new client finds them), then stop accepting."""
        for server, path, inode in self._listeners:
            access.remove_socket_file(path, inode)
            server.close()
        self._listeners.clear()

    async def _shutdown(self) -> None:
        """Refuse new clients, close idle ones, give busy ones SHUTDOWN_GRACE seconds."""
        self._closing = True
        self._close_listeners()
        for connection in list(self._connections):
            if not connection.busy:
                connection.task.cancel()
        if self._watcher is not None:
            self._watcher.stop()  # wakes every WaitForJobChange: they answer "nochange"
        tasks = [connection.task for connection in self._connections]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            if pending:
                self._log.warning("Dropping %d connections with unanswered requests", len(pending))
                self._abandoned_handlers = True
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        self._log.info("LUXI server stopped")

    async def _on_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, read_only: bool
    ) -> None:
        """Serve one connection until it closes; nothing escapes to other connections."""
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(next(self._connection_numbers), task)
        self._connections.add(connection)
        where = self._query_path if read_only else self._master_path
        try:
            peer = self._peer(writer)
            allowed = read_only or (peer is not None and self._access.allows(peer))
            denied = "" if allowed else " (denied)"
            self._log.debug("Connection %d to %s from %s%s", connection.number, where, peer, denied)
            if not self._closing:
                await self._serve(connection, reader, writer, read_only=read_only, allowed=allowed)
        except asyncio.CancelledError:
            self._log.debug("Connection %d closed by shutdown", connection.number)
        except (ConnectionError, TimeoutError) as err:
            self._log.debug("Connection %d lost: %s", connection.number, err)
        except Exception:
            self._log.exception("Connection %d failed", connection.number)
        finally:
            self._connections.discard(connection)
            writer.close()
            self._log.debug("Connection %d closed", connection.number)

    def _peer(self, writer: asyncio.StreamWriter) -> access.PeerCredentials | None:
        try:
            return access.peer_credentials(writer.get_extra_info("socket"))
        except OSError as err:
            self._log.warning("Cannot read the peer credentials of a connection: %s", err)
            return None

    async def _serve(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_only: bool,
        allowed: bool,
    ) -> None:
        """Answer requests in order; return when the connection should close."""
        buffer = protocol.FrameBuffer(self._max_message_size)
        pending: collections.deque[bytes] = collections.deque()
        while pending or not self._closing:
            if not pending:
                connection.busy = False
                try:
                    pending.extend(await self._read_frames(connection, reader, buffer))
                except errors.LuxiError as err:  # oversized: the stream is out of step
                    self._log.info("Connection %d: %s; closing it", connection.number, err)
                    await self._send(writer, self._error_answer(err))
                    return
                if not pending:
                    return
            connection.busy = True
            frame = pending.popleft()
            if not allowed:
                denied = errors.AccessDenied(
                    "Permission denied: not allowed to use the master socket"
                )
                await self._send(writer, self._error_answer(denied))
                return
            await self._send(writer, await self._answer(connection, frame, read_only))

    async def _read_frames(
        self, connection: _Connection, reader: asyncio.StreamReader, buffer: protocol.FrameBuffer
    ) -> list[bytes]:
        """Read until at least one request is complete; [] on EOF or idle timeout.

        Raises LuxiError when a message exceeds the size limit.
        """
        try:
            async with asyncio.timeout(self._client_timeout):
                while True:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        return []
                    frames = buffer.feed(data)
                    if frames:
                        return frames
        except TimeoutError:
            self._log.debug(
                "Connection %d sent no complete request within %s seconds; closing it",
                connection.number,
                self._client_timeout,
            )
            return []

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write one answer; TimeoutError if the client does not take it in time."""
        writer.write(data)
        async with asyncio.timeout(self._client_timeout):
            await writer.drain()

    @staticmethod
    def _error_answer(err: BaseException) -> bytes:
        return protocol.encode_response(False, errors.encode_error(err))

    async def _answer(self, connection: _Connection, frame: bytes, read_only: bool) -> bytes:
        """Handle one request frame and return the encoded answer; never raises."""
        try:
            request = protocol.parse_request(frame)
            self._log.debug(
                "Connection %d: %s", connection.number, request.method[:_NAME_IN_ERRORS]
            )
            return protocol.encode_response(True, await self._dispatch(request, read_only))
        except errors.GenericError as err:
            self._log.debug(
                "Connection %d: request failed: %s", connection.number, err, exc_info=True
            )
            return self._error_answer(err)
        except Exception as err:
            self._log.exception("Connection %d: unexpected error in a handler", connection.number)
            return self._error_answer(err)

    async def _dispatch(self, request: protocol.Request, read_only: bool) -> Any:
        """Look the method up, check access and arguments, run the handler."""
        name = request.method
        method = METHODS.get(name)
        if method is None:
            raise errors.LuxiError(f"Unknown method {name[:_NAME_IN_ERRORS]!r}")
        if read_only and not method.read_only:
            raise errors.AccessDenied(
                f"{name} is not allowed on the query socket; use the master socket"
            )
        if request.version is not None and request.version != constants.LUXI_VERSION:
            self._log.debug("Accepting %s from a client of LUXI version %s", name, request.version)
        args = method.convert_args(name, request.args)
        if method.is_async:
            return await method.call(self, *args)
        return await self._run_blocking(method.call, self._queue, *args)

    async def _run_blocking(self, func: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(func, *args))

    async def wait_for_job_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        timeout: float,
    ) -> Any:
        """Answer once the job differs from what the client saw, or "nochange".

        Subscribes before each look at the job, so no change is missed.
        JobLost from the queue propagates (an unknown job).
        """
        assert self._watcher is not None, "the watcher is started before any connection"
        deadline = self._clock() + methods.wfjc_timeout(timeout)
        with self._watcher.subscribe(job_id) as subscription:
            while True:
                # On the loop thread, not the handler pool: one read and parse of a
                # job file (~0.1 ms; ~15 ms at the 1 MiB log cap). The two thread
                # hand-offs of the pool doubled the p99 wake-up latency.
                result = self._queue.check_job_change(
                    job_id, fields, prev_job_info, prev_log_serial
                )
                if result is not None:
                    return result
                remaining = deadline - self._clock()
                if remaining <= 0 or self._closing or not await subscription.wait(remaining):
                    return constants.JOB_NOTCHANGED
