"""DependencyManager: Ganeti's TestJobDependencyManager scenarios."""

from __future__ import annotations

import random
from typing import Any

import pytest

from jobqueue.constants import FINALIZED, Status
from jobqueue.depmgr import DependencyManager, Outcome

ALL_FINAL = sorted(str(status) for status in FINALIZED)


class Harness:
    """A manager over a dict of statuses, recording what it re-enqueues.

    The enqueue callback asserts the manager's lock is free when it is called
    (Ganeti: waiters are re-queued outside the manager lock).
    """

    def __init__(self) -> None:
        self.statuses: dict[int, Status] = {}
        self.enqueued: list[list[int]] = []
        self.manager = DependencyManager(self.statuses.get)
        self.on_enqueue: Any = None

    def notify(self, finished_id: int) -> None:
        """What the queue does: notify, then re-queue the waiters it was given."""
        waiters = self.manager.notify(finished_id)
        if waiters:
            self.enqueue(waiters)

    def enqueue(self, job_ids: list[int]) -> None:
        assert self.manager._lock.acquire(blocking=False), "enqueue called under the manager lock"
        self.manager._lock.release()
        self.manager.lock_info()  # would deadlock if the lock were held
        self.enqueued.append(list(job_ids))
        if self.on_enqueue is not None:
            self.on_enqueue(job_ids)

    def check(self, job_id: int, dep_id: int, wanted: list[str]) -> Outcome:
        outcome, message = self.manager.check(job_id, dep_id, wanted)
        assert isinstance(message, str) and message
        return outcome


@pytest.fixture
def harness() -> Harness:
    return Harness()


def pseudo_lock(dep_id: int, waiters: list[int]) -> dict[str, Any]:
    return {"name": f"job/{dep_id}", "mode": None, "owner": [], "pending": [["job", waiters]]}


def test_not_finalized_then_cancel(harness: Harness) -> None:
    harness.statuses[10] = Status.RUNNING
    outcome, message = harness.manager.check(20, 10, ["success"])
    assert outcome == Outcome.WAIT
    assert "10" in message and "success" in message
    assert harness.manager.lock_info() == [pseudo_lock(10, [20])]
    assert harness.manager.waiting_jobs() == {20}
    harness.statuses[10] = Status.CANCELED
    assert harness.check(20, 10, ["success"]) == Outcome.CANCEL
    assert harness.manager.lock_info() == []
    assert harness.manager.waiting_jobs() == set()


@pytest.mark.parametrize("later", [Status.QUEUED, Status.WAITING, Status.CANCELING])
def test_not_finalized_then_still_pending(harness: Harness, later: Status) -> None:
    harness.statuses[10] = Status.RUNNING
    assert harness.check(20, 10, []) == Outcome.WAIT
    harness.statuses[10] = later
    assert harness.check(20, 10, []) == Outcome.WAIT
    assert harness.manager.lock_info() == [pseudo_lock(10, [20])]


@pytest.mark.parametrize(
    ("status", "wanted", "outcome"),
    [
        (Status.CANCELED, ["canceled"], Outcome.CONTINUE),
        (Status.CANCELED, [], Outcome.CANCEL),
        (Status.CANCELED, ["success", "error"], Outcome.CANCEL),
        (Status.ERROR, ["error"], Outcome.CONTINUE),
        (Status.ERROR, [], Outcome.CONTINUE),
        (Status.ERROR, ["success"], Outcome.WRONG_STATUS),
        (Status.ERROR, ["success", "canceled"], Outcome.WRONG_STATUS),
        (Status.SUCCESS, ["success"], Outcome.CONTINUE),
        (Status.SUCCESS, [], Outcome.CONTINUE),
        (Status.SUCCESS, ["error"], Outcome.WRONG_STATUS),
        (Status.SUCCESS, ["canceled"], Outcome.WRONG_STATUS),
    ],
)
def test_finalized_outcomes(
    harness: Harness, status: Status, wanted: list[str], outcome: Outcome
) -> None:
    harness.statuses[10] = status
    assert harness.check(20, 10, wanted) == outcome
    assert harness.manager.lock_info() == []
    assert harness.manager.waiting_jobs() == set()


@pytest.mark.parametrize("status", sorted(FINALIZED))
def test_require_multiple(harness: Harness, status: Status) -> None:
    harness.statuses[10] = status
    assert harness.check(20, 10, ALL_FINAL) == Outcome.CONTINUE


def test_wrong_status_message(harness: Harness) -> None:
    harness.statuses[10] = Status.ERROR
    outcome, message = harness.manager.check(20, 10, ["success"])
    assert outcome == Outcome.WRONG_STATUS
    assert "10" in message and "'error'" in message and "success" in message


def test_finalized_right_away_registers_nothing(harness: Harness) -> None:
    harness.statuses[10] = Status.SUCCESS
    assert harness.check(20, 10, ["success"]) == Outcome.CONTINUE
    assert harness.manager.lock_info() == []
    harness.notify(10)
    assert harness.enqueued == []


def test_notify_reenqueues_outside_the_lock(harness: Harness) -> None:
    harness.statuses[10] = Status.RUNNING
    for job_id in (23, 21, 22):
        assert harness.check(job_id, 10, []) == Outcome.WAIT
    assert harness.manager.lock_info() == [pseudo_lock(10, [21, 22, 23])]
    seen: list[Any] = []
    harness.on_enqueue = lambda ids: seen.append(harness.manager.lock_info())
    harness.statuses[10] = Status.SUCCESS
    harness.notify(10)
    assert harness.enqueued == [[21, 22, 23]]
    assert seen == [[]], "waiters must be cleared before they are re-queued"
    harness.notify(10)
    assert harness.enqueued == [[21, 22, 23]], "a second notify finds nobody"


def test_enqueue_may_check_again(harness: Harness) -> None:
    """A re-queued job may call check from inside the enqueue callback."""
    harness.statuses[10] = Status.RUNNING
    assert harness.check(20, 10, []) == Outcome.WAIT
    outcomes: list[Outcome] = []
    harness.on_enqueue = lambda ids: outcomes.extend(harness.check(i, 10, []) for i in ids)
    harness.statuses[10] = Status.SUCCESS
    harness.notify(10)
    assert outcomes == [Outcome.CONTINUE]


def test_notify_of_unrelated_job(harness: Harness) -> None:
    harness.statuses[10] = Status.RUNNING
    harness.check(20, 10, [])
    harness.notify(11)
    assert harness.enqueued == []
    assert harness.manager.lock_info() == [pseudo_lock(10, [20])]


def test_self_dependency(harness: Harness) -> None:
    harness.statuses[20] = Status.RUNNING
    outcome, message = harness.manager.check(20, 20, [])
    assert outcome == Outcome.ERROR and "itself" in message
    assert harness.manager.lock_info() == []


def test_missing_job(harness: Harness) -> None:
    outcome, message = harness.manager.check(20, 404, ["success"])
    assert outcome == Outcome.ERROR
    assert "404" in message and "job lost" in message
    assert harness.manager.lock_info() == []
    assert harness.manager.waiting_jobs() == set()


def test_remove_waiter(harness: Harness) -> None:
    harness.statuses.update({10: Status.RUNNING, 11: Status.QUEUED})
    harness.check(20, 10, [])
    harness.check(20, 11, [])
    harness.check(21, 11, [])
    assert harness.manager.remove_waiter(20)
    assert not harness.manager.remove_waiter(20)
    assert harness.manager.lock_info() == [pseudo_lock(11, [21])]
    harness.notify(10)
    assert harness.enqueued == []


def test_lock_info_sorted_numerically(harness: Harness) -> None:
    for dep_id in (100, 9, 20):
        harness.statuses[dep_id] = Status.RUNNING
        harness.check(1, dep_id, [])
    assert [entry["name"] for entry in harness.manager.lock_info()] == [
        "job/9",
        "job/20",
        "job/100",
    ]


@pytest.mark.parametrize("seed", range(5))
def test_many_waiters_on_many_deps(harness: Harness, seed: int) -> None:
    rng = random.Random(seed)
    deps = list(range(1, 11))
    waiters = {job_id: rng.sample(deps, rng.randint(1, 4)) for job_id in range(100, 140)}
    for dep_id in deps:
        harness.statuses[dep_id] = rng.choice([Status.QUEUED, Status.WAITING, Status.RUNNING])
    remaining = {job_id: list(wanted) for job_id, wanted in waiters.items()}
    done: set[int] = set()

    def advance(job_id: int) -> None:
        """What the job step does: check the remaining dependencies in order."""
        while remaining[job_id]:
            outcome = harness.check(job_id, remaining[job_id][0], [])
            if outcome == Outcome.WAIT:
                return
            assert outcome == Outcome.CONTINUE
            remaining[job_id].pop(0)
        done.add(job_id)

    def expected_lock_info() -> list[dict[str, Any]]:
        blocked: dict[int, list[int]] = {}
        for job_id, left in remaining.items():
            if left:
                blocked.setdefault(left[0], []).append(job_id)
        return [pseudo_lock(dep, sorted(jobs)) for dep, jobs in sorted(blocked.items())]

    for job_id in waiters:
        advance(job_id)
    assert done == set()
    assert harness.manager.lock_info() == expected_lock_info()
    harness.on_enqueue = lambda ids: [advance(job_id) for job_id in ids]

    order = list(deps)
    rng.shuffle(order)
    for dep_id in order:
        waiting_on_it = sorted(j for j, left in remaining.items() if left and left[0] == dep_id)
        before = len(harness.enqueued)
        harness.statuses[dep_id] = rng.choice(sorted(FINALIZED - {Status.CANCELED}))
        harness.notify(dep_id)
        if waiting_on_it:
            assert harness.enqueued[before:] == [waiting_on_it]
        else:
            assert len(harness.enqueued) == before
        assert harness.manager.lock_info() == expected_lock_info()
        assert harness.manager.waiting_jobs() == {j for j, left in remaining.items() if left}
    assert done == set(waiters)
    assert harness.manager.lock_info() == []
    assert harness.manager.waiting_jobs() == set()
