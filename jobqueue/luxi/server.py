"""The LUXI socket server: two Unix sockets, one event-loop thread, a dispatch table.

``LuxiServer`` listens on the master socket (every method, for the peers
``access.MasterAccess`` allows, checked with ``SO_PEERCRED``) and on the
query socket (read-only methods for whoever may open it; methods that change
something only for the peers the master socket would serve, as Ganeti's own
daemon does, so Ganeti 2.11+ tools can use one socket). Its asyncio loop
runs in one dedicated thread, so the daemon's main thread stays free for
signals; there is no thread per connection, and no task either: each client
is a ``connection.Connection`` protocol (ordering, size limit, timeouts),
which hands every request frame to ``_handle`` here.

Blocking calls run in two thread pools, which also encode their answers:
one for the methods that change something (submissions, cancels), one for
read-only questions. However many clients ask big questions, submissions
never wait for a handler thread behind them. An answer is encoded row by row
and refused with ``AnswerTooLarge`` once it passes ``max_answer_size``, so
no larger answer is ever built. Answers not yet taken by their clients are
charged to an ``OutputBudget``; while it is spent, read-only requests wait
their turn without a thread. ``WaitForJobChange`` waits in the loop
(``jobwaits``) for the queue to publish a change of its job and compares the
published state there, so hundreds of waiting clients cost no threads and no
file is read for a live job. A waiter whose client goes away stops waiting
at once.

Descriptors: each socket serves at most ``max_connections`` clients, a user
at most ``max_connections_per_user`` of them, and root and the daemon's user
a few more (``listeners``); one more is answered with a ``LuxiError`` and
closed at once, so clients can never take the descriptors the daemon needs
for its own files and commands, nor one user every connection. Refusals,
and the event loop's own errors, are logged at a bounded rate.

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
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from jobqueue import constants, errors
from jobqueue.luxi import access, methods, protocol
from jobqueue.luxi.batching import SubmissionBatches
from jobqueue.luxi.connection import Answer, Connection, OutputBudget, ReadBuffer, error_answer
from jobqueue.luxi.jobwaits import JobWaits
from jobqueue.luxi.listeners import Listener
from jobqueue.luxi.methods import METHODS
from jobqueue.metrics import Metrics

MASTER_SOCKET_MODE = 0o660
QUERY_SOCKET_MODE = 0o660
PUBLIC_QUERY_SOCKET_MODE = 0o666
DEFAULT_MAX_ANSWER_SIZE = constants.DEFAULT_MAX_MESSAGE_SIZE  # what clients accept by default
DEFAULT_OUTPUT_BUDGET = 64 * 1024 * 1024
DEFAULT_SEND_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds between two log lines about refused connections or loop errors.
LOG_INTERVAL = 10.0
#: Seconds ``stop`` lets in-flight requests finish and their answers go out.
SHUTDOWN_GRACE = 5.0
#: Connections the kernel queues for us (they hold no descriptor of ours yet).
LISTEN_BACKLOG = 1024
#: How many connections asyncio accepts in one go before any of them can be
#: refused: a burst holds this many descriptors beyond the connection limit.
ACCEPT_BATCH = 128
#: Bytes of a ReadJobOutput answer that are not output (keys, numbers, framing).
_ANSWER_OVERHEAD = 1024
_NAME_IN_ERRORS = 100  # characters of a client-supplied method name quoted back


class RateLimitedLog:
    """Log a kind of event at most once per ``interval`` seconds, counting the rest."""

    def __init__(
        self, log: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message`` unless a ``kind`` line was logged within the interval."""
        now = self._clock()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} more like this not logged)"
        self._log.warning(message, *args)
        self._next[kind] = now + self._interval


class LuxiServer:
    """The daemon's LUXI endpoint; see the module docstring.

    ``allowed_uids`` (default: root and the daemon's effective uid) and
    ``socket_group`` decide who may use the master socket, and call methods
    that change something on either socket. The query socket is given
    ``query_group`` (default: ``socket_group``) and mode 0660, or 0666 with
    ``query_public``. ``max_connections_per_user`` is a user's share of
    each socket (default: ``listeners.default_per_user``); ``admin_uids``
    are held to no share and may open a few connections past the limit
    (default: root and the daemon's effective uid). ``clock``
    measures WaitForJobChange deadlines.
    ``start`` and ``stop`` may be called from any thread but the server's
    own; all other state belongs to the loop thread.
    """

    def __init__(
        self,
        queue: methods.QueueApi,
        reader: methods.ReaderApi,
        *,
        master_path: str,
        query_path: str,
        socket_group: int | None = None,
        query_group: int | None = None,
        query_public: bool = False,
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
        output_budget: int = DEFAULT_OUTPUT_BUDGET,
        client_timeout: float = constants.DEFAULT_CLIENT_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_user: int | None = None,
        handler_threads: int = 8,
        reader_threads: int = 2,
        logger: logging.Logger | None = None,
        allowed_uids: Collection[int] | None = None,
        admin_uids: Collection[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._queue = queue
        self._reader = reader
        self._master_path = master_path
        self._query_path = query_path
        self._socket_group = socket_group
        self._query_group = socket_group if query_group is None else query_group
        self._query_mode = PUBLIC_QUERY_SOCKET_MODE if query_public else QUERY_SOCKET_MODE
        self._max_message_size = max_message_size
        self._max_answer_size = max_answer_size
        self._output_budget = output_budget
        self._client_timeout = client_timeout
        self._send_timeout = send_timeout
        self._log = logger or logging.getLogger(__name__)
        self._rare_log = RateLimitedLog(self._log, LOG_INTERVAL)
        uids = {0, os.geteuid()} if allowed_uids is None else allowed_uids
        rule = access.MasterAccess(allowed_uids=uids, group=socket_group)
        self._gates = {
            read_only: Listener(
                "query" if read_only else "master",
                read_only=read_only,
                limit=max_connections,
                per_user=max_connections_per_user,
                rule=rule,
                log=self._rare_log,
                admins=admin_uids,
            )
            for read_only in (False, True)
        }
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._change_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=handler_threads, thread_name_prefix="luxi-handler"
        )
        self._read_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=reader_threads, thread_name_prefix="luxi-reader"
        )
        self._batches = SubmissionBatches(
            self._change_executor,
            encode=lambda result: protocol.encode_success(result, self._max_answer_size),
            failure=self._failure,
        )
        self._pools = (
            (self._change_executor, handler_threads),
            (self._read_executor, reader_threads),
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
        self._budget = OutputBudget(output_budget, reader_threads)
        self._read_buffer = ReadBuffer()  # for every connection: they all run on the loop
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
        self._queue = queue
        self._reader = reader

    # -- life cycle (caller's thread) -------------------------------------------
    def start(self) -> None:
        """Start the loop thread; return once both sockets accept connections.

        Raises LuxiError if a socket cannot be created; nothing is left behind then.
        """
        with self._state_lock:
            if self._thread is not None:
                raise errors.ProgrammerError("A LuxiServer can be started only once")
            for executor, size in self._pools:  # before the sockets exist
                _start_all_threads(executor, size)
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
            self._shutdown_executors(wait=True)  # idle: they end at once
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
        self._shutdown_executors(wait=not self._abandoned_handlers)

    def _shutdown_executors(self, *, wait: bool) -> None:
        for executor, _ in self._pools:
            executor.shutdown(wait=wait, cancel_futures=True)

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
        self._loop.set_exception_handler(self._loop_error)
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

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's own errors (e.g. accept() out of descriptors): logged, at a bounded rate."""
        exception = context.get("exception")
        message = str(context.get("message", "error in the event loop"))
        self._rare_log.warning(
            f"loop-{message}",
            "LUXI event loop: %s%s",
            message,
            f": {exception!r}" if exception else "",
        )

    async def _open(self) -> None:
        """Bind and serve both sockets."""
        for path, mode, group, read_only in (
            (self._master_path, MASTER_SOCKET_MODE, self._socket_group, False),
            (self._query_path, self._query_mode, self._query_group, True),
        ):
            try:
                sock, inode = access.listen_unix(path, mode, group, backlog=LISTEN_BACKLOG)
            except OSError as err:
                raise errors.LuxiError(f"Cannot listen on {path}: {err}") from err
            try:
                server = await asyncio.get_running_loop().create_unix_server(
                    self._connection_factory(self._gates[read_only]),
                    sock=sock,
                    backlog=ACCEPT_BATCH,
                )
                sock.listen(LISTEN_BACKLOG)  # asyncio set the kernel's queue to the batch size
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

    def _connection_factory(self, gate: Listener) -> Callable[[], Connection]:
        def make() -> Connection:
            connection = Connection(
                next(self._connection_numbers),
                self._handle,
                gate=gate,
                budget=self._budget,
                read_buffer=self._read_buffer,
                max_message_size=self._max_message_size,
                client_timeout=self._client_timeout,
                send_timeout=self._send_timeout,
                logger=self._log,
            )
            self._track(connection)
            return connection

        return make

    def _track(self, connection: Connection) -> None:
        """Keep ``connection`` in ``_connections`` while it is open."""
        self._connections.add(connection)
        connection.closed.add_done_callback(lambda _: self._connections.discard(connection))
        if self._closing:
            connection.close_when_idle()

    def _handle(self, connection: Connection, frame: bytes) -> Answer | asyncio.Future[Answer]:
        """Answer one request frame: encoded now, or a future of it; never raises."""
        try:
            request = protocol.parse_request(frame)
            self._log.debug(
                "Connection %d: %s", connection.number, request.method[:_NAME_IN_ERRORS]
            )
            method, args = self._resolve(request, connection)
            loop = asyncio.get_running_loop()
            if method.is_async:
                return loop.create_task(self._answer_async(connection, method.call(self, *args)))
            answer: asyncio.Future[Answer] = loop.create_future()
            services = methods.Services(self._queue, self._reader, connection.caller)
            if method.batched:
                submission = method.call(services, *args)
                self._batches.add(connection, answer, submission, self._queue, len(frame))
                return answer
            call = (connection, answer, method.call, services, args)
            if method.read_only:
                start = functools.partial(self._start_read, *call)
                self._budget.when_room(start, first=not connection.read_only)
            else:
                self._change_executor.submit(self._answer_blocking, *call, False)
            return answer
        except Exception as err:
            return self._failure(connection, err)

    def _start_read(
        self,
        connection: Connection,
        answer: asyncio.Future[Answer],
        call: Callable[..., Any],
        services: methods.Services,
        args: Any,
    ) -> bool:
        """Hand a read to a reader thread (the budget admitted it); False if not started."""
        if answer.done():  # the client went away while the request waited its turn
            return False
        try:
            self._read_executor.submit(
                self._answer_blocking, connection, answer, call, services, args, True
            )
        except RuntimeError as err:  # shutting down
            answer.set_result(self._failure(connection, errors.LuxiError(str(err))))
            return False
        return True

    def _failure(self, connection: Connection, err: Exception) -> Answer:
        """The answer to a failed request; unexpected errors are logged with their traceback."""
        if isinstance(err, errors.GenericError):
            # A typed error is an answer like any other: no traceback.
            self._log.debug("Connection %d: request failed: %s", connection.number, err)
        else:
            self._log.exception("Connection %d: unexpected error in a handler", connection.number)
        return error_answer(err)

    def _resolve(
        self, request: protocol.Request, connection: Connection
    ) -> tuple[methods.Method, Any]:
        """Look the method up, check access and arguments."""
        name = request.method
        method = METHODS.get(name)
        if method is None:
            raise errors.LuxiError(f"Unknown method {name[:_NAME_IN_ERRORS]!r}")
        if not method.read_only and not connection.may_change:
            raise errors.AccessDenied(
                f"{name} is not allowed on the query socket for this user; only root, the "
                "daemon's user and members of the socket group may call it"
            )
        if request.version is not None and request.version != constants.LUXI_VERSION:
            self._log.debug("Accepting %s from a client of LUXI version %s", name, request.version)
        return method, method.convert_args(name, request.args)

    async def _answer_async(self, connection: Connection, call: Awaitable[Any]) -> Answer:
        try:
            return protocol.encode_success(await call, self._max_answer_size)
        except Exception as err:
            return self._failure(connection, err)

    def _answer_blocking(
        self,
        connection: Connection,
        answer: asyncio.Future[Answer],
        call: Callable[..., Any],
        services: methods.Services,
        args: Any,
        read: bool,
    ) -> None:
        """Run a queue call in a handler thread; encode its answer there too.

        A read whose client has already gone is not run at all.
        """
        if read and answer.cancelled():
            data: Answer = []
        else:
            try:
                data = protocol.encode_success(call(services, *args), self._max_answer_size)
            except Exception as err:
                data = self._failure(connection, err)
        loop = answer.get_loop()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(self._deliver, answer, data, read)

    def _deliver(self, answer: asyncio.Future[Answer], data: Answer, read: bool) -> None:
        """Complete ``answer`` unless its client has gone; a read frees its reader slot."""
        if not answer.done():
            answer.set_result(data)
        if read:
            self._budget.finished()

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
        with self._waits.waiter(job_id) as waiter, self._metrics.luxi_waiters.tracking():
            while True:
                job = waiter.latest
                if job is None:
                    loop = asyncio.get_running_loop()
                    job = await loop.run_in_executor(
                        self._read_executor, self._reader.read_job, job_id
                    )
                if job is None:
                    raise errors.JobLost(f"Job {job_id} not found")
                result = self._reader.job_change(job, fields, prev_job_info, prev_log_serial)
                if result is not None:
                    return result
                remaining = deadline - self._clock()
                if remaining <= 0 or self._closing or not await waiter.wait(remaining):
                    return constants.JOB_NOTCHANGED

    async def read_job_output(
        self, job_id: int, offsets: dict[str, int], max_bytes: int, timeout: float = 0.0
    ) -> Any:
        """Output of the job at ``offsets``; with ``timeout``, once there is some.

        Answers at once when any stream has bytes at its offset or the job
        has finished; otherwise waits, up to ``timeout`` seconds (capped as
        WaitForJobChange's), for its output or the job to change, and
        answers then. Reads in a handler thread. JobLost for an unknown job.
        Each stream's bytes are bounded so the answer, in base64, always fits
        ``max_answer_size``.
        """
        assert self._waits is not None, "made before any connection"
        fits = (self._max_answer_size - _ANSWER_OVERHEAD) * 3 // 4 // len(offsets)
        max_bytes = max(0, min(max_bytes, constants.OUTPUT_READ_MAX, fits))
        deadline = self._clock() + methods.wfjc_timeout(timeout)
        loop = asyncio.get_running_loop()
        with self._waits.waiter(job_id) as waiter:
            while True:
                answer = await loop.run_in_executor(
                    self._read_executor, self._reader.read_output, job_id, offsets, max_bytes
                )
                if answer is None:
                    raise errors.JobLost(f"Job {job_id} not found")
                if answer["finished"] or any(answer[name]["data"] for name in offsets):
                    return answer
                remaining = deadline - self._clock()
                if remaining <= 0 or self._closing or not await waiter.wait(remaining):
                    return answer

    def waiter_count(self) -> int:
        """WaitForJobChange calls waiting now (for tests and diagnostics); loop thread only."""
        return 0 if self._waits is None else self._waits.waiter_count()


def _start_all_threads(executor: concurrent.futures.ThreadPoolExecutor, size: int) -> None:
    """Make ``executor`` start all its ``size`` threads now, so the daemon's set is fixed."""
    barrier = threading.Barrier(size)
    for future in [executor.submit(barrier.wait, SHUTDOWN_GRACE) for _ in range(size)]:
        future.result()
