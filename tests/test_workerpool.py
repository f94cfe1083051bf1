"""Unit tests for jobqueue.workerpool."""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import Any

import pytest

from jobqueue.errors import GenericError, NoSuchTask, ProgrammerError
from jobqueue.workerpool import DeferTask, WorkerPool
from tests.workerpool_harness import (
    WAIT,
    Gate,
    MakePool,
    pool_threads,
    run_callable,
    wait_until,
)
from tests.workerpool_harness import make_pool as make_pool  # the fixture

# -- running tasks ----------------------------------------------------------------


def test_counting(make_pool: MakePool) -> None:
    ran: list[int] = []
    pool = make_pool(3, ran.append, name="Count")
    assert pool.stats()["workers"] == 3
    for number in range(10):
        pool.add_task(number)
    assert pool.quiesce(WAIT)
    assert sorted(ran) == list(range(10))
    assert pool.stats() == {"workers": 3, "queued": 0, "running": 0, "busy": 0}
    pool.terminate()
    assert pool.stats()["workers"] == 0
    assert sorted(ran) == list(range(10))


def test_quiesce_on_empty_pool_returns_at_once(make_pool: MakePool) -> None:
    assert make_pool(3, run_callable).quiesce(timeout=0)
    assert make_pool(0, run_callable).quiesce(timeout=0)


def test_inactive_pool_accepts_but_does_not_run(make_pool: MakePool) -> None:
    ran: list[int] = []
    pool = make_pool(3, ran.append)
    pool.set_active(False)
    assert not pool.is_active()
    for number in range(5):
        pool.add_task(number)
    assert not pool.quiesce(timeout=0.05), "queued tasks count while inactive"
    assert ran == []
    assert pool.stats() == {"workers": 3, "queued": 5, "running": 0, "busy": 0}
    pool.set_active(True)
    assert pool.is_active()
    assert pool.quiesce(WAIT)
    assert sorted(ran) == list(range(5))


def test_deactivating_lets_the_running_task_finish(make_pool: MakePool) -> None:
    ran: list[str] = []
    gate = Gate(on_open=lambda: ran.append("first"))
    pool = make_pool(1, run_callable)
    pool.add_task(gate)
    assert gate.started.wait(WAIT)
    pool.set_active(False)
    pool.add_task(lambda: ran.append("second"))
    gate.opened.set()
    assert wait_until(lambda: not pool.has_running_tasks())
    assert ran == ["first"]
    assert pool.stats()["queued"] == 1


def test_single_worker_runs_in_insertion_order(make_pool: MakePool) -> None:
    ran: list[int] = []
    pool = make_pool(1, ran.append)
    for number in range(50):
        pool.add_task(number)
    assert pool.quiesce(WAIT)
    assert ran == list(range(50))


def one_worker_held(make_pool: MakePool) -> tuple[WorkerPool, Gate, list[Any]]:
    """A pool of one worker, busy with a gate until ``gate.opened`` is set;
    the payloads of the tasks it runs after the gate are appended to ``ran``."""
    gate = Gate()
    ran: list[Any] = []
    pool = make_pool(1, lambda payload: gate() if payload is gate else ran.append(payload))
    pool.add_task(gate)
    assert gate.started.wait(WAIT)
    return pool, gate, ran


def test_priority_then_fifo(make_pool: MakePool) -> None:
    pool, gate, ran = one_worker_held(make_pool)
    added = [(5, "a"), (0, "b"), (5, "c"), (-3, "d"), (0, "e"), (5, "f"), (-3, "g")]
    for priority, name in added:
        pool.add_task((priority, name), priority=priority)
    gate.opened.set()
    assert pool.quiesce(WAIT)
    assert ran == [(-3, "d"), (-3, "g"), (0, "b"), (0, "e"), (5, "a"), (5, "c"), (5, "f")]


def test_add_many_tasks_with_priority_list(make_pool: MakePool) -> None:
    ran: list[str] = []
    pool = make_pool(1, ran.append)
    pool.set_active(False)
    ids = pool.add_many_tasks(["x", "y", "z"], priority=[2, 1, 0])
    assert len(set(ids)) == 3
    pool.add_task("w", priority=1)
    pool.add_many_tasks(["v", "u"], priority=3, task_ids=["v-id", "u-id"])
    pool.set_active(True)
    assert pool.quiesce(WAIT)
    assert ran == ["z", "y", "w", "x", "v", "u"]


def test_add_many_tasks_rejects_wrong_lengths(make_pool: MakePool) -> None:
    pool = make_pool(1, run_callable)
    pool.set_active(False)
    with pytest.raises(ProgrammerError):
        pool.add_many_tasks(["a", "b", "c"], priority=[1, 2])
    with pytest.raises(ProgrammerError):
        pool.add_many_tasks(["a", "b"], task_ids=["only-one"])
    assert pool.stats()["queued"] == 0


def test_auto_assigned_ids_are_unique(make_pool: MakePool) -> None:
    pool = make_pool(0, run_callable)
    ids = [pool.add_task(number) for number in range(20)]
    ids += pool.add_many_tasks(list(range(20)))
    assert len(set(ids)) == 40
    assert pool.stats()["queued"] == 40


# -- deferring ----------------------------------------------------------------------


def test_defer_requeues_with_same_task_id(make_pool: MakePool) -> None:
    target = 2
    runs: list[tuple[Hashable, int]] = []
    pool: WorkerPool

    def run(_payload: Any) -> None:
        priority = pool.current_priority()
        runs.append((pool.current_task_id(), priority))
        if priority > target:
            raise DeferTask(priority - 1)

    pool = make_pool(3, run)
    ids = pool.add_many_tasks(list(range(8)), priority=[9, 5, 2, 7, 3, 8, 6, 4])
    assert pool.quiesce(WAIT)
    for task_id, start in zip(ids, [9, 5, 2, 7, 3, 8, 6, 4], strict=True):
        assert [prio for run_id, prio in runs if run_id == task_id] == list(
            range(start, target - 1, -1)
        )
    assert len(runs) == sum(start - target + 1 for start in [9, 5, 2, 7, 3, 8, 6, 4])


def test_defer_goes_behind_equals(make_pool: MakePool) -> None:
    gate = Gate()
    ran: list[str] = []
    deferred: set[str] = set()

    def run(payload: Any) -> None:
        if payload is gate:
            gate()
            return
        ran.append(payload)
        if payload == "a" and payload not in deferred:
            deferred.add(payload)
            raise DeferTask()

    pool = make_pool(1, run)
    pool.add_task(gate)
    assert gate.started.wait(WAIT)
    pool.add_many_tasks(["a", "b", "c"], priority=1)
    pool.add_task("late", priority=2)
    gate.opened.set()
    assert pool.quiesce(WAIT)
    assert ran == ["a", "b", "c", "a", "late"]


def test_defer_merges_with_a_queued_copy(make_pool: MakePool) -> None:
    gate = Gate()
    runs: list[tuple[str, int]] = []
    pool: WorkerPool

    def run(payload: str) -> None:
        runs.append((payload, pool.current_priority()))
        if payload == "first":
            gate()
            raise DeferTask(1)

    pool = make_pool(1, run)
    pool.add_task("first", priority=5, task_id="x")
    assert gate.started.wait(WAIT)
    pool.add_task("second", priority=3, task_id="x")
    gate.opened.set()
    assert pool.quiesce(WAIT)
    assert runs == [("first", 5), ("second", 1)]


def test_defer_task_is_a_signal_not_an_error() -> None:
    assert not issubclass(DeferTask, GenericError)
    assert DeferTask().priority is None
    assert DeferTask(4).priority == 4


# -- task ids and priorities ----------------------------------------------------------


def test_change_task_priority_reorders_and_keeps_fifo(make_pool: MakePool) -> None:
    pool, gate, ran = one_worker_held(make_pool)
    for name in "abcde":
        pool.add_task(name, priority=5, task_id=name)
    pool.change_task_priority("e", 1)
    pool.change_task_priority("c", 1)
    pool.change_task_priority("a", 9)
    pool.change_task_priority("b", 5)
    assert pool.stats()["queued"] == 5
    gate.opened.set()
    assert pool.quiesce(WAIT)
    assert ran == ["c", "e", "b", "d", "a"]


def test_change_task_priority_there_and_back(make_pool: MakePool) -> None:
    """A task moved away and back has two heap entries of equal priority and
    order (one abandoned): the heap must order them without comparing tasks."""
    pool, gate, ran = one_worker_held(make_pool)
    for name in "abc":
        pool.add_task(name, priority=5, task_id=name)
    for priority in (1, 5, 1, 5):
        pool.change_task_priority("b", priority)
    pool.add_task("d", priority=5, task_id="d")
    gate.opened.set()
    assert pool.quiesce(WAIT)
    assert ran == ["a", "b", "c", "d"]


def test_change_task_priority_unknown_finished_and_running(make_pool: MakePool) -> None:
    gate = Gate()
    pool = make_pool(1, run_callable)
    with pytest.raises(NoSuchTask):
        pool.change_task_priority("never", 1)
    pool.add_task(lambda: None, task_id="done")
    assert pool.quiesce(WAIT)
    with pytest.raises(NoSuchTask):
        pool.change_task_priority("done", 1)
    pool.add_task(gate, task_id="busy")
    assert gate.started.wait(WAIT)
    try:
        with pytest.raises(NoSuchTask):
            pool.change_task_priority("busy", 1)
        pool.add_task(lambda: None, task_id="busy")
        pool.change_task_priority("busy", 1)  # queued again, so known now
    finally:
        gate.opened.set()
    assert pool.quiesce(WAIT)


def test_current_task_inside_and_outside(make_pool: MakePool) -> None:
    seen: list[tuple[Hashable, int]] = []
    pool: WorkerPool

    def run(_payload: Any) -> None:
        seen.append((pool.current_task_id(), pool.current_priority()))

    pool = make_pool(1, run)
    pool.add_task(None, priority=7, task_id="job-1")
    assert pool.quiesce(WAIT)
    assert seen == [("job-1", 7)]
    with pytest.raises(ProgrammerError):
        pool.current_priority()
    with pytest.raises(ProgrammerError):
        pool.current_task_id()
    with pytest.raises(ProgrammerError):
        pool.set_task_name("outside")


def test_current_task_of_another_pool_is_refused(make_pool: MakePool) -> None:
    errors: list[Exception] = []
    other = make_pool(0, run_callable)

    def run(_payload: Any) -> None:
        try:
            other.current_priority()
        except ProgrammerError as err:
            errors.append(err)

    pool = make_pool(1, run)
    pool.add_task(None)
    assert pool.quiesce(WAIT)
    assert len(errors) == 1


def test_duplicate_queued_id_merges(make_pool: MakePool) -> None:
    runs: list[tuple[str, int]] = []
    pool: WorkerPool

    def run(payload: str) -> None:
        runs.append((payload, pool.current_priority()))

    pool = make_pool(1, run)
    pool.set_active(False)
    assert pool.add_task("original", priority=5, task_id="x") == "x"
    assert pool.add_task("better", priority=3, task_id="x") == "x"
    assert pool.add_task("worse", priority=7, task_id="x") == "x"
    pool.add_task("other", priority=4, task_id="y")
    assert pool.stats()["queued"] == 2
    pool.set_active(True)
    assert pool.quiesce(WAIT)
    assert runs == [("original", 3), ("other", 4)]


def test_readding_a_running_id_runs_it_again(make_pool: MakePool) -> None:
    gate = Gate()
    ran: list[str] = []

    def run(payload: str) -> None:
        ran.append(payload)
        if payload == "first":
            gate()

    pool = make_pool(1, run)
    pool.add_task("first", task_id="x")
    assert gate.started.wait(WAIT)
    pool.add_task("again", task_id="x")
    assert pool.stats() == {"workers": 1, "queued": 1, "running": 1, "busy": 1}
    gate.opened.set()
    assert pool.quiesce(WAIT)
    assert ran == ["first", "again"]


# -- failures, names, shape of the pool -------------------------------------------------


def test_failing_task_is_logged_and_worker_survives(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def run(payload: str) -> None:
        if payload == "bad":
            raise ValueError("boom")
        ran.append(payload)

    pool = make_pool(1, run)
    with caplog.at_level(logging.ERROR, logger="test.workerpool"):
        pool.add_task("bad", task_id="t-bad")
        pool.add_task("good")
        assert pool.quiesce(WAIT)
    assert ran == ["good"]
    assert pool.stats()["workers"] == 1
    [record] = [rec for rec in caplog.records if rec.name == "test.workerpool"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "t-bad" in record.getMessage()


def test_set_task_name_renames_thread_until_task_ends(make_pool: MakePool) -> None:
    names: list[str] = []
    pool: WorkerPool

    def run(payload: str | None) -> None:
        if payload is not None:
            pool.set_task_name(payload)
        names.append(threading.current_thread().name)

    pool = make_pool(1, run, name="Nm")
    pool.add_task("job7")
    pool.add_task(None)
    assert pool.quiesce(WAIT)
    assert names == ["Nm1/job7", "Nm1"]
    assert pool_threads("Nm") == ["Nm1"]


def test_resize_up_and_down(make_pool: MakePool) -> None:
    ran: list[int] = []
    pool = make_pool(2, ran.append, name="Rsz")
    pool.resize(5)
    assert pool.stats()["workers"] == 5
    assert sorted(pool_threads("Rsz")) == [f"Rsz{n}" for n in range(1, 6)]
    pool.resize(1)
    assert wait_until(lambda: pool.stats()["workers"] == 1)
    pool.resize(0)
    assert wait_until(lambda: pool.stats()["workers"] == 0)
    pool.add_task(1)
    assert not pool.quiesce(timeout=0.05), "no worker may run it"
    pool.resize(2)
    assert pool.quiesce(WAIT)
    assert ran == [1]
    assert pool.stats()["workers"] == 2
    with pytest.raises(ProgrammerError):
        pool.resize(-1)


def test_shrinking_waits_for_the_current_task(make_pool: MakePool) -> None:
    gates = [Gate(), Gate()]
    pool = make_pool(2, run_callable)
    for gate in gates:
        pool.add_task(gate)
    assert all(gate.started.wait(WAIT) for gate in gates)
    pool.resize(1)
    assert pool.stats() == {"workers": 2, "queued": 0, "running": 2, "busy": 2}
    for gate in gates:
        gate.opened.set()
    assert wait_until(lambda: pool.stats()["workers"] == 1)
    assert pool.quiesce(WAIT)


def test_terminate_joins_threads_and_is_idempotent(make_pool: MakePool) -> None:
    pool = make_pool(3, run_callable, name="Term")
    pool.resize(4)
    pool.resize(2)
    assert pool_threads("Term")
    pool.terminate()
    assert pool_threads("Term") == []
    assert pool.stats()["workers"] == 0
    pool.terminate()
    assert pool.stats()["workers"] == 0


def test_terminate_finishes_running_and_drops_queued(make_pool: MakePool) -> None:
    finished: list[str] = []
    gate = Gate(on_open=lambda: finished.append("running"))
    pool = make_pool(1, run_callable, name="Drop")
    pool.add_task(gate)
    assert gate.started.wait(WAIT)
    pool.add_task(lambda: finished.append("queued"))
    stopper = threading.Thread(target=pool.terminate)
    stopper.start()
    stopper.join(timeout=0.05)
    assert stopper.is_alive(), "terminate must wait for the running task"
    gate.opened.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert finished == ["running"]
    assert pool.stats() == {"workers": 0, "queued": 0, "running": 0, "busy": 0}
    assert pool_threads("Drop") == []


def test_quiesce_and_terminate_refused_inside_a_task(make_pool: MakePool) -> None:
    errors: list[str] = []
    pool: WorkerPool

    def run(_payload: Any) -> None:
        for call in (pool.quiesce, pool.terminate):
            try:
                call()
            except ProgrammerError:
                errors.append(call.__name__)

    pool = make_pool(1, run)
    pool.add_task(None)
    assert pool.quiesce(WAIT)
    assert errors == ["quiesce", "terminate"]
