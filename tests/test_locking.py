"""Tests for jobqueue.locking: the lock manager and the attempt-timeout strategy."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import pytest

from jobqueue.errors import LockError, ProgrammerError
from jobqueue.locking import CLUSTER_LOCK, LockAttemptTimeoutStrategy, LockManager

JOIN_TIMEOUT = 2.0


def wait_until(predicate: Callable[[], bool], timeout: float = JOIN_TIMEOUT) -> None:
    """Bounded poll: return once ``predicate()`` holds, fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


def pending_owners(manager: LockManager, name: str) -> list[Hashable]:
    """All owners waiting for lock ``name``, in serving order."""
    for info in manager.lock_info():
        if info["name"] == name:
            return [owner for _, owners in info["pending"] for owner in owners]
    return []


def info_of(manager: LockManager, name: str) -> dict[str, Any] | None:
    return next((info for info in manager.lock_info() if info["name"] == name), None)


class Acquirer(threading.Thread):
    """Runs one acquire() in a thread; optionally records the grant and releases."""

    def __init__(
        self,
        manager: LockManager,
        owner: Hashable,
        names: Iterable[str],
        *,
        shared: bool = False,
        timeout: float | None = None,
        priority: int = 0,
        grants: list[Hashable] | None = None,
        hold_until: threading.Event | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.manager = manager
        self.owner = owner
        self.names = list(names)
        self.kwargs: dict[str, Any] = {"shared": shared, "timeout": timeout, "priority": priority}
        self.grants = grants
        self.hold_until = hold_until
        self.result: bool | None = None

    def run(self) -> None:
        self.result = self.manager.acquire(self.owner, self.names, **self.kwargs)
        if self.result and self.grants is not None:
            self.grants.append(self.owner)
        if self.result and self.hold_until is not None:
            assert self.hold_until.wait(JOIN_TIMEOUT)
        if self.result and (self.grants is not None or self.hold_until is not None):
            self.manager.release(self.owner)


def start_waiting(manager: LockManager, name: str, acquirer: Acquirer) -> Acquirer:
    """Start ``acquirer`` and return once its request for ``name`` is queued."""
    acquirer.start()
    wait_until(lambda: acquirer.owner in pending_owners(manager, name))
    return acquirer


def finish(thread: threading.Thread) -> None:
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()


@pytest.fixture
def manager() -> LockManager:
    return LockManager()


# --- compatibility -----------------------------------------------------------


def test_shared_locks_are_compatible(manager: LockManager) -> None:
    assert manager.acquire("a", [CLUSTER_LOCK], shared=True, timeout=0)
    assert manager.acquire("b", [CLUSTER_LOCK], shared=True, timeout=0)
    assert manager.owned("a") == {CLUSTER_LOCK: "shared"}
    assert manager.lock_info() == [
        {"name": CLUSTER_LOCK, "mode": "shared", "owner": ["a", "b"], "pending": []}
    ]


@pytest.mark.parametrize(
    ("first_shared", "second_shared"), [(True, False), (False, True), (False, False)]
)
def test_exclusive_conflicts(manager: LockManager, first_shared: bool, second_shared: bool) -> None:
    assert manager.acquire("a", ["x"], shared=first_shared, timeout=0)
    assert not manager.acquire("b", ["x"], shared=second_shared, timeout=0)
    assert manager.owned("b") == {}
    assert info_of(manager, "x") == {
        "name": "x",
        "mode": "shared" if first_shared else "exclusive",
        "owner": ["a"],
        "pending": [],
    }


def test_reacquire_in_same_mode_is_a_noop(manager: LockManager) -> None:
    assert manager.acquire("a", ["x"], shared=False, timeout=0)
    assert manager.acquire("a", ["x", "y"], shared=False, timeout=0)
    assert manager.owned("a") == {"x": "exclusive", "y": "exclusive"}
    manager.release("a", ["x"])
    assert manager.owned("a") == {"y": "exclusive"}


@pytest.mark.parametrize("held_shared", [True, False])
def test_mode_change_is_a_lock_error(manager: LockManager, held_shared: bool) -> None:
    assert manager.acquire("a", ["x"], shared=held_shared, timeout=0)
    with pytest.raises(LockError):
        manager.acquire("a", ["w", "x"], shared=not held_shared, timeout=0)
    assert manager.owned("a") == {"x": "shared" if held_shared else "exclusive"}
    assert [info["name"] for info in manager.lock_info()] == ["x"]


# --- timeouts and partial acquisitions ---------------------------------------


def test_try_once_fails_on_held_lock_and_leaves_nothing(manager: LockManager) -> None:
    assert manager.acquire("holder", ["z"], shared=False, timeout=0)
    assert not manager.acquire("b", ["a", "z"], shared=False, timeout=0)
    assert manager.owned("b") == {}
    assert [info["name"] for info in manager.lock_info()] == ["z"]
    assert manager.acquire("c", ["a"], shared=False, timeout=0)


def test_timeout_returns_false_in_time_and_releases_partial(manager: LockManager) -> None:
    assert manager.acquire("holder", ["b"], shared=False, timeout=0)
    start = time.monotonic()
    assert not manager.acquire("w", ["c", "a", "b"], shared=False, timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 1.5
    assert manager.owned("w") == {}
    assert manager.owned("holder") == {"b": "exclusive"}
    assert manager.acquire("other", ["a", "c"], shared=False, timeout=0)


def test_failed_acquire_keeps_locks_held_before_the_call(manager: LockManager) -> None:
    assert manager.acquire("w", ["a"], shared=False, timeout=0)
    assert manager.acquire("holder", ["b"], shared=False, timeout=0)
    assert not manager.acquire("w", ["a", "b", "c"], shared=False, timeout=0)
    assert manager.owned("w") == {"a": "exclusive"}


def test_deadline_follows_injected_clock() -> None:
    ticks = itertools.count(step=1000.0)
    manager = LockManager(clock=lambda: next(ticks))
    assert manager.acquire("holder", ["x"], shared=False, timeout=0)
    start = time.monotonic()
    assert not manager.acquire("w", ["x"], shared=False, timeout=500.0)
    assert time.monotonic() - start < 1.0
    assert manager.owned("w") == {}


def test_blocking_acquire_wakes_on_release(manager: LockManager) -> None:
    assert manager.acquire("holder", ["x"], shared=False, timeout=0)
    waiter = start_waiting(manager, "x", Acquirer(manager, "w", ["x"], shared=True))
    assert waiter.result is None
    manager.release("holder")
    finish(waiter)
    assert waiter.result is True
    assert manager.owned("w") == {"x": "shared"}


# --- serving order -----------------------------------------------------------


def test_waiters_served_by_priority_then_fifo(manager: LockManager) -> None:
    assert manager.acquire("holder", ["x"], shared=False, timeout=0)
    grants: list[Hashable] = []
    waiters = [
        start_waiting(manager, "x", Acquirer(manager, owner, ["x"], priority=prio, grants=grants))
        for owner, prio in [("w1", 5), ("w2", 0), ("w3", 5), ("w4", -3)]
    ]
    assert info_of(manager, "x") == {
        "name": "x",
        "mode": "exclusive",
        "owner": ["holder"],
        "pending": [["exclusive", ["w4", "w2", "w1", "w3"]]],
    }
    manager.release("holder", ["x"])
    for waiter in waiters:
        finish(waiter)
    assert grants == ["w4", "w2", "w1", "w3"]
    assert all(waiter.result for waiter in waiters)
    assert manager.lock_info() == []


def test_shared_run_granted_together_and_no_writer_starvation(manager: LockManager) -> None:
    assert manager.acquire("holder", ["x"], shared=False, timeout=0)
    readers_go, writer_go = threading.Event(), threading.Event()
    s1, s2, e1, s3 = (
        start_waiting(manager, "x", Acquirer(manager, owner, ["x"], shared=shared, hold_until=go))
        for owner, shared, go in [
            ("s1", True, readers_go),
            ("s2", True, readers_go),
            ("e1", False, writer_go),
            ("s3", True, readers_go),
        ]
    )
    assert info_of(manager, "x") == {
        "name": "x",
        "mode": "exclusive",
        "owner": ["holder"],
        "pending": [["shared", ["s1", "s2"]], ["exclusive", ["e1"]], ["shared", ["s3"]]],
    }
    manager.release("holder")
    wait_until(lambda: manager.owned("s1") != {} and manager.owned("s2") != {})
    info = info_of(manager, "x")
    assert info is not None
    assert (info["mode"], info["owner"]) == ("shared", ["s1", "s2"])
    assert info["pending"] == [["exclusive", ["e1"]], ["shared", ["s3"]]]
    readers_go.set()
    wait_until(lambda: manager.owned("e1") != {})
    assert pending_owners(manager, "x") == ["s3"]
    assert manager.owned("s3") == {}
    writer_go.set()
    for thread in (s1, s2, e1, s3):
        finish(thread)
    assert [s1.result, s2.result, e1.result, s3.result] == [True] * 4
    assert manager.lock_info() == []


def test_opposite_orders_do_not_deadlock(manager: LockManager) -> None:
    rounds = {"ab": 0, "ba": 0}

    def worker(key: str) -> None:
        for _ in range(200):
            assert manager.acquire(key, list(key), shared=False, timeout=None)
            rounds[key] += 1
            manager.release(key)

    threads = [threading.Thread(target=worker, args=(key,), daemon=True) for key in rounds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5.0)
        assert not thread.is_alive()
    assert rounds == {"ab": 200, "ba": 200}
    assert manager.lock_info() == []


# --- misuse, ownership, interrupt --------------------------------------------


def test_release_of_unheld_lock_is_a_lock_error(manager: LockManager) -> None:
    with pytest.raises(LockError):
        manager.release("a", ["x"])
    assert manager.acquire("a", ["x"], shared=False, timeout=0)
    with pytest.raises(LockError):
        manager.release("a", ["x", "y"])
    assert manager.owned("a") == {"x": "exclusive"}


def test_string_instead_of_names_is_rejected(manager: LockManager) -> None:
    with pytest.raises(ProgrammerError):
        manager.acquire("a", "xy", shared=False, timeout=0)
    assert manager.lock_info() == []


def test_owned_reports_modes_and_release_all_clears(manager: LockManager) -> None:
    assert manager.owned("a") == {}
    assert manager.acquire("a", [CLUSTER_LOCK], shared=True, timeout=0)
    assert manager.acquire("a", ["host:db1", "host:db2"], shared=False, timeout=0)
    assert manager.owned("a") == {
        CLUSTER_LOCK: "shared",
        "host:db1": "exclusive",
        "host:db2": "exclusive",
    }
    manager.release("a")
    assert manager.owned("a") == {}
    assert manager.lock_info() == []


def test_interrupt_wakes_blocked_acquire(manager: LockManager) -> None:
    assert manager.acquire("holder", ["x"], shared=False, timeout=0)
    waiter = start_waiting(manager, "x", Acquirer(manager, "w", ["a", "x"], timeout=None))
    assert manager.owned("w") == {"a": "exclusive"}
    manager.interrupt("w")
    finish(waiter)
    assert waiter.result is False
    assert manager.owned("w") == {}
    assert [info["name"] for info in manager.lock_info()] == ["x"]


def test_interrupt_when_not_waiting_leaves_nothing_behind(manager: LockManager) -> None:
    manager.interrupt("w")
    assert manager.acquire("holder", ["x"], shared=False, timeout=0)
    waiter = start_waiting(manager, "x", Acquirer(manager, "w", ["x"], timeout=None))
    manager.release("holder")
    finish(waiter)
    assert waiter.result is True


def test_second_acquire_while_waiting_is_a_lock_error(manager: LockManager) -> None:
    assert manager.acquire("holder", ["x"], shared=False, timeout=0)
    waiter = start_waiting(manager, "x", Acquirer(manager, "w", ["x"], timeout=None))
    with pytest.raises(LockError):
        manager.acquire("w", ["y"], shared=False, timeout=0)
    manager.interrupt("w")
    finish(waiter)
    assert waiter.result is False


def test_lock_info_is_sorted_and_forgets_idle_locks(manager: LockManager) -> None:
    assert manager.acquire(1, ["node:b", "node:a"], shared=True, timeout=0)
    assert manager.acquire("2", ["node:a"], shared=True, timeout=0)
    for attempt in range(20):
        assert not manager.acquire("w", [f"tmp{attempt}", "node:a"], shared=False, timeout=0)
    assert manager.lock_info() == [
        {"name": "node:a", "mode": "shared", "owner": [1, "2"], "pending": []},
        {"name": "node:b", "mode": "shared", "owner": [1], "pending": []},
    ]
    manager.release(1)
    manager.release("2")
    assert manager.lock_info() == []


# --- the attempt-timeout strategy --------------------------------------------


def drain(strategy: LockAttemptTimeoutStrategy) -> list[float]:
    values: list[float] = []
    while (value := strategy.next_attempt()) is not None:
        values.append(value)
        assert len(values) < 10_000, "strategy never ran out"
    return values


def test_strategy_grows_within_bounds_then_blocks() -> None:
    strategy = LockAttemptTimeoutStrategy(total=100.0, min_wait=1.0, max_wait=4.0, rng=lambda: 0.5)
    values = drain(strategy)
    assert values[0] == 1.0
    assert values == sorted(values)
    assert all(1.0 <= value <= 4.0 for value in values)
    assert values[-1] == 4.0
    assert sum(values) >= 100.0
    assert sum(values[:-1]) < 100.0
    assert [strategy.next_attempt() for _ in range(3)] == [None, None, None]


@pytest.mark.parametrize(("rng_value", "factor"), [(0.0, 0.95), (1.0, 1.05)])
def test_strategy_jitter_bounds(rng_value: float, factor: float) -> None:
    plain = drain(LockAttemptTimeoutStrategy(rng=lambda: 0.5))
    jittered = drain(LockAttemptTimeoutStrategy(rng=lambda: rng_value))
    assert jittered == pytest.approx([value * factor for value in plain])
    assert all(0.95 * 1.0 <= value <= 1.05 * 15.0 for value in jittered)


def test_default_strategy_matches_ganeti_schedule() -> None:
    values = drain(LockAttemptTimeoutStrategy(rng=lambda: 0.5))
    assert len(values) == 130
    assert 1800.0 <= sum(values) < 1815.0
    assert values[:5] == pytest.approx([1.0, 1.06, 1.15, 1.26, 1.42], abs=0.005)
    assert max(values) == 15.0


def test_strategy_rejects_bad_bounds() -> None:
    with pytest.raises(ProgrammerError):
        LockAttemptTimeoutStrategy(min_wait=0.0)
    with pytest.raises(ProgrammerError):
        LockAttemptTimeoutStrategy(min_wait=5.0, max_wait=1.0)
