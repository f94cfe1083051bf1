"""Group commit: the items of concurrent callers written together, one group at a time.

A caller that finds no group being written writes its own items at once
(a group of one). Callers arriving while a group is being written wait; when
it is done, the first of them writes, in one call, everything that gathered
meanwhile, on behalf of all of them, and each gets its own part of the
results. So the size of a write follows the load, and a caller waits for
at most two writes: the one in progress when it came, and its own.

The write function is given the items of a group in the order their callers
came, each caller's items together and in their order, and returns one
result per item. If it raises, every caller of that group raises the same
exception.

Thread-safe; a caller whose items are empty returns at once. A waiting
caller must not be interrupted (a signal's exception): the daemon's request
threads, which call it, never are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Caller(Generic[Item, Result]):
    """One waiting call: its items, then its results or the error of its group."""

    __slots__ = ("done", "error", "items", "results", "wakeup")

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self.results: list[Result] = []
        self.error: BaseException | None = None
        self.done = False
        # Held from the start: released once, when the call is done or is to lead.
        self.wakeup = threading.Lock()
        self.wakeup.acquire()

    def outcome(self) -> list[Result]:
        if self.error is not None:
            raise self.error
        return self.results


class GroupCommit(Generic[Item, Result]):
    """Writes the items of concurrent calls in groups; see the module docstring."""

    def __init__(self, write: Callable[[Sequence[Item]], Sequence[Result]]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._gathering: list[_Caller[Item, Result]] = []
        self._writing = False  # a caller is writing a group

    def __call__(self, items: Sequence[Item]) -> list[Result]:
        """The write's results for ``items``, once the group holding them is written."""
        if not items:
            return []
        caller: _Caller[Item, Result] = _Caller(items)
        with self._lock:
            self._gathering.append(caller)
            leads = not self._writing
            self._writing = True
        if not leads:
            caller.wakeup.acquire()
            if caller.done:
                return caller.outcome()
        with self._lock:  # lead: write everything gathered, this call's items first
            group, self._gathering = self._gathering, []
        try:
            self._write_group(group)
        finally:
            with self._lock:
                successor = self._gathering[0] if self._gathering else None
                self._writing = successor is not None
            for member in group:
                if member is not caller:
                    member.wakeup.release()
            if successor is not None:
                successor.wakeup.release()
        return caller.outcome()

    def _write_group(self, group: list[_Caller[Item, Result]]) -> None:
        """Write the items of ``group`` in one call; give each member its results or the error."""
        try:
            items = [item for member in group for item in member.items]
            results = list(self._write(items))
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} results for {len(items)} items")
        except BaseException as err:
            for member in group:
                member.error = err
        else:
            start = 0
            for member in group:
                member.results = results[start : start + len(member.items)]
                start += len(member.items)
        for member in group:
            member.done = True
