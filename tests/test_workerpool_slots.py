"""Unit tests for jobqueue.workerpool: slots, and tasks that step aside from them."""

from __future__ import annotations

import pytest

from jobqueue.errors import ProgrammerError
from jobqueue.workerpool import WorkerPool
from tests.workerpool_harness import (
    WAIT,
    Gate,
    MakePool,
    pool_threads,
    run_callable,
    wait_until,
)
from tests.workerpool_harness import make_pool as make_pool  # the fixture


class AsideGate(Gate):
    """A Gate that steps aside from its slot once it started, then blocks."""

    def __init__(self, pool: list[WorkerPool]) -> None:
        super().__init__()
        self.pool = pool

    def __call__(self) -> None:
        self.pool[0].step_aside()
        self.pool[0].step_aside()  # a second call changes nothing
        super().__call__()


def two_aside_one_queued(
    make_pool: MakePool, name: str
) -> tuple[WorkerPool, AsideGate, AsideGate, Gate]:
    """A pool of 1 slot whose first two tasks started and stepped aside; a third queued."""
    holder: list[WorkerPool] = []
    first, second, third = AsideGate(holder), AsideGate(holder), Gate()
    pool = make_pool(1, run_callable, name=name)
    holder.append(pool)
    for gate in (first, second, third):
        pool.add_task(gate)
    assert first.started.wait(WAIT) and second.started.wait(WAIT)
    return pool, first, second, third


def test_a_task_that_steps_aside_gives_its_slot_to_the_next(make_pool: MakePool) -> None:
    holder: list[WorkerPool] = []
    aside, after = AsideGate(holder), Gate()
    pool = make_pool(1, run_callable, name="Sa")
    holder.append(pool)
    pool.add_task(aside)
    assert aside.started.wait(WAIT)
    pool.add_task(after)
    assert after.started.wait(WAIT)  # runs while the first still runs, on a second thread
    assert pool.stats() == {"workers": 1, "queued": 0, "running": 2, "busy": 1}
    assert sorted(pool_threads("Sa")) == ["Sa1", "Sa2"]
    aside.opened.set()
    after.opened.set()
    assert wait_until(lambda: pool.stats()["running"] == 0)
    assert pool.stats()["busy"] == 0


def test_stepping_aside_never_runs_more_than_two_threads_per_slot(
    make_pool: MakePool,
) -> None:
    pool, first, second, third = two_aside_one_queued(make_pool, "Sb")
    # Both stepped aside, so the slot is free, but two threads run already.
    assert wait_until(lambda: pool.stats() == {"workers": 1, "queued": 1, "running": 2, "busy": 0})
    assert not third.started.is_set()
    first.opened.set()  # its thread takes the third task
    assert third.started.wait(WAIT)
    second.opened.set()
    third.opened.set()
    assert wait_until(lambda: pool.stats()["running"] == 0)
    assert len(pool_threads("Sb")) == 2


def test_a_full_pool_takes_no_task_when_one_steps_aside_while_shrunk(
    make_pool: MakePool,
) -> None:
    holder: list[WorkerPool] = []
    blocker, aside, waiting = Gate(), AsideGate(holder), Gate()
    pool = make_pool(2, run_callable, name="Sc")
    holder.append(pool)
    pool.add_task(blocker)
    assert blocker.started.wait(WAIT)
    pool.resize(1)  # the blocker keeps the only slot
    pool.add_task(aside)
    pool.add_task(waiting)
    assert not aside.started.wait(0.2)  # no slot for it yet
    blocker.opened.set()
    assert aside.started.wait(WAIT)  # then it steps aside: the last one gets the slot
    assert waiting.started.wait(WAIT)
    aside.opened.set()
    waiting.opened.set()
    assert wait_until(lambda: pool.stats()["running"] == 0)


def test_step_aside_outside_a_task_is_an_error(make_pool: MakePool) -> None:
    pool = make_pool(1, run_callable)
    with pytest.raises(ProgrammerError):
        pool.step_aside()


def test_growing_a_pool_whose_threads_stepped_aside_starts_a_thread(
    make_pool: MakePool,
) -> None:
    pool, first, second, waiting = two_aside_one_queued(make_pool, "Sd")
    assert not waiting.started.is_set()  # two threads per slot, both still busy
    pool.resize(2)
    # A third thread, before the first two end (their gates give up after WAIT).
    assert waiting.started.wait(WAIT / 4)
    for gate in (first, second, waiting):
        gate.opened.set()
    assert wait_until(lambda: pool.stats()["running"] == 0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_killed_by_a_base_exception_gives_its_slot_back(make_pool: MakePool) -> None:
    ran: list[str] = []

    def run(payload: str) -> None:
        if payload == "exit":
            raise SystemExit  # escapes the pool's handler and ends the thread
        ran.append(payload)

    pool = make_pool(1, run, name="Se")
    pool.add_task("exit")
    assert wait_until(lambda: pool.stats()["running"] == 0)
    pool.add_task("after")
    assert wait_until(lambda: ran == ["after"])
    assert pool.stats()["busy"] == 0
