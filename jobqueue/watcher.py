"""Waiting for job files to change, with one inotify watch on the queue directory.

Job files are never modified in place: a new version is written to a temp
file and renamed over ``job-N``, and archiving renames ``job-N`` away. So a
single watch on the queue directory for ``IN_MOVED_TO | IN_MOVED_FROM |
IN_DELETE`` sees every change of every job, and there is no per-file watch
to re-arm after a rename. Names other than ``job-<digits>`` (temp files,
``serial``, ``drain``) are ignored.

pyinotify provides the inotify instance and the watch; the events are read
from its descriptor and decoded here (a fixed header and a name each).
pyinotify's own ``Notifier`` keeps every rename's move cookie for a minute
and scans them all on each batch of events, which made the loop thread
spend most of its time there once thousands of job files were replaced per
minute.

Waking is edge-triggered and conservative: a ``Subscription`` remembers that
an event for its job arrived until ``wait`` reports it. Waiters may wake
spuriously (an event queued in the kernel just before they subscribed, a
queue overflow, a read error, ``stop``), never miss one: subscribe first,
then look at the job, then wait.

Threading: the watcher lives in its event loop. Every method, except the
constructor, must be called from the loop's thread; no locks are needed.

This is the only module that imports pyinotify (which imports asyncore).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import warnings
from types import TracebackType
from typing import Any

from jobqueue import constants, errors

with warnings.catch_warnings():
    # pyinotify imports asyncore, deprecated since Python 3.10; we never use it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify

_JOB_NAME_RE = re.compile(re.escape(constants.JOB_FILE_PREFIX) + r"([0-9]+)")
_EVENT_MASK = pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM | pyinotify.IN_DELETE
#: struct inotify_event: wd, mask, cookie, name length; the name follows, NUL-padded.
_EVENT_HEADER = struct.Struct("iIII")
_READ_SIZE = 256 * 1024


class Subscription:
    """Interest in the changes of one job file; see the module docstring."""

    def __init__(self, watcher: JobFileWatcher, job_id: int) -> None:
        self.job_id = job_id
        self._watcher = watcher
        self._changed = asyncio.Event()
        self._closed = False

    def _notify(self) -> None:
        self._changed.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change of the job file.

        Return True if a change happened since the subscription was made or
        since the last ``wait`` that returned True (and forget it), False if
        none came before the timeout.
        """
        if not self._changed.is_set() and timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                pass
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    def close(self) -> None:
        """Stop receiving changes; idempotent."""
        if not self._closed:
            self._closed = True
            self._watcher._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class JobFileWatcher:
    """One inotify watch on ``queue_dir``, read in ``loop``, fanned out per job id."""

    def __init__(
        self,
        queue_dir: str,
        loop: asyncio.AbstractEventLoop,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.queue_dir = queue_dir
        self._loop = loop
        self._log = logger or logging.getLogger(__name__)
        self._subscriptions: dict[int, set[Subscription]] = {}
        self._manager: Any = None  # a pyinotify.WatchManager while started
        self._fd: int | None = None
        self._generation = 0

    @property
    def generation(self) -> int:
        """Counts the batches of events read (and wake-ups of everyone) so far.

        Two looks at a job file made while it has the same value saw no
        change reported in between; a change made since is still on its
        way and will wake its subscribers again.
        """
        return self._generation

    @property
    def running(self) -> bool:
        return self._fd is not None

    def start(self) -> None:
        """Watch the queue directory and read its events in the loop.

        Raises JobQueueError if the directory cannot be watched.
        """
        if self._fd is not None:
            raise errors.ProgrammerError("The job file watcher was already started")
        manager = pyinotify.WatchManager()
        try:
            manager.add_watch(self.queue_dir, _EVENT_MASK, quiet=False)
            os.set_blocking(manager.get_fd(), False)
            self._loop.add_reader(manager.get_fd(), self._on_readable)
        except pyinotify.WatchManagerError as err:
            manager.close()
            raise errors.JobQueueError(f"Cannot watch {self.queue_dir}: {err}") from err
        except BaseException:
            manager.close()
            raise
        self._manager = manager
        self._fd = manager.get_fd()

    def stop(self) -> None:
        """Stop reading, close the inotify fd and wake every waiter; idempotent."""
        if self._fd is None:
            return
        self._loop.remove_reader(self._fd)
        self._manager.close()  # closes the inotify fd, dropping the watch
        self._manager = self._fd = None
        self._wake_all()

    def subscribe(self, job_id: int) -> Subscription:
        """Start collecting changes of ``job-<job_id>``; close the result when done."""
        subscription = Subscription(self, job_id)
        self._subscriptions.setdefault(job_id, set()).add(subscription)
        return subscription

    def subscription_count(self) -> int:
        """Number of open subscriptions (for tests and diagnostics)."""
        return sum(len(subs) for subs in self._subscriptions.values())

    def _unsubscribe(self, subscription: Subscription) -> None:
        subs = self._subscriptions.get(subscription.job_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._subscriptions[subscription.job_id]

    def _wake_all(self) -> None:
        self._generation += 1
        for subs in self._subscriptions.values():
            for subscription in subs:
                subscription._notify()

    def _on_readable(self) -> None:
        """Read what the kernel queued; on any failure wake everyone instead."""
        assert self._fd is not None
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._log.exception("Reading inotify events for %s failed", self.queue_dir)
            self._wake_all()
            return
        self._generation += 1
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            _, mask, _, length = _EVENT_HEADER.unpack_from(data, offset)
            start = offset + _EVENT_HEADER.size
            offset = start + length
            self._on_event(mask, data[start:offset].rstrip(b"\0"))

    def _on_event(self, mask: int, name: bytes) -> None:
        """Wake the subscribers of the job an event names."""
        if mask & pyinotify.IN_Q_OVERFLOW:
            self._log.warning("The inotify queue overflowed; waking every waiter")
            self._wake_all()
            return
        if mask & pyinotify.IN_IGNORED:
            self._log.error("The watch on %s went away; waking every waiter", self.queue_dir)
            self._wake_all()
            return
        match = _JOB_NAME_RE.fullmatch(name.decode("ascii", "replace"))
        if match is None:
            return
        for subscription in self._subscriptions.get(int(match.group(1)), ()):
            subscription._notify()
