"""The queue lock: one daemon per queue directory.

``queue/lock`` holds an exclusive ``flock`` for the daemon's lifetime and
the holder's pid as text, so a second daemon on the same state directory
fails at start with a message naming the one already running. The kernel
releases the lock when the holder dies, however it dies.
"""

from __future__ import annotations

import errno
import fcntl
import os

from jobqueue import constants
from jobqueue.errors import JobQueueError


class QueueLock:
    """The exclusive ``flock`` on ``queue/lock`` that a daemon holds for its lifetime."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once or raise ``JobQueueError`` naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, constants.FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JobQueueError(
                    f"The job queue in {os.path.dirname(self.path)} is in use by another "
                    f"daemon (pid {holder})"
                ) from err
            raise JobQueueError(f"Cannot lock {self.path}: {err}") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent); the file stays."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
