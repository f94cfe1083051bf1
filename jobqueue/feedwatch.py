"""Watches served from a store's change feed, for a process that does not own the queue.

The daemon that owns a queue announces its own changes (``LiveJobs``). A
process that only reads a queue another one writes (a standby master, a
monitor) learns of changes from the store instead: ``FeedWatches`` starts the
store's ``ChangeFeed`` once and tells each watch of its job's changes. Its
watches never hold a state (``latest`` is None): the waiter reads the job
from the store after each change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from jobqueue.storage.base import ChangeFeed


class FeedWatch:
    """One watch on one job; ``latest`` is always None (read the store)."""

    latest = None

    def __init__(self, owner: FeedWatches, job_id: int, on_change: Callable[[], None]) -> None:
        self.job_id = job_id
        self.on_change = on_change
        self._owner = owner

    def close(self) -> None:
        self._owner._unwatch(self)


class FeedWatches:
    """A ``WatchSource`` over ``feed``; ``start``/``stop`` the feed with the server."""

    def __init__(self, feed: ChangeFeed) -> None:
        self._feed = feed
        self._lock = threading.Lock()  # guards _watches
        self._watches: dict[int, list[FeedWatch]] = {}

    def start(self) -> None:
        """Start the feed; ``StorageError`` if the store cannot be watched."""
        self._feed.start(self._on_change)

    def stop(self) -> None:
        self._feed.stop()
        self._on_change(None)  # nothing more will be reported: let every waiter look

    def watch(self, job_id: int, on_change: Callable[[], None]) -> FeedWatch:
        watch = FeedWatch(self, job_id, on_change)
        with self._lock:
            self._watches.setdefault(job_id, []).append(watch)
        return watch

    def _unwatch(self, watch: FeedWatch) -> None:
        with self._lock:
            watches = self._watches.get(watch.job_id, [])
            if watch in watches:
                watches.remove(watch)
                if not watches:
                    del self._watches[watch.job_id]

    def _on_change(self, job_id: int | None) -> None:
        with self._lock:
            if job_id is None:
                watches = [w for group in self._watches.values() for w in group]
            else:
                watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            watch.on_change()
