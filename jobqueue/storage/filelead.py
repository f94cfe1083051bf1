"""Leadership of a file queue: the ``flock`` on ``queue/lock`` (``queuelock``).

One daemon per queue directory. The lock is never lost while the process
lives (the kernel drops it when the process dies), so file writes need no
fencing, unlike the etcd store's (``etcdlead``).
"""

from __future__ import annotations

import os
import time

from jobqueue.queuelock import QueueLock
from jobqueue.storage.base import Leadership


class FileLeadership(Leadership):
    """The exclusive ``flock`` on ``queue/lock``; see the module docstring."""

    #: How often a waiting ``acquire`` tries the lock again.
    RETRY = 0.2

    def __init__(self, lock: QueueLock) -> None:
        super().__init__()
        self._lock = lock
        self._held = False

    def acquire(self, wait: float) -> bool:
        """Take the lock; False if another process still holds it after ``wait`` seconds.

        Raises ``JobQueueError`` when the lock file cannot be opened.
        """
        deadline = time.monotonic() + wait
        while not self._lock.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.RETRY, max(0.0, deadline - time.monotonic())))
        self._held = True
        return True

    def release(self) -> None:
        self._lock.release()
        self._held = False

    def holder(self) -> str | None:
        pid = str(os.getpid()) if self._held else self._lock.holder()
        return None if pid is None else f"pid {pid}"
