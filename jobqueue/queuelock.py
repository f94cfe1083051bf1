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
        if not self.try_acquire():
            raise JobQueueError(
                f"The job queue in {os.path.dirname(self.path)} is in use by another "
                f"daemon (pid {self.holder() or 'unknown'})"
            )

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another process holds it.

        Raises ``JobQueueError`` when the lock file cannot be opened or locked.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC  # never through a link
        try:
            fd = os.open(self.path, flags, constants.FILE_MODE)
        except OSError as err:
            raise JobQueueError(f"Cannot open {self.path}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise JobQueueError(f"Cannot lock {self.path}: {err.strerror}") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str | None:
        """The pid written by the holder, None if the file holds none."""
        try:
            with open(self.path, "rb") as handle:
                text = handle.read(64).decode("ascii", "replace").strip()
        except OSError:
            return None
        return text or None

    def release(self) -> None:
        """Release the lock (idempotent); the file stays."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
