"""The LUXI socket server: two Unix sockets, one event-loop thread, a dispatch table.

``LuxiServer`` listens on the master socket (every method; peers checked
with ``SO_PEERCRED``, see ``access``) and on the query socket (read-only
methods, anyone). Its asyncio loop runs in one dedicated thread, so the
daemon's main thread stays free for signals; there is no thread per
connection, and no task either: each client is a ``connection.Connection``
protocol (ordering, size limit, timeouts), which hands every request frame
to ``_handle`` here.

Blocking queue calls run in a ``ThreadPoolExecutor``, which also encodes
their answers, so a large answer costs the loop thread nothing;
``WaitForJobChange`` waits in the loop (``jobwaits``) for the queue to
publish a change of its job and compares the published state there, so
hundreds of waiting clients cost no threads and no file is read for a live
job. A waiter whose client goes away stops waiting at once.

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
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from jobqueue import constants, errors
from jobqueue.luxi import access, methods, protocol
from jobqueue.luxi.connection import Connection, error_answer
from jobqueue.luxi.jobwaits import JobWaits
from jobqueue.luxi.methods import METHODS

MASTER_SOCKET_MODE = 0o660
QUERY_SOCKET_MODE = 0o666
#: Seconds ``stop`` lets in-flight requests finish and their answers go out.
SHUTDOWN_GRACE = 5.0
_BACKLOG = 1024
_NAME_IN_ERRORS = 100  # characters of a client-supplied method name quoted back


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
        reader: methods.ReaderApi,
        *,
        master_path: str,
        query_path: str,
        socket_group: int | None = None,
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        client_timeout: float = constants.DEFAULT_CLIENT_TIMEOUT,
        handler_threads: int = 16,
        logger: logging.Logger | None = None,
        allowed_uids: Collection[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._services = methods.Services(queue, reader)
        self._reader = reader
        self._master_path = master_path
        self._query_path = query_path
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
        self._waits: JobWaits | None = None
        self._listeners: list[tuple[asyncio.AbstractServer, str, int]] = []
        self._connections: set[Connection] = set()
        self._connection_numbers = itertools.count(1)
        self._closing = False

    def set_services(self, queue: methods.QueueApi, reader: methods.ReaderApi) -> None:
        """Serve later requests with ``queue`` and ``reader`` (a standby taking over).

        Any thread. Requests already being handled finish with the old ones.
        ``reader`` must watch jobs through the same view as the first reader
        did, so that waiting WaitForJobChange calls keep hearing of changes.
        """
        self._services = methods.Services(queue, reader)
        self._reader = reader

    # -- life cycle (caller's thread) -------------------------------------------
    def start(self) -> None:
        """Start the loop thread; return once both sockets accept connections.

        Raises LuxiError if a socket cannot be created; nothing is left behind then.
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
        self._waits = JobWaits(self._reader.watch_job, self._loop)
        try:
            await self._open()
        except BaseException as err:
            self._close_listeners()
            ready.set_exception(err)
            return
        ready.set_result(None)
        await self._stop_requested.wait()
        await self._shutdown()

    async def _open(self) -> None:
        """Bind and serve both sockets."""
        for path, mode, group, read_only in (
            (self._master_path, MASTER_SOCKET_MODE, self._socket_group, False),
            (self._query_path, QUERY_SOCKET_MODE, None, True),
        ):
            try:
                sock, inode = access.listen_unix(path, mode, group, backlog=_BACKLOG)
            except OSError as err:
                raise errors.LuxiError(f"Cannot listen on {path}: {err}") from err
            try:
                server = await asyncio.get_running_loop().create_unix_server(
                    self._connection_factory(read_only), sock=sock, backlog=_BACKLOG
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
            connection.close_when_idle()
        if self._waits is not None:
            self._waits.wake_all()  # every WaitForJobChange answers "nochange"
        waiting = [connection.closed for connection in self._connections]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=SHUTDOWN_GRACE)
            if pending:
                self._log.warning("Dropping %d connections with unanswered requests", len(pending))
                self._abandoned_handlers = True
                for connection in list(self._connections):
                    connection.abort()
                await asyncio.wait(pending)
        self._log.info("LUXI server stopped")

    def _connection_factory(self, read_only: bool) -> Callable[[], Connection]:
        def make() -> Connection:
            return Connection(
                next(self._connection_numbers),
                self._handle,
                read_only=read_only,
                allowed=self._allows,
                on_open=self._track,
                max_message_size=self._max_message_size,
                client_timeout=self._client_timeout,
                logger=self._log,
            )

        return make

    def _allows(self, sock: Any) -> bool:
        """Whether the peer on ``sock`` may use the master socket."""
        try:
            peer = access.peer_credentials(sock)
        except OSError as err:
            self._log.warning("Cannot read the peer credentials of a connection: %s", err)
            return False
        allowed = self._access.allows(peer)
        self._log.debug("Connection from %s%s", peer, "" if allowed else " (denied)")
        return allowed

    def _track(self, connection: Connection) -> None:
        """Keep ``connection`` in ``_connections`` while it is open."""
        self._connections.add(connection)
        connection.closed.add_done_callback(lambda _: self._connections.discard(connection))
        if self._closing:
            connection.close_when_idle()

    def _handle(self, connection: Connection, frame: bytes) -> bytes | asyncio.Future[bytes]:
        """Answer one request frame: encoded now, or a future of it; never raises."""
        try:
            request = protocol.parse_request(frame)
            self._log.debug(
                "Connection %d: %s", connection.number, request.method[:_NAME_IN_ERRORS]
            )
            method, args = self._resolve(request, connection.read_only)
            loop = asyncio.get_running_loop()
            if method.is_async:
                return loop.create_task(self._answer_async(connection, method.call(self, *args)))
            answer: asyncio.Future[bytes] = loop.create_future()
            self._executor.submit(self._answer_blocking, connection, answer, method.call, args)
            return answer
        except Exception as err:
            return self._failure(connection, err)

    def _failure(self, connection: Connection, err: Exception) -> bytes:
        """The answer to a failed request; unexpected errors are logged with their traceback."""
        if isinstance(err, errors.GenericError):
            self._log.debug(
                "Connection %d: request failed: %s", connection.number, err, exc_info=True
            )
        else:
            self._log.exception("Connection %d: unexpected error in a handler", connection.number)
        return error_answer(err)

    def _resolve(self, request: protocol.Request, read_only: bool) -> tuple[methods.Method, Any]:
        """Look the method up, check access and arguments."""
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
        return method, method.convert_args(name, request.args)

    async def _answer_async(self, connection: Connection, call: Awaitable[Any]) -> bytes:
        try:
            return protocol.encode_response(True, await call)
        except Exception as err:
            return self._failure(connection, err)

    def _answer_blocking(
        self,
        connection: Connection,
        answer: asyncio.Future[bytes],
        call: Callable[..., Any],
        args: Any,
    ) -> None:
        """Run a queue call in a handler thread; encode its answer there too."""
        try:
            data = protocol.encode_response(True, call(self._services, *args))
        except Exception as err:
            data = self._failure(connection, err)
        loop = answer.get_loop()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(_resolve_future, answer, data)

    async def wait_for_job_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        timeout: float,
    ) -> Any:
        """Answer once the job differs from what the client saw, or "nochange".

        Makes its waiter before each look at the job, so no change is missed.
        A live, unfinished job is compared as last published, in the loop; any
        other is read from the store in a handler thread. JobLost for an
        unknown job.
        """
        assert self._waits is not None, "made before any connection"
        deadline = self._clock() + methods.wfjc_timeout(timeout)
        with self._waits.waiter(job_id) as waiter:
            while True:
                job = waiter.latest
                if job is None:
                    loop = asyncio.get_running_loop()
                    job = await loop.run_in_executor(self._executor, self._reader.read_job, job_id)
                if job is None:
                    raise errors.JobLost(f"Job {job_id} not found")
                result = self._reader.job_change(job, fields, prev_job_info, prev_log_serial)
                if result is not None:
                    return result
                remaining = deadline - self._clock()
                if remaining <= 0 or self._closing or not await waiter.wait(remaining):
                    return constants.JOB_NOTCHANGED

    def waiter_count(self) -> int:
        """WaitForJobChange calls waiting now (for tests and diagnostics); loop thread only."""
        return 0 if self._waits is None else self._waits.waiter_count()


def _resolve_future(future: asyncio.Future[bytes], data: bytes) -> None:
    """Complete ``future`` with ``data`` unless its client has gone (it was cancelled)."""
    if not future.done():
        future.set_result(data)
