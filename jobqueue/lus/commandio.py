"""What a command reads and writes, and how it ended, for ``OP_COMMAND_RUN``.

``CommandOutput`` takes each chunk the command writes to its pipes: every
byte goes to the job's raw output in the store (``RawOutput``, bounded by
``--max-output-size``), and lines become job log entries, capped per opcode
much lower (for watchers and Ganeti's tools). ``StdinFeeder`` writes the
opcode's input to the command's standard input from a thread of its own.
``exit_description`` words an exit status as shells report it;
``directory_problem`` says why a user could not enter a working directory.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import select
import signal
import stat
import threading
from collections.abc import Callable, Collection
from typing import IO, Any

from jobqueue import constants
from jobqueue.errors import StorageError
from jobqueue.lus.base import RawOutput

#: Bytes of each of the last stderr lines quoted in a failed command's error.
_TAIL_LINE_BYTES = 1000
#: Lines of stderr quoted in a failed command's error.
_TAIL_LINES = 5
#: How long the stdin feeder waits for room in the pipe before it looks at ``stop``.
_FEED_TICK = 0.1

Feedback = Callable[[list[tuple[str, Any]]], None]


def decode_stdin(text: str | None) -> bytes | None:
    """The bytes of an opcode's base64 ``stdin``, None without; ValueError if invalid."""
    if text is None:
        return None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as err:
        raise ValueError(f"not valid base64: {err}") from None


def exit_description(returncode: int) -> tuple[str, dict[str, int]]:
    """``("exited with code 3", {"exit_code": 3})`` or, for a signal death,
    ``("was killed by signal 9 (SIGKILL)", {"signal": 9})``."""
    if returncode >= 0:
        return f"exited with code {returncode}", {"exit_code": returncode}
    signum = -returncode
    return f"was killed by signal {signum} ({signal_name(signum)})", {"signal": signum}


def directory_problem(path: str, uid: int, gids: Collection[int]) -> str | None:
    """Why user ``uid`` (in groups ``gids``) could not enter ``path``; None if it could.

    Looks at the mode bits of the directory and of each directory above it
    (their search permission), as the kernel would for that user; ACLs are
    not looked at. Root may enter any directory that exists.
    """
    target = os.path.realpath(path)
    parts = target.split(os.sep)
    for depth in range(1, len(parts) + 1):
        current = os.sep.join(parts[:depth]) or os.sep
        try:
            status = os.stat(current)
        except OSError as err:
            return err.strerror or str(err)
        if not stat.S_ISDIR(status.st_mode):
            return os.strerror(errno.ENOTDIR)
        if uid != 0 and not _may_search(status, uid, gids):
            return f"{os.strerror(errno.EACCES)} (for uid {uid})"
    return None


def _may_search(status: os.stat_result, uid: int, gids: Collection[int]) -> bool:
    if status.st_uid == uid:
        return bool(status.st_mode & stat.S_IXUSR)
    if status.st_gid in gids:
        return bool(status.st_mode & stat.S_IXGRP)
    return bool(status.st_mode & stat.S_IXOTH)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal N`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class CommandOutput:
    """Turns pipe output into raw output on disk and log entries; see the module docstring.

    Log entries: bytes are counted as the command wrote them, before
    decoding. A line longer than ``COMMAND_LOG_MAX_LINE_BYTES`` is logged in
    pieces of that size, so output without newlines never piles up in the
    daemon. Once ``COMMAND_LOG_MAX_LINES`` or ``COMMAND_LOG_MAX_BYTES`` is
    reached one ``output truncated`` entry is written and no more lines are
    logged; the last lines of stderr are still kept for the error message.
    Raw output: when the store fails, one message entry says so and the
    rest is not kept; the command runs on.
    """

    def __init__(self, feedback_many: Feedback, raw: RawOutput | None = None) -> None:
        self._feedback_many = feedback_many
        self._raw = raw
        self._partial: dict[str, bytes] = {constants.ELOG_STDOUT: b"", constants.ELOG_STDERR: b""}
        self.lines = 0
        self.bytes = 0
        self.truncated = False
        self.stderr_tail: list[str] = []

    def add(self, log_type: str, data: bytes, *, final: bool = False) -> None:
        """One chunk of ``stdout`` or ``stderr``; ``final`` at the end of the stream."""
        if data and self._raw is not None:
            try:
                self._raw.write(log_type, data)
            except StorageError as err:
                self._lost(err)
        if self.truncated and log_type == constants.ELOG_STDOUT:
            return  # no more lines of stdout are needed
        *complete, rest = (self._partial[log_type] + data).split(b"\n")
        limit = constants.COMMAND_LOG_MAX_LINE_BYTES
        while len(rest) > limit:
            complete.append(rest[:limit])
            rest = rest[limit:]
        if final and rest:
            complete, rest = [*complete, rest], b""
        self._partial[log_type] = rest
        if log_type == constants.ELOG_STDERR:
            tail = [
                raw[:_TAIL_LINE_BYTES].decode("utf-8", "replace") for raw in complete[-_TAIL_LINES:]
            ]
            self.stderr_tail = (self.stderr_tail + tail)[-_TAIL_LINES:]
        if not self.truncated:
            self._emit(log_type, complete)

    def _emit(self, log_type: str, lines: list[bytes]) -> None:
        kept: list[tuple[str, Any]] = []
        for raw in lines:
            self.lines += 1
            self.bytes += len(raw)
            if (
                self.lines > constants.COMMAND_LOG_MAX_LINES
                or self.bytes > constants.COMMAND_LOG_MAX_BYTES
            ):
                self.truncated = True
                kept.append((constants.ELOG_MESSAGE, "output truncated"))
                break
            kept.append((log_type, raw.decode("utf-8", "replace")))
        if kept:
            self._feedback_many(kept)

    def close(self) -> None:
        """Make the raw output durable (before the opcode's end is written)."""
        if self._raw is None:
            return
        try:
            self._raw.close()
        except StorageError as err:
            self._lost(err)

    def _lost(self, err: StorageError) -> None:
        """Stop keeping raw output after a failure of the store, and say so once."""
        raw, self._raw = self._raw, None
        if raw is not None:
            try:
                raw.close()
            except StorageError:
                pass
        self._feedback_many([(constants.ELOG_MESSAGE, f"Output not kept on disk: {err}")])


class StdinFeeder:
    """Writes ``data`` to a command's stdin pipe, then closes it, from a thread of its own.

    A command that never reads its input cannot block the feeder: ``stop``
    ends it within ``_FEED_TICK`` seconds, closing the pipe.
    """

    def __init__(self, pipe: IO[bytes], data: bytes, job_id: int) -> None:
        self._pipe = pipe
        self._data = data
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"Job{job_id}-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        view = memoryview(self._data)
        try:
            os.set_blocking(fd, False)
            while view and not self._stop.is_set():
                _, writable, _ = select.select([], [fd], [], _FEED_TICK)
                if not writable:
                    continue
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
        except OSError:
            pass  # the command closed its stdin (EPIPE): it wants no more
        finally:
            try:
                self._pipe.close()
            except OSError:
                pass

    def stop(self) -> None:
        """Give up writing (the command ended) and wait for the thread."""
        self._stop.set()
        self._thread.join()
