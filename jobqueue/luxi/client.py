"""The LUXI client: one method per RPC over a pluggable transport.

A ``Client`` keeps one connection and sends strictly sequential requests on
it. When the transport fails, the connection is closed and dropped and the
error raised; the next call connects again. A failed request is never sent
again by itself: a re-sent ``SubmitJob`` could create the job twice.

Server-side failures arrive as encoded errors and are raised as the
matching ``jobqueue.errors`` class (``OpPrereqError``, ``JobQueueDrainError``,
...); transport failures are ``LuxiError`` subclasses (``NoMasterError``,
``AccessDenied``, ``ConnectionClosed``, ``RequestTimeout``).
"""

from __future__ import annotations

import _socket
import _thread
import errno
import os
import stat
import time
from collections.abc import Callable

from jobqueue import constants, errors
from jobqueue.luxi import protocol
from jobqueue.paths import StatePaths

# Start-up speed: ``typing`` is imported for the type checker only, the lock
# comes from ``_thread`` (``threading.Lock`` is the same type) and the socket
# from ``_socket``, the C module under ``socket``: the Python wrapper builds
# enums and imports ``selectors`` (a fifth of ``jobctl``'s start-up) for
# nothing a client needs.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Transport(Protocol):
        """Carries one terminated request and returns the response frame."""

        def exchange(self, message: bytes) -> bytes:
            """Send ``message``; return the answer frame without its terminator."""
            ...

        def close(self) -> None:
            """Release the connection; safe to call more than once."""
            ...

    TransportFactory = Callable[[str, float], Transport]

#: Seconds to wait for an answer to one read (a timeout is not retried).
DEFAULT_TIMEOUT = 180.0
#: Seconds to keep trying to connect while the daemon's backlog is full.
DEFAULT_CONNECT_TIMEOUT = 30.0
_CONNECT_RETRY_INTERVAL = 0.1
_RECV_SIZE = 65536

_NO_MASTER_ERRNOS = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR})
_ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


#: The end of the message for a socket file nobody listens on (a daemon killed with -9).
STALE_SOCKET = "daemon not running (stale socket)"


def _connect_error(path: str, err: OSError) -> errors.LuxiError:
    """Translate a failed ``connect`` into the error a caller can act on."""
    if err.errno == errno.ECONNREFUSED and _is_socket_file(path):
        return errors.NoMasterError(f"Cannot reach the job queue daemon at {path}: {STALE_SOCKET}")
    if err.errno in _NO_MASTER_ERRNOS:
        return errors.NoMasterError(f"Cannot reach the job queue daemon at {path}; is it running?")
    if err.errno in _ACCESS_ERRNOS:
        return errors.AccessDenied(f"Permission denied connecting to the socket {path}")
    return errors.LuxiError(f"Cannot connect to {path}: {err.strerror or err}")


def _is_socket_file(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _connect_once(path: str, timeout: float) -> _socket.socket:
    """Open a stream socket to ``path``; the socket is closed if that fails."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class UnixTransport:
    """A connection to the daemon's Unix socket, framed with ``FrameBuffer``.

    Connecting happens in the constructor: a missing socket or one nobody
    listens on raises ``NoMasterError``, a permission problem
    ``AccessDenied``. While the daemon's backlog is full (EAGAIN) the
    connect is retried until ``connect_timeout``. ``clock`` and ``sleep``
    are there for tests. Not thread-safe; ``Client`` serialises its calls.
    """

    def __init__(
        self,
        path: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self._timeout = timeout
        self._buffer = protocol.FrameBuffer(max_message_size)
        self._sock: _socket.socket | None = self._connect(connect_timeout, clock, sleep)
        self._sock.settimeout(timeout)

    def _connect(
        self, connect_timeout: float, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> _socket.socket:
        """Connect, retrying only while the listener's backlog is full."""
        deadline = clock() + connect_timeout
        while True:
            try:
                return _connect_once(self.path, max(deadline - clock(), _CONNECT_RETRY_INTERVAL))
            except TimeoutError as err:
                raise errors.RequestTimeout(f"Timed out connecting to {self.path}") from err
            except OSError as err:
                if err.errno != errno.EAGAIN:
                    raise _connect_error(self.path, err) from err
                if clock() >= deadline:
                    raise errors.RequestTimeout(
                        f"Timed out connecting to {self.path}: the daemon is too busy"
                    ) from err
            sleep(_CONNECT_RETRY_INTERVAL)

    def exchange(self, message: bytes) -> bytes:
        """Send one terminated message and return the one frame answering it.

        Raises RequestTimeout when a read or write exceeds the timeout,
        ConnectionClosed when the peer goes away, LuxiError for an oversized
        or surplus answer. After any error the transport is closed.
        """
        if message.find(constants.LUXI_EOM) != len(message) - len(constants.LUXI_EOM):
            raise errors.ProgrammerError("A message must end in the terminator and hold no other")
        if self._sock is None:
            raise errors.ConnectionClosed(f"The connection to {self.path} is closed")
        try:
            self._send(self._sock, message)
            return self._receive(self._sock)
        except BaseException:
            self.close()
            raise

    def _send(self, sock: _socket.socket, message: bytes) -> None:
        """Write all of ``message``, translating socket errors."""
        try:
            sock.sendall(message)
        except TimeoutError as err:
            raise errors.RequestTimeout(f"Timed out sending to {self.path}") from err
        except OSError as err:
            raise errors.ConnectionClosed(f"Lost the connection to {self.path}: {err}") from err

    def _receive(self, sock: _socket.socket) -> bytes:
        """Read until one complete frame has arrived and return it."""
        while True:
            try:
                data = sock.recv(_RECV_SIZE)
            except TimeoutError as err:
                raise errors.RequestTimeout(
                    f"No answer from {self.path} within {self._timeout} seconds"
                ) from err
            except OSError as err:
                raise errors.ConnectionClosed(f"Lost the connection to {self.path}: {err}") from err
            if not data:
                raise errors.ConnectionClosed(f"The daemon at {self.path} closed the connection")
            frames = self._buffer.feed(data)
            if len(frames) > 1 or (frames and self._buffer.pending_size):
                raise errors.LuxiError(f"The daemon at {self.path} sent more than one answer")
            if frames:
                return frames[0]

    def close(self) -> None:
        """Close the socket; later exchanges raise ConnectionClosed."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class Client:
    """One connection to the daemon and one method per LUXI call.

    ``path`` defaults to the master socket of ``state_dir`` (or of the
    default state directory). ``transport_factory(path, timeout)`` opens a
    connection; it defaults to ``UnixTransport``. ``self._lock`` is held for
    a whole call, so requests on the connection are strictly sequential even
    when threads share the client; ``_transport`` is only touched under it.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        state_dir: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.path = path if path is not None else StatePaths.resolve(state_dir).master_socket
        self.timeout = timeout
        self._transport_factory: TransportFactory = transport_factory or UnixTransport
        self._lock = _thread.allocate_lock()
        self._transport: Transport | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection, if any; the next call opens a new one."""
        with self._lock:
            self._drop_transport_locked()

    def _drop_transport_locked(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _exchange_locked(self, message: bytes) -> bytes:
        """Send over the current connection, opening one if needed.

        Any failure drops the connection before it propagates.
        """
        assert self._lock.locked(), "caller must hold the client lock"
        if self._transport is None:
            self._transport = self._transport_factory(self.path, self.timeout)
        try:
            return self._transport.exchange(message)
        except BaseException:
            self._drop_transport_locked()
            raise

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` with positional ``args`` and return its result.

        Raises the decoded server error for a failed call and the transport's
        ``LuxiError`` when the daemon cannot be reached or does not answer.
        """
        with self._lock:
            return protocol.call(self._exchange_locked, method, list(args), constants.LUXI_VERSION)

    def submit_job(self, ops: list[dict[str, Any]], options: dict[str, Any] | None = None) -> int:
        """Submit one job made of ``ops``; return its id.

        ``options`` are job-level options (start time, retries, time limit:
        see doc/luxi.rst); without them the call is Ganeti's own.
        """
        return int(self.call("SubmitJob", ops, *([options] if options else [])))

    def submit_job_to_drained_queue(
        self, ops: list[dict[str, Any]], options: dict[str, Any] | None = None
    ) -> int:
        """Submit one job even while the queue is drained; return its id."""
        return int(self.call("SubmitJobToDrainedQueue", ops, *([options] if options else [])))

    def submit_many_jobs(
        self, jobs: list[list[dict[str, Any]]], options: Any = None
    ) -> list[list[Any]]:
        """Submit several jobs; return ``[True, id]`` or ``[False, message]`` for each.

        ``options``: job-level options for every job, or a list with one (or
        None) per job.
        """
        extra = [] if options is None else [options]
        result: list[list[Any]] = self.call("SubmitManyJobs", jobs, *extra)
        return result

    def change_job_start_time(self, job_id: int, start_at: float | None) -> list[Any]:
        """Change when a queued job may start (seconds since the epoch; None: at once).

        Returns ``[success, message]``.
        """
        result: list[Any] = self.call("ChangeJobStartTime", job_id, start_at)
        return result

    def replace_filter(
        self,
        uuid: str | None,
        priority: int,
        predicates: list[Any],
        action: Any,
        reason: list[Any],
    ) -> str:
        """Add a job filter rule (``uuid`` None) or replace one; return its uuid."""
        return str(self.call("ReplaceFilter", uuid, priority, predicates, action, reason))

    def delete_filter(self, uuid: str) -> bool:
        """Delete the job filter rule ``uuid``."""
        return bool(self.call("DeleteFilter", uuid))

    def set_max_running_jobs(self, count: int) -> bool:
        """Set the number of workers (jobs run at once), at once and durably."""
        return bool(self.call("SetMaxRunningJobs", count))

    def wait_for_job_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        timeout: float,
    ) -> str | list[Any] | None:
        """Block until the job changes; ``"nochange"``, ``[job_info, log]`` or None."""
        answer: str | list[Any] | None = self.call(
            "WaitForJobChange", job_id, fields, prev_job_info, prev_log_serial, timeout
        )
        return answer

    def read_job_output(
        self,
        job_id: int,
        offsets: dict[str, int],
        max_bytes: int = constants.OUTPUT_READ_MAX,
        timeout: float = 0.0,
    ) -> dict[str, Any]:
        """A job's command output at ``offsets`` (by stream; negative: from the end).

        Returns ``{"status", "finished", STREAM: {"offset", "data", "size"}}``
        with each ``data`` decoded to bytes. With ``timeout`` the daemon
        waits up to that long for output or the job to change when there
        is none yet (see ``ReadJobOutput`` in doc/luxi.rst).
        """
        import binascii

        answer: dict[str, Any] = self.call("ReadJobOutput", job_id, offsets, max_bytes, timeout)
        try:
            for name in offsets:
                answer[name]["data"] = binascii.a2b_base64(answer[name]["data"])
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise errors.LuxiError(f"Unexpected ReadJobOutput answer for job {job_id}") from err
        return answer

    def cancel_job(self, job_id: int, kill: bool = False) -> list[Any]:
        """Cancel a job; return ``[success, message]``."""
        result: list[Any] = self.call("CancelJob", job_id, kill)
        return result

    def change_job_priority(self, job_id: int, priority: int) -> list[Any]:
        """Change the priority of a job's pending opcodes; return ``[success, message]``."""
        result: list[Any] = self.call("ChangeJobPriority", job_id, priority)
        return result

    def archive_job(self, job_id: int) -> bool:
        """Archive one finalized job; return whether it was archived."""
        return bool(self.call("ArchiveJob", job_id))

    def auto_archive_jobs(self, age: float, timeout: float) -> list[int]:
        """Archive jobs older than ``age`` seconds; return ``[archived, left]``."""
        result: list[int] = self.call("AutoArchiveJobs", age, timeout)
        return result

    def prune_archive(self, age: float, timeout: float) -> dict[str, Any]:
        """Delete archived jobs older than ``age`` seconds, for up to about ``timeout`` s.

        Returns ``{"jobs", "directories", "unfinished", "failures"}`` (see doc/luxi.rst).
        """
        result: dict[str, Any] = self.call("PruneArchive", age, timeout)
        return result

    def query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> list[list[Any]]:
        """Return one row of ``fields`` per job (all live jobs for None)."""
        result: list[list[Any]] = self.call("QueryJobs", job_ids, fields)
        return result

    def query(self, what: str, fields: list[str], qfilter: Any = None) -> dict[str, Any]:
        """Run a new-style query; return ``{"fields": ..., "data": ...}``."""
        result: dict[str, Any] = self.call("Query", what, fields, qfilter)
        return result

    def query_fields(self, what: str, fields: list[str] | None = None) -> dict[str, Any]:
        """Describe the fields of resource ``what`` (all of them for None)."""
        result: dict[str, Any] = self.call("QueryFields", what, fields)
        return result

    def set_drain_flag(self, flag: bool) -> bool:
        """Set or clear the queue's drain flag."""
        return bool(self.call("SetDrainFlag", flag))

    def set_watcher_pause(self, until: float | None) -> float | None:
        """Pause the cron cleaner until ``until`` (seconds since the epoch); None ends a pause.

        Returns ``until``; a time in the past raises GenericError.
        """
        result: float | None = self.call("SetWatcherPause", until)
        return result

    def query_config_values(self, fields: list[str]) -> list[Any]:
        """Return the values of configuration ``fields``, in order."""
        result: list[Any] = self.call("QueryConfigValues", fields)
        return result

    def query_metrics(self) -> dict[str, Any]:
        """The daemon's metrics: ``{"version": 1, "families": [...]}`` (see jobqueue.metrics)."""
        result: dict[str, Any] = self.call("QueryMetrics")
        return result

    def wait_for_job(
        self,
        job_id: int,
        on_log: Callable[[list[Any]], None] | None = None,
        *,
        poll_timeout: float = 30.0,
    ) -> str:
        """Follow a job until it is finalized and return its final status.

        Every new log entry ``[serial, [sec, usec], type, message]`` is passed
        to ``on_log`` once, in order. ``canceling`` is followed until the job
        is really canceled. Raises JobLost if the daemon no longer knows the
        job and LuxiError for an answer of the wrong shape.
        """
        prev_info: list[Any] | None = None
        prev_serial: int | None = None
        while True:
            answer = self.wait_for_job_change(
                job_id, ["status"], prev_info, prev_serial, poll_timeout
            )
            if not answer:
                raise errors.JobLost(f"Job {job_id} lost")
            if answer == constants.JOB_NOTCHANGED:
                continue
            prev_info, log_entries = _split_change(job_id, answer)
            for entry in log_entries:
                if prev_serial is None or entry[0] > prev_serial:
                    prev_serial = entry[0]
                    if on_log is not None:
                        on_log(entry)
            status = prev_info[0]
            if status in constants.FINALIZED:
                return str(status)


def _split_change(job_id: int, answer: Any) -> tuple[list[Any], list[list[Any]]]:
    """Check the shape of a WaitForJobChange answer and split it.

    Raises LuxiError unless it is ``[[status, ...], [[serial, ...], ...]]``.
    """
    if (
        isinstance(answer, list)
        and len(answer) == 2
        and isinstance(answer[0], list)
        and answer[0]
        and isinstance(answer[0][0], str)
        and isinstance(answer[1], list)
        and all(isinstance(e, list) and len(e) == 4 and type(e[0]) is int for e in answer[1])
    ):
        return answer[0], answer[1]
    raise errors.LuxiError(f"Unexpected WaitForJobChange answer for job {job_id}")
