"""WaitForJobChange callers waiting in the server's event loop, woken per job.

The queue publishes a job's changes on whatever thread wrote it. ``JobWaits``
keeps one watch per job that anyone waits for (however many wait) and, on a
change, schedules one call into the loop that wakes all of that job's
waiters: one thread hand-off per change, not one per waiter, and none for
jobs nobody watches.

Waking is conservative: a ``Waiter`` remembers that its job changed until
``wait`` reports it, and ``stop`` wakes everyone. Waiters may wake
spuriously, never miss a change: make the waiter first, then look at
``latest`` (or the store), then wait.

Threading: every method but the watch callback runs on the loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from jobqueue.model import Job


class Watch(Protocol):
    latest: Job | None

    def close(self) -> None: ...


#: ``watch(job_id, on_change)``: start hearing of one job's changes.
WatchFn = Callable[[int, Callable[[], None]], Watch]


class _Channel:
    """The waiters of one job and the one watch they share."""

    def __init__(self) -> None:
        self.waiters: set[Waiter] = set()
        self.watch: Watch | None = None
        self.scheduled = False  # a wake-up of this channel is on its way to the loop


class Waiter:
    """One WaitForJobChange call's interest in its job; a context manager."""

    def __init__(self, waits: JobWaits, job_id: int, channel: _Channel) -> None:
        self.job_id = job_id
        self._waits = waits
        self._channel = channel
        self._changed = asyncio.Event()

    @property
    def latest(self) -> Job | None:
        """The job's newest published state; None: read it from the store."""
        return None if self._channel.watch is None else self._channel.watch.latest

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a change; True if one came since the last True."""
        if not self._changed.is_set() and timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                pass
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    def wake(self) -> None:
        self._changed.set()

    def close(self) -> None:
        self._waits._leave(self)

    def __enter__(self) -> Waiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class JobWaits:
    """See the module docstring; ``watch`` is the queue's (or a feed's) watch source."""

    def __init__(self, watch: WatchFn, loop: asyncio.AbstractEventLoop) -> None:
        self._watch = watch
        self._loop = loop
        self._channels: dict[int, _Channel] = {}

    def waiter(self, job_id: int) -> Waiter:
        """Start collecting changes of one job; close the result when done."""
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = _Channel()
            channel.watch = self._watch(job_id, lambda: self._from_any_thread(job_id, channel))
        waiter = Waiter(self, job_id, channel)
        channel.waiters.add(waiter)
        return waiter

    def waiter_count(self) -> int:
        return sum(len(channel.waiters) for channel in self._channels.values())

    def wake_all(self) -> None:
        """Wake every waiter (shutting down, or the source lost track)."""
        for channel in self._channels.values():
            for waiter in channel.waiters:
                waiter.wake()

    def _from_any_thread(self, job_id: int, channel: _Channel) -> None:
        """The watch callback: one wake-up per change reaches the loop."""
        if channel.scheduled:
            return  # the one on its way reads ``latest`` when it runs
        channel.scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._wake_channel, channel)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _wake_channel(self, channel: _Channel) -> None:
        channel.scheduled = False
        for waiter in channel.waiters:
            waiter.wake()

    def _leave(self, waiter: Waiter) -> None:
        channel = self._channels.get(waiter.job_id)
        if channel is None or waiter not in channel.waiters:
            return
        channel.waiters.discard(waiter)
        if not channel.waiters:
            del self._channels[waiter.job_id]
            if channel.watch is not None:
                channel.watch.close()
