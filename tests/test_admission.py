"""Admission: holds by start time, PAUSE and RATE_LIMIT; slots handed on; rules kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from jobqueue import filters, qlang
from jobqueue.admission import HOLD_PAUSED, HOLD_RATE_LIMITED, HOLD_SCHEDULED, Admission
from jobqueue.errors import OpPrereqError, StorageError
from jobqueue.filters import JobView
from jobqueue.model import split_time
from jobqueue.storage.memory import MemoryBacking, MemoryJobStore

RUN = {"OP_ID": "OP_COMMAND_RUN", "argv": ["true"]}
DELAY = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
RUNS_ONLY = [["opcode", ["=", "OP_ID", "OP_COMMAND_RUN"]]]


class ManualTimers:
    """Timers that run their calls only when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.calls.append((delay, fn))

    def fire_all(self) -> None:
        calls, self.calls = self.calls, []
        for _, fn in calls:
            fn()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    def __init__(self, backing: MemoryBacking | None = None) -> None:
        self.backing = backing or MemoryBacking()
        self.store = MemoryJobStore(self.backing)
        self.timers = ManualTimers()
        self.clock = Clock()
        self.woken: list[int] = []
        self.admission = Admission(
            self.store,
            qlang.compile_filter,
            self.timers,  # type: ignore[arg-type]
            self.woken.extend,
            clock=self.clock,
        )

    def add(self, action: Any, predicates: list[Any] | None = None, **kwargs: Any) -> str:
        made = filters.make_rule(
            kwargs.get("uuid"),
            kwargs.get("priority", 0),
            predicates or [],
            action,
            [],
            watermark=kwargs.get("watermark", 0),
        )
        self.admission.replace_rule(made)
        return made.uuid

    def admit(self, job_id: int, op: dict[str, Any] = RUN, **kwargs: Any) -> Any:
        return self.admission.admit(
            JobView(job_id, [op]),
            kwargs.get("priority", 0),
            kwargs.get("not_before"),
            kwargs.get("attempt", 1),
        )


@pytest.fixture
def setup() -> Setup:
    return Setup()


def test_without_rules_every_job_goes(setup: Setup) -> None:
    assert setup.admit(1).hold is None and setup.admit(1).reject is None


def test_a_start_time_to_come_holds_the_job_until_its_timer(setup: Setup) -> None:
    start = split_time(setup.clock.now + 30)
    decision = setup.admit(7, not_before=start, attempt=2)
    assert decision.hold == {"kind": HOLD_SCHEDULED, "at": start, "attempt": 2}
    assert [round(delay) for delay, _ in setup.timers.calls] == [30]
    setup.admit(7, not_before=start)  # decided again: no second timer for the same time
    assert len(setup.timers.calls) == 1
    setup.clock.now += 30
    setup.timers.fire_all()
    assert setup.woken == [7]
    assert setup.admit(7, not_before=start).hold is None


def test_a_timer_for_a_changed_start_time_wakes_nobody(setup: Setup) -> None:
    setup.admit(7, not_before=split_time(setup.clock.now + 30))
    setup.admit(7, not_before=split_time(setup.clock.now + 60))
    setup.clock.now += 30
    first, second = setup.timers.calls
    first[1]()
    assert setup.woken == []
    second[1]()
    assert setup.woken == [7]


def test_pause_holds_matching_jobs_until_the_rule_goes(setup: Setup) -> None:
    uuid = setup.add("PAUSE", RUNS_ONLY)
    assert setup.admit(1).hold == {"kind": HOLD_PAUSED, "filter": uuid}
    assert setup.admit(2, DELAY).hold is None
    assert setup.admission.held()[HOLD_PAUSED] == 1
    setup.admission.delete_rule(uuid)
    assert setup.woken == [1]
    assert setup.admit(1).hold is None


def test_reject_is_returned_for_the_queue_to_cancel(setup: Setup) -> None:
    uuid = setup.add("REJECT", [["jobid", [">", "id", 5]]])
    decision = setup.admit(6)
    assert decision.reject is not None and decision.reject.uuid == uuid
    assert setup.admit(5).reject is None


def test_rate_limit_hands_each_freed_slot_to_the_best_waiting_job(setup: Setup) -> None:
    uuid = setup.add(["RATE_LIMIT", 2], RUNS_ONLY)
    assert setup.admit(1).hold is None and setup.admit(2).hold is None
    assert setup.admit(3, priority=0).hold == {
        "kind": HOLD_RATE_LIMITED,
        "filter": uuid,
        "limit": 2,
    }
    assert setup.admit(4, priority=-10).hold is not None
    assert setup.admit(5, DELAY).hold is None  # not matched: not limited
    assert setup.admission.slot_holders(uuid) == {1, 2}
    setup.admission.release(1)
    assert setup.woken == [4]  # the better priority first
    assert setup.admit(4, priority=-10).hold is None  # its slot was kept for it
    setup.admission.release(2)
    assert setup.woken == [4, 3]
    assert setup.admission.slot_holders(uuid) == {4, 3}


def test_a_job_keeps_its_slot_between_opcodes(setup: Setup) -> None:
    uuid = setup.add(["RATE_LIMIT", 1], RUNS_ONLY)
    assert setup.admit(1).hold is None
    assert setup.admit(1).hold is None  # its next opcode
    assert setup.admission.slot_holders(uuid) == {1}


def test_a_held_job_gives_up_its_slot(setup: Setup) -> None:
    uuid = setup.add(["RATE_LIMIT", 1], RUNS_ONLY)
    setup.admit(1)
    assert setup.admit(2).hold is not None
    setup.admit(1, not_before=split_time(setup.clock.now + 60))  # a retry's delay
    assert setup.woken == [2] and setup.admission.slot_holders(uuid) == {2}


def test_a_job_leaving_the_line_does_not_take_a_slot(setup: Setup) -> None:
    uuid = setup.add(["RATE_LIMIT", 1], RUNS_ONLY)
    setup.admit(1)
    setup.admit(2)
    setup.admit(3)
    setup.admission.release(2)  # canceled while it waited
    setup.admission.release(1)
    assert setup.woken == [3] and setup.admission.slot_holders(uuid) == {3}


def test_raising_a_limit_wakes_the_waiting_jobs(setup: Setup) -> None:
    uuid = setup.add(["RATE_LIMIT", 1], RUNS_ONLY)
    setup.admit(1)
    setup.admit(2)
    setup.add(["RATE_LIMIT", 2], RUNS_ONLY, uuid=uuid)
    assert setup.woken == [2]
    assert setup.admit(2).hold is None
    assert setup.admission.slot_holders(uuid) == {1, 2}


def test_rules_are_durable_and_bad_ones_are_not_stored(setup: Setup) -> None:
    uuid = setup.add("PAUSE", RUNS_ONLY, priority=3)
    with pytest.raises(OpPrereqError):
        setup.add("PAUSE", [["jobid", ["=", "nofield", 1]]])
    with pytest.raises(OpPrereqError):
        setup.admission.delete_rule("00000000-0000-4000-8000-000000000000")
    again = Setup(setup.backing)
    again.admission.load_rules()
    assert [rule.uuid for rule in again.admission.rules()] == [uuid]
    assert again.admit(1).hold == {"kind": HOLD_PAUSED, "filter": uuid}


def test_a_rule_that_cannot_be_stored_does_not_take_effect(setup: Setup) -> None:
    class Failing(MemoryJobStore):
        def replace_filter(self, rule: dict[str, Any]) -> None:
            raise StorageError("disk full", 28)

    setup.admission._store = Failing(setup.backing)
    with pytest.raises(StorageError):
        setup.add("PAUSE")
    assert setup.admission.rules() == [] and setup.admit(1).hold is None
