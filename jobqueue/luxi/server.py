"""The LUXI socket server: two Unix sockets, one event-loop thread, a dispatch table.

``LuxiServer`` listens on the master socket (every method; peers checked
with ``SO_PEERCRED``, see ``access``) and on the query socket (read-only
methods, anyone). Its asyncio loop runs in one dedicated thread, so the
daemon's main thread stays free for signals; there is no thread per
connection. Blocking queue calls run in a ``ThreadPoolExecutor``;
``WaitForJobChange`` waits on the ``JobFileWatcher`` in the loop, so
hundreds of waiting clients cost no threads.

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
import re
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol, TypeVar

from jobqueue import constants, errors
from jobqueue.luxi import access, protocol
from jobqueue.watcher import JobFileWatcher

_T = TypeVar("_T")

MASTER_SOCKET_MODE = 0o660
QUERY_SOCKET_MODE = 0o666
#: Seconds ``stop`` lets in-flight requests finish and their answers go out.
SHUTDOWN_GRACE = 5.0
_BACKLOG = 1024
_READ_SIZE = 65536
_NAME_IN_ERRORS = 100  # characters of a client-supplied method name quoted back


class QueueApi(Protocol):
    """What the server needs from the job queue; ``jobqueue.queue.JobQueue`` provides it."""

    def submit_job(self, ops: list[Any], *, drained_ok: bool = False) -> int: ...
    def submit_many_jobs(self, jobs: list[Any], *, drained_ok: bool = False) -> list[list[Any]]: ...
    def check_job_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
    ) -> list[Any] | None: ...
    def cancel_job(self, job_id: int, kill: bool = False) -> list[Any]: ...
    def change_job_priority(self, job_id: int, priority: int) -> list[Any]: ...
    def archive_job(self, job_id: int) -> bool: ...
    def auto_archive_jobs(self, age: float, timeout: float) -> list[int]: ...
    def query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> list[list[Any]]: ...
    def query(
        self, what: str, fields: list[str], qfilter: Any, archived: bool = False
    ) -> dict[str, Any]: ...
    def query_fields(self, what: str, fields: list[str] | None) -> dict[str, Any]: ...
    def set_drain_flag(self, flag: bool) -> bool: ...
    def query_config_values(self, fields: list[str]) -> list[Any]: ...


def wfjc_timeout(requested: float) -> float:
    """The seconds a WaitForJobChange call may block: 0 to WFJC_MAX_TIMEOUT."""
    return min(max(requested, 0.0), constants.WFJC_MAX_TIMEOUT)


# -- argument checking --------------------------------------------------------
_DIGITS = re.compile(r"[0-9]{1,20}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _to_job_id(value: Any) -> int:
    """An int >= 0 or a string of digits (``gnt-job watch`` sends ``"42"``)."""
    if _is_int(value) and value >= 0:
        return int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ValueError(value)


def _checked(predicate: Callable[[Any], bool]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not predicate(value):
            raise ValueError(value)
        return value

    return check


def _or_null(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _each(convert: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def convert_list(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(value)
        return [convert(item) for item in value]

    return convert_list


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What an argument must be: words for the error, and a converter.

    ``convert`` returns the value to pass on or raises ValueError.
    """

    words: str
    convert: Callable[[Any], Any]


_is_str = _checked(lambda value: isinstance(value, str))
_JOB_ID = _Kind("a job id (a non-negative integer or a string of digits)", _to_job_id)
_JOB_IDS_OR_NULL = _Kind("a list of job ids or null", _or_null(_each(_to_job_id)))
_LIST = _Kind("a list", _checked(lambda value: isinstance(value, list)))
_LIST_OR_NULL = _Kind(
    "a list or null", _checked(lambda value: value is None or isinstance(value, list))
)
_FIELDS = _Kind("a list of strings", _each(_is_str))
_FIELDS_OR_NULL = _Kind("a list of strings or null", _or_null(_each(_is_str)))
_INT = _Kind("an integer", _checked(_is_int))
_INT_OR_NULL = _Kind("an integer or null", _or_null(_checked(_is_int)))
_NUMBER = _Kind("a number", _checked(lambda value: _is_int(value) or isinstance(value, float)))
_BOOL = _Kind("a boolean", _checked(lambda value: isinstance(value, bool)))
_STR = _Kind("a string", _is_str)
_ANY = _Kind("any value", lambda value: value)

_Args = tuple[tuple[str, _Kind], ...]


@dataclasses.dataclass(frozen=True)
class _Method:
    """How one LUXI method is served.

    ``call(queue, *args)`` runs in the executor; with ``is_async`` it is
    ``call(server, *args)``, a coroutine run in the loop instead.
    ``args`` then ``optional`` are the positional arguments, as (name, kind).
    ``read_only`` methods are allowed on the query socket.
    """

    call: Callable[..., Any]
    args: _Args
    optional: _Args = ()
    read_only: bool = False
    is_async: bool = False

    def convert_args(self, name: str, args: list[Any]) -> list[Any]:
        """Check count and types of ``args``; LuxiError naming the first bad one."""
        low, high = len(self.args), len(self.args) + len(self.optional)
        if not low <= len(args) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            raise errors.LuxiError(f"{name}: expected {expected} arguments, got {len(args)}")
        converted = []
        specs = self.args + self.optional
        for number, ((arg_name, kind), value) in enumerate(zip(specs, args, strict=False), 1):
            try:
                converted.append(kind.convert(value))
            except ValueError:
                raise errors.LuxiError(
                    f"{name}: argument {number} ({arg_name}) must be {kind.words}"
                ) from None
        return converted


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
        queue: QueueApi,
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
        self._state_lock = threading.Lock()  # guards _thread and _stop_called
        self._thread: threading.Thread | None = None
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
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._state_lock:
            if self._thread is not None:
                raise errors.ProgrammerError("A LuxiServer can be started only once")
            self._thread = threading.Thread(
                target=self._run_loop, args=(ready,), name="luxi-server", daemon=True
            )
            self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise

    def stop(self) -> None:
        """Stop serving and release everything; idempotent, bounded by SHUTDOWN_GRACE.

        New connections are refused at once, idle ones closed, in-flight
        requests get up to SHUTDOWN_GRACE seconds to be answered, waiting
        WaitForJobChange calls are answered "nochange".
        """
        with self._state_lock:
            thread, loop = self._thread, self._loop
            if thread is None or self._stop_called:
                return
            self._stop_called = True
        if thread is threading.current_thread():
            raise errors.ProgrammerError("LuxiServer.stop called from its own loop thread")
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._request_stop)
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
    def _request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
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
        kind = self._query_path if read_only else self._master_path
        try:
            peer = self._peer(writer)
            allowed = read_only or (peer is not None and self._access.allows(peer))
            denied = "" if allowed else " (denied)"
            self._log.debug("Connection %d to %s from %s%s", connection.number, kind, peer, denied)
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
        method = _METHODS.get(name)
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

    async def _wait_for_job_change(
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
        deadline = self._clock() + wfjc_timeout(timeout)
        with self._watcher.subscribe(job_id) as subscription:
            while True:
                result = await self._run_blocking(
                    self._queue.check_job_change, job_id, fields, prev_job_info, prev_log_serial
                )
                if result is not None:
                    return result
                remaining = deadline - self._clock()
                if remaining <= 0 or self._closing or not await subscription.wait(remaining):
                    return constants.JOB_NOTCHANGED


_METHODS: dict[str, _Method] = {
    "SubmitJob": _Method(lambda queue, ops: queue.submit_job(ops), (("ops", _LIST),)),
    "SubmitJobToDrainedQueue": _Method(
        lambda queue, ops: queue.submit_job(ops, drained_ok=True), (("ops", _LIST),)
    ),
    "SubmitManyJobs": _Method(lambda queue, jobs: queue.submit_many_jobs(jobs), (("jobs", _LIST),)),
    "WaitForJobChange": _Method(
        LuxiServer._wait_for_job_change,
        (
            ("job_id", _JOB_ID),
            ("fields", _FIELDS),
            ("prev_job_info", _LIST_OR_NULL),
            ("prev_log_serial", _INT_OR_NULL),
            ("timeout", _NUMBER),
        ),
        read_only=True,
        is_async=True,
    ),
    "CancelJob": _Method(
        lambda queue, job_id, kill=False: queue.cancel_job(job_id, kill),
        (("job_id", _JOB_ID),),
        optional=(("kill", _BOOL),),
    ),
    "ChangeJobPriority": _Method(
        lambda queue, job_id, priority: queue.change_job_priority(job_id, priority),
        (("job_id", _JOB_ID), ("priority", _INT)),
    ),
    "ArchiveJob": _Method(lambda queue, job_id: queue.archive_job(job_id), (("job_id", _JOB_ID),)),
    "AutoArchiveJobs": _Method(
        lambda queue, age, timeout: queue.auto_archive_jobs(age, timeout),
        (("age", _NUMBER), ("timeout", _NUMBER)),
    ),
    "QueryJobs": _Method(
        lambda queue, job_ids, fields: queue.query_jobs(job_ids, fields),
        (("job_ids", _JOB_IDS_OR_NULL), ("fields", _FIELDS)),
        read_only=True,
    ),
    "Query": _Method(
        lambda queue, what, fields, qfilter, archived=False: queue.query(
            what, fields, qfilter, archived=archived
        ),
        (("what", _STR), ("fields", _FIELDS), ("qfilter", _ANY)),
        optional=(("archived", _BOOL),),
        read_only=True,
    ),
    "QueryFields": _Method(
        lambda queue, what, fields: queue.query_fields(what, fields),
        (("what", _STR), ("fields", _FIELDS_OR_NULL)),
        read_only=True,
    ),
    "SetDrainFlag": _Method(lambda queue, flag: queue.set_drain_flag(flag), (("flag", _BOOL),)),
    "QueryConfigValues": _Method(
        lambda queue, fields: queue.query_config_values(fields),
        (("fields", _FIELDS),),
        read_only=True,
    ),
}
