"""Named shared/exclusive locks with timeouts and priority-ordered waiters.

A :class:`LockManager` hands out locks by name to *owners* (any hashable; the
processor uses the job's identity). Locks spring into existence when first
asked for and are forgotten as soon as nobody holds or waits for them.

Two levels
----------
Every opcode first takes :data:`CLUSTER_LOCK` (level 0): shared normally,
exclusive for the opcode classes that need the whole cluster to themselves.
Only then does it take its resource locks (level 1, names such as
``"host:db1"``). The caller, the opcode processor, acquires level by level
and releases in reverse. This module knows nothing of levels or jobs; it only
guarantees that the names of *one* :meth:`LockManager.acquire` call are taken
in sorted order, so two owners locking ``{a, b}`` and ``{b, a}`` cannot
deadlock. Keeping the order across calls is the caller's part.

Waiting
-------
Each lock keeps a queue of pending requests ordered by (priority, arrival):
a lower priority number is served first, FIFO within a priority. A request is
granted when it is at the head of the queue and compatible with the holders;
a run of shared requests at the head is granted together, and a shared
request queued behind an exclusive one waits its turn, so writers do not
starve. Acquisition is all-or-nothing with one time budget for the whole set;
:class:`LockAttemptTimeoutStrategy` supplies growing per-attempt budgets so a
job retries (and can be escalated in priority) instead of blocking forever.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final

from jobqueue.errors import LockError, ProgrammerError

#: The cluster-wide lock every opcode takes first (level 0).
CLUSTER_LOCK: Final = "cluster"

SHARED: Final = "shared"
EXCLUSIVE: Final = "exclusive"


@dataclasses.dataclass(frozen=True, order=True)
class _Request:
    """One owner's pending request for one lock; ordered by serving order."""

    priority: int
    seq: int
    owner: Hashable = dataclasses.field(compare=False)
    mode: str = dataclasses.field(compare=False)


@dataclasses.dataclass(eq=False)
class _Waiter:
    """An owner blocked in :meth:`LockManager.acquire`; what to wake on interrupt."""

    interrupted: bool = False
    lock: _Lock | None = None


class _Lock:
    """The state of one named lock.

    Has no mutex of its own: every field is guarded by the manager's mutex,
    which ``changed`` (a condition over that same mutex) also uses. ``changed``
    is notified whenever a change may let a pending request through.
    """

    def __init__(self, mutex: threading.Lock) -> None:
        self.changed = threading.Condition(mutex)
        self.holders: set[Hashable] = set()
        self.exclusive = False
        self.pending: list[_Request] = []  # sorted: the head is served next

    @property
    def mode(self) -> str | None:
        """The mode the lock is held in, or None when nobody holds it."""
        if not self.holders:
            return None
        return EXCLUSIVE if self.exclusive else SHARED

    def is_idle(self) -> bool:
        """Tell whether nobody holds or waits for the lock."""
        return not self.holders and not self.pending

    def can_grant(self, request: _Request) -> bool:
        """Tell whether the pending ``request`` may be granted now.

        Exclusive: only at the head and only with no holders. Shared: only if
        no exclusive holder and no exclusive request ahead of it.
        """
        if request.mode == EXCLUSIVE:
            return not self.holders and self.pending[0] is request
        if self.mode == EXCLUSIVE:
            return False
        for ahead in self.pending:
            if ahead is request:
                return True
            if ahead.mode == EXCLUSIVE:
                return False
        raise ProgrammerError(f"request of {request.owner!r} is not pending")

    def grant(self, request: _Request) -> None:
        """Move ``request`` from the queue to the holders.

        Nobody is notified: a grant never lets another request through (it
        adds a holder, and removing a shared request leaves every later
        request's view of exclusive requests ahead unchanged).
        """
        self.pending.remove(request)
        self.holders.add(request.owner)
        self.exclusive = request.mode == EXCLUSIVE

    def withdraw(self, request: _Request) -> None:
        """Drop a request that gave up; the ones behind it may now pass."""
        self.pending.remove(request)
        self.changed.notify_all()

    def release(self, owner: Hashable) -> None:
        """Remove ``owner`` from the holders and wake the waiters."""
        self.holders.remove(owner)
        self.changed.notify_all()

    def pending_groups(self) -> list[list[Any]]:
        """The queue as ``[[mode, [owner, ...]], ...]``, same-mode runs merged."""
        groups: list[list[Any]] = []
        for request in self.pending:
            if groups and groups[-1][0] == request.mode:
                groups[-1][1].append(request.owner)
            else:
                groups.append([request.mode, [request.owner]])
        return groups


class LockManager:
    """Hands out named shared/exclusive locks to owners.

    Thread-safe. All methods take the manager's mutex for their duration
    (a blocked :meth:`acquire` lets go of it while it waits).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # Lock contract: self._mutex guards _locks, _owned, _waiting and every
        # field of every _Lock. Methods ending in _locked need it held. Each
        # _Lock has its own condition over this same mutex, so a waiter wakes
        # only for changes to the lock it waits on.
        self._clock = clock
        self._mutex = threading.Lock()
        self._locks: dict[str, _Lock] = {}
        self._owned: dict[Hashable, dict[str, str]] = {}
        self._waiting: dict[Hashable, _Waiter] = {}
        self._arrivals = itertools.count()

    def acquire(
        self,
        owner: Hashable,
        names: Iterable[str],
        *,
        shared: bool,
        timeout: float | None,
        priority: int = 0,
    ) -> bool:
        """Acquire all the named locks for ``owner``, in sorted name order.

        ``timeout`` is the budget for the whole set: None blocks until all are
        held, 0 (or less) tries once without waiting. Names ``owner`` already
        holds in the same mode are left as they are. Returns True once all are
        held; False on timeout or :meth:`interrupt`, after releasing whatever
        this call acquired. Waits are served by ``priority`` (lower first),
        then by arrival.

        Raises LockError if ``owner`` holds one of the names in the other mode
        or is already blocked in another acquire; nothing is acquired then.
        Takes the manager's mutex.
        """
        mode = SHARED if shared else EXCLUSIVE
        wanted = sorted(set(_check_names(names)))
        deadline = None if timeout is None else self._clock() + max(timeout, 0.0)
        with self._mutex:
            if owner in self._waiting:
                raise LockError(f"{owner!r} is already waiting for locks")
            held = self._owned.get(owner, {})
            clashes = [name for name in wanted if held.get(name, mode) != mode]
            if clashes:
                raise LockError(f"{owner!r} holds {clashes} in another mode than {mode}")
            missing = [name for name in wanted if name not in held]
            waiter = self._waiting[owner] = _Waiter()
            taken: list[str] = []
            try:
                for name in missing:
                    if not self._acquire_one_locked(owner, name, mode, priority, deadline, waiter):
                        break
                    taken.append(name)
            finally:
                del self._waiting[owner]
                if len(taken) < len(missing):
                    self._release_locked(owner, taken)
            return len(taken) == len(missing)

    def release(self, owner: Hashable, names: Iterable[str] | None = None) -> None:
        """Release the named locks of ``owner``, or all it holds for None.

        Raises LockError, releasing nothing, if ``owner`` does not hold one of
        the names. Takes the manager's mutex.
        """
        with self._mutex:
            held = self._owned.get(owner, {})
            if names is None:
                chosen = list(held)
            else:
                chosen = sorted(set(_check_names(names)))
                unheld = [name for name in chosen if name not in held]
                if unheld:
                    raise LockError(f"{owner!r} does not hold {unheld}")
            self._release_locked(owner, chosen)

    def owned(self, owner: Hashable) -> dict[str, str]:
        """Map each lock ``owner`` holds to ``"shared"`` or ``"exclusive"``.

        Returns a copy. Takes the manager's mutex.
        """
        with self._mutex:
            return dict(self._owned.get(owner, {}))

    def interrupt(self, owner: Hashable) -> None:
        """Make a blocked :meth:`acquire` of ``owner`` give up and return False.

        Does nothing, and leaves nothing behind, if ``owner`` is not inside
        :meth:`acquire`. Takes the manager's mutex.
        """
        with self._mutex:
            waiter = self._waiting.get(owner)
            if waiter is None:
                return
            waiter.interrupted = True
            if waiter.lock is not None:
                waiter.lock.changed.notify_all()

    def lock_info(self) -> list[dict[str, Any]]:
        """Describe every held or awaited lock for the lock monitor, by name.

        Each entry is ``{"name", "mode", "owner", "pending"}``: the mode held
        (None if nobody holds it yet), the holders sorted by ``str``, and the
        pending requests in serving order as ``[mode, [owner, ...]]`` with
        consecutive same-mode requests merged. Takes the manager's mutex.
        """
        with self._mutex:
            return [
                {
                    "name": name,
                    "mode": lock.mode,
                    "owner": sorted(lock.holders, key=str),
                    "pending": lock.pending_groups(),
                }
                for name, lock in sorted(self._locks.items())
            ]

    def _acquire_one_locked(
        self,
        owner: Hashable,
        name: str,
        mode: str,
        priority: int,
        deadline: float | None,
        waiter: _Waiter,
    ) -> bool:
        """Queue for one lock and wait until granted, the deadline, or interrupt.

        Returns whether the lock was granted; if not, the request is gone
        from the queue again. Needs the manager's mutex.
        """
        assert self._mutex.locked(), "manager mutex not held"
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = _Lock(self._mutex)
        request = _Request(priority, next(self._arrivals), owner, mode)
        bisect.insort(lock.pending, request)
        granted = False
        waiter.lock = lock
        try:
            granted = self._wait_for_turn_locked(lock, request, deadline, waiter)
        finally:
            waiter.lock = None
            if not granted:
                lock.withdraw(request)
                self._forget_if_idle_locked(name)
        if granted:
            lock.grant(request)
            self._owned.setdefault(owner, {})[name] = mode
        return granted

    def _wait_for_turn_locked(
        self, lock: _Lock, request: _Request, deadline: float | None, waiter: _Waiter
    ) -> bool:
        """Wait until ``request`` may be granted; False on deadline or interrupt.

        Needs the manager's mutex (released while waiting).
        """
        assert self._mutex.locked(), "manager mutex not held"
        while not waiter.interrupted:
            if lock.can_grant(request):
                return True
            remaining = None if deadline is None else deadline - self._clock()
            if remaining is not None and remaining <= 0:
                return False
            lock.changed.wait(remaining)
        return False

    def _release_locked(self, owner: Hashable, names: Iterable[str]) -> None:
        """Release ``names``, all held by ``owner``. Needs the manager's mutex."""
        assert self._mutex.locked(), "manager mutex not held"
        held = self._owned.get(owner, {})
        for name in names:
            del held[name]
            self._locks[name].release(owner)
            self._forget_if_idle_locked(name)
        if not held:
            self._owned.pop(owner, None)

    def _forget_if_idle_locked(self, name: str) -> None:
        """Drop the lock ``name`` if nobody holds or waits for it.

        Needs the manager's mutex.
        """
        assert self._mutex.locked(), "manager mutex not held"
        if self._locks[name].is_idle():
            del self._locks[name]


def _check_names(names: Iterable[str]) -> Iterable[str]:
    """Reject a bare string, which would otherwise be read as one lock per letter.

    Raises ProgrammerError.
    """
    if isinstance(names, str):
        raise ProgrammerError(f"lock names must be a collection, not the string {names!r}")
    return names


class LockAttemptTimeoutStrategy:
    """Growing per-attempt timeouts with jitter; None once the budget is used up (meaning: block).

    Starts at ``min_wait``; each next timeout is ``(previous * 1.05) ** 1.25``
    clamped to ``[min_wait, max_wait]``, until the timeouts handed out add up
    to ``total``. Each returned value carries +/-5% jitter from ``rng`` (a
    source of floats in [0, 1); 0.5 means none). Not thread-safe: one
    strategy serves one waiting opcode.
    """

    _GROWTH_FACTOR: Final = 1.05
    _GROWTH_POWER: Final = 1.25
    _JITTER: Final = 0.05

    def __init__(
        self,
        *,
        total: float = 1800.0,
        min_wait: float = 1.0,
        max_wait: float = 15.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """Set the budget; raises ProgrammerError unless 0 < min_wait <= max_wait."""
        if not 0 < min_wait <= max_wait:
            raise ProgrammerError(f"need 0 < min_wait <= max_wait, got {min_wait}, {max_wait}")
        self._total = total
        self._min_wait = min_wait
        self._max_wait = max_wait
        self._rng = rng
        self._previous: float | None = None
        self._spent = 0.0

    def next_attempt(self) -> float | None:
        """Return the timeout for the next attempt, or None when the budget is spent."""
        if self._spent >= self._total:
            return None
        if self._previous is None:
            timeout = self._min_wait
        else:
            grown = (self._previous * self._GROWTH_FACTOR) ** self._GROWTH_POWER
            timeout = min(max(grown, self._min_wait), self._max_wait)
        self._previous = timeout
        self._spent += timeout
        return timeout * (1.0 + self._JITTER * (2.0 * self._rng() - 1.0))
