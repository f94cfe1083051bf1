"""Calls due at a given time, run by one thread: no thread per timer, no polling.

``Timers.call_later(delay, fn)`` runs ``fn`` on the timer thread once the
monotonic clock passes its due time; calls due at the same time run in the
order they were made. The thread sleeps on a condition until the earliest
due time or a new, earlier call. A call that raises is logged; the others run.
Knows nothing of jobs.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, order=True)
class _Call:
    due: float
    order: int
    fn: Callable[[], None] = dataclasses.field(compare=False)


class Timers:
    """See the module docstring. ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()  # guards _heap and _stopping
        self._changed = threading.Condition(self._lock)
        self._heap: list[_Call] = []
        self._order = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="timers", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the timer thread in ``delay`` seconds (ignored once stopped)."""
        with self._lock:
            call = _Call(self._clock() + max(0.0, delay), next(self._order), fn)
            heapq.heappush(self._heap, call)
            if self._heap[0] is call:
                self._changed.notify()

    def pending(self) -> int:
        """Calls not yet run."""
        with self._lock:
            return len(self._heap)

    def stop(self) -> None:
        """Drop pending calls and end the thread (waits for a call in progress)."""
        with self._lock:
            self._stopping = True
            self._heap.clear()
            self._changed.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._lock:
                call = self._next_due_locked()
                if call is None:
                    return
            try:
                call.fn()
            except Exception:
                self._log.exception("A timed call failed")

    def _next_due_locked(self) -> _Call | None:
        """Wait for the earliest call to be due and take it; None when stopping."""
        while not self._stopping:
            if not self._heap:
                self._changed.wait()
                continue
            wait = self._heap[0].due - self._clock()
            if wait <= 0:
                return heapq.heappop(self._heap)
            self._changed.wait(wait)
        return None
