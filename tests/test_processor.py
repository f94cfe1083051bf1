"""The opcode processor with a real LockManager and callbacks that check their contract."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import pytest

from jobqueue.errors import (
    ECODE_INVAL,
    GenericError,
    OpCodeUnknown,
    OpExecError,
    OpPrereqError,
    ProgrammerError,
)
from jobqueue.locking import CLUSTER_LOCK, LockManager
from jobqueue.lus import builtin_registry
from jobqueue.lus.base import LogicalUnit, ResultWithJobs
from jobqueue.opcodes import ANY, NON_EMPTY_STRING, OpCode, Param, Registry, list_of
from jobqueue.processor import Processor, inherit
from jobqueue.signals import JobCanceled, LockAcquireTimeout
from tests.polling import poll_until

OWNER = 7
#: Upper bound for any wait in these tests; none should come close.
WAIT = 5.0


class RecordingLockManager(LockManager):
    """A real LockManager that also records every acquire call."""

    def __init__(self) -> None:
        super().__init__()
        self.acquired: list[tuple[list[str], bool, int]] = []

    def acquire(
        self,
        owner: Hashable,
        names: Iterable[str],
        *,
        shared: bool,
        timeout: float | None,
        priority: int = 0,
    ) -> bool:
        names = list(names)
        if owner == OWNER:
            self.acquired.append((names, shared, priority))
        return super().acquire(owner, names, shared=shared, timeout=timeout, priority=priority)


class FakeCallbacks:
    """ExecCallbacks that record every call and check the processor keeps the contract.

    Contract: ``notify_start`` is called once, only with the cluster lock and
    every resource lock of the LU held; nothing is logged before
    ``notify_start``; jobs are submitted only after it.
    """

    def __init__(
        self,
        locks: LockManager,
        *,
        owner: Hashable = OWNER,
        priority: int = 0,
        expect_locks: dict[str, str] | None = None,
        submit_result: list[list[Any]] | None = None,
    ) -> None:
        self.locks = locks
        self.owner = owner
        self.priority = priority
        self.expect_locks = expect_locks
        self.submit_result = submit_result
        self.calls: list[str] = []
        self.violations: list[str] = []
        self.log: list[tuple[str, Any]] = []
        self.submitted: list[list[list[dict[str, Any]]]] = []
        self.owned_at_check: list[dict[str, str]] = []
        self.owned_at_start: dict[str, str] | None = None
        self.cancel = threading.Event()

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def notify_waiting(self) -> None:
        self.calls.append("notify_waiting")

    def notify_start(self) -> None:
        if "notify_start" in self.calls:
            self._violation("notify_start called twice")
        self.calls.append("notify_start")
        owned = self.locks.owned(self.owner)
        self.owned_at_start = owned
        if owned.get(CLUSTER_LOCK) is None:
            self._violation("notify_start without the cluster lock")
        if self.expect_locks is not None and owned != self.expect_locks:
            self._violation(f"notify_start with {owned}, expected {self.expect_locks}")

    def feedback(self, log_type: str, message: Any) -> None:
        self.feedback_many([(log_type, message)])

    def feedback_many(self, entries: list[tuple[str, Any]]) -> None:
        if "notify_start" not in self.calls:
            self._violation("feedback before notify_start")
        self.calls.append("feedback")
        self.log.extend(entries)

    def check_cancel(self) -> None:
        self.calls.append("check_cancel")
        self.owned_at_check.append(self.locks.owned(self.owner))
        if self.cancel.is_set():
            raise JobCanceled()

    def kill_requested(self) -> bool:
        return False

    def wait_kill(self, timeout: float) -> bool:
        self.calls.append("wait_kill")
        return False

    def submit_many_jobs(self, jobs: list[list[dict[str, Any]]]) -> list[list[Any]]:
        if "notify_start" not in self.calls:
            self._violation("jobs submitted before notify_start")
        self.calls.append("submit_many_jobs")
        self.submitted.append(jobs)
        if self.submit_result is not None:
            return self.submit_result
        return [[True, 100 + number] for number in range(len(jobs))]

    def current_priority(self) -> int:
        return self.priority


# -- a probe opcode whose LU does what the test hands it ---------------------------------
class OpProbe(OpCode):
    OP_ID = "OP_PROBE"
    PARAMS = (
        Param("exclusive", list_of(NON_EMPTY_STRING), default=[]),
        Param("shared", list_of(NON_EMPTY_STRING), default=[]),
        Param("action", ANY, doc="Callable run as the LU's exec, given the LU"),
    )


class LUProbe(LogicalUnit):
    def locks(self) -> tuple[list[str], list[str]]:
        return list(self.op.exclusive), list(self.op.shared)

    def exec(self) -> Any:
        return self.op.action(self) if self.op.action else "probe done"

    def dry_run_result(self) -> Any:
        return "probe dry run"


class OpProbeCluster(OpCode):
    OP_ID = "OP_PROBE_CLUSTER"


class LUProbeCluster(LogicalUnit):
    REQ_CLUSTER_EXCLUSIVE = True

    def exec(self) -> Any:
        return "cluster"


def make_registry() -> Registry:
    """The built-in opcodes and the probes."""
    registry = builtin_registry()
    registry.register(OpProbe, LUProbe)
    registry.register(OpProbeCluster, LUProbeCluster)
    return registry


#: Types the opcodes the tests hand to ``run``, as the queue does when it loads a job.
TYPER = make_registry()
#: The wall clock (in ns) of the processor under test: dates reason-trail entries.
NOW_NS = 1_700_000_000_123_456_789
#: The trail entry children of an OP_TEST_DUMMY run by ``run`` get.
PARENT_ENTRY = ["gnt:opcode:OP_TEST_DUMMY", f"submitted by job {OWNER}", NOW_NS]


@pytest.fixture
def registry() -> Registry:
    return make_registry()


@pytest.fixture
def locks() -> RecordingLockManager:
    return RecordingLockManager()


@pytest.fixture
def processor(registry: Registry, locks: LockManager) -> Processor:
    return Processor(
        registry, locks, time_ns=lambda: NOW_NS, logger=logging.getLogger("test.processor")
    )


def run(
    processor: Processor, op: dict[str, Any], cbs: FakeCallbacks, timeout: float | None = None
) -> Any:
    typed = TYPER.load(op)
    return processor.exec_opcode(typed, cbs, owner=OWNER, job_id=OWNER, lock_timeout=timeout)


def probe(action: Callable[[LogicalUnit], Any] | None = None, **params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_PROBE", "action": action, **params}


def start_behind_a_held_lock(
    processor: Processor, locks: LockManager
) -> tuple[FakeCallbacks, threading.Thread, list[BaseException | Any]]:
    """Run a probe needing lock "busy", held by "other", in a thread; it blocks there.

    Returns its callbacks, the thread, and the list that receives the probe's
    result or exception once the thread ends.
    """
    assert locks.acquire("other", ["busy"], shared=False, timeout=0)
    cbs = FakeCallbacks(locks)
    outcome: list[BaseException | Any] = []

    def target() -> None:
        try:
            outcome.append(run(processor, probe(exclusive=["busy"]), cbs, timeout=None))
        except BaseException as err:  # handed to the test thread
            outcome.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    return cbs, thread, outcome


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """``poll_until`` with this module's default bound."""
    return poll_until(predicate, timeout)


class TestResultWithJobs:
    def test_children_inherit_from_the_parent(
        self, processor: Processor, locks: LockManager
    ) -> None:
        plain = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
        own = {
            "OP_ID": "OP_TEST_DELAY",
            "duration": 0,
            "priority": 10,
            "comment": "mine",
            "debug_level": 0,
        }
        parent = {
            "OP_ID": "OP_TEST_DUMMY",
            "submit_jobs": [[plain, own], [dict(plain)]],
            "debug_level": 3,
            "priority": -10,
        }
        cbs = FakeCallbacks(locks, submit_result=[[True, 11], [True, 12]])
        result = run(processor, parent, cbs)
        assert result == {"jobs": [[True, 11], [True, 12]]}
        (submitted,) = cbs.submitted
        first, second = submitted[0]
        assert first == {
            **plain,
            "debug_level": 3,
            "priority": -10,
            "comment": "Submitted by OP_TEST_DUMMY",
            "reason": [PARENT_ENTRY],
        }
        # debug_level always comes from the parent; priority and comment only if missing
        assert second == {**own, "debug_level": 3, "reason": [PARENT_ENTRY]}
        assert submitted[1] == [first]
        assert plain == {"OP_ID": "OP_TEST_DELAY", "duration": 0}, "input was modified"
        assert cbs.violations == []

    def test_parent_without_values_leaves_children_alone(self) -> None:
        child = {"OP_ID": "OP_TEST_DELAY", "duration": 1, "debug_level": 1}
        entry = ["gnt:opcode:OP_PARENT", "submitted by job 3", 5]
        assert inherit({"OP_ID": "OP_PARENT"}, child, entry) == {
            **child,
            "comment": "Submitted by OP_PARENT",
            "reason": [entry],
        }
        with_none = inherit(
            {"OP_ID": "OP_PARENT", "priority": None, "debug_level": None}, child, entry
        )
        assert "priority" not in with_none and with_none["debug_level"] == 1

    def test_children_extend_the_parents_reason_trail(
        self, processor: Processor, locks: LockManager
    ) -> None:
        client = ["gnt:client:gnt-debug", "testing", 1_600_000_000_000_000_000]
        daemon = ["gnt:daemon:jobqueue-masterd", "submitted as job 7", 1_600_000_000_000_000_001]
        mine = ["plugin:lu", "own reason", 1_600_000_000_000_000_002]
        children = [[{"OP_ID": "OP_TEST_DUMMY"}], [{"OP_ID": "OP_TEST_DUMMY", "reason": [mine]}]]
        parent = {"OP_ID": "OP_TEST_DUMMY", "submit_jobs": children, "reason": [client, daemon]}
        cbs = FakeCallbacks(locks)
        run(processor, parent, cbs)
        (submitted,) = cbs.submitted
        assert [job[0]["reason"] for job in submitted] == [
            [client, daemon, PARENT_ENTRY],
            [client, daemon, mine, PARENT_ENTRY],
        ]
        assert children[1][0]["reason"] == [mine], "input was modified"
        # a child's reason that is no trail at all is left for submission to refuse
        odd = inherit(parent, {"OP_ID": "OP_TEST_DUMMY", "reason": "why"}, PARENT_ENTRY)
        assert odd["reason"] == "why"

    def test_result_shape_with_extra_values(self, processor: Processor, locks: LockManager) -> None:
        def action(lu: LogicalUnit) -> ResultWithJobs:
            return ResultWithJobs([[{"OP_ID": "OP_TEST_DUMMY"}]] * 2, {"answer": 42, "x": [1]})

        cbs = FakeCallbacks(locks, submit_result=[[True, 5], [False, "Queue full"]])
        result = run(processor, probe(action), cbs)
        assert result == {"answer": 42, "x": [1], "jobs": [[True, 5], [False, "Queue full"]]}
        assert cbs.calls[-1] == "submit_many_jobs"
        assert cbs.violations == []

    def test_partial_submission_failure_passes_through(
        self, processor: Processor, locks: LockManager
    ) -> None:
        outcome = [[False, "Job queue is drained, refusing job"], [True, 3], [False, "bad"]]
        cbs = FakeCallbacks(locks, submit_result=outcome)
        jobs = [[{"OP_ID": "OP_TEST_DUMMY"}]] * 3
        op = {"OP_ID": "OP_TEST_DUMMY", "submit_jobs": jobs}
        assert run(processor, op, cbs) == {"jobs": outcome}

    def test_jobs_key_in_extra_is_a_programmer_error(
        self, processor: Processor, locks: LockManager
    ) -> None:
        def action(lu: LogicalUnit) -> ResultWithJobs:
            return ResultWithJobs([[{"OP_ID": "OP_TEST_DUMMY"}]], {"jobs": "mine"})

        cbs = FakeCallbacks(locks)
        with pytest.raises(ProgrammerError):
            run(processor, probe(action, exclusive=["res"]), cbs)
        assert cbs.submitted == []
        assert locks.owned(OWNER) == {}

    @pytest.mark.parametrize("value", [None, 0, "text", [1, 2], {"jobs": [1]}, {"a": {"b": 1}}])
    def test_other_results_pass_through(
        self, processor: Processor, locks: LockManager, value: Any
    ) -> None:
        cbs = FakeCallbacks(locks)
        result = run(processor, {"OP_ID": "OP_TEST_DUMMY", "result": value}, cbs)
        assert result == value
        assert cbs.submitted == []
        assert cbs.violations == []


class TestUnstorableResults:
    """A result a job cannot store as plain JSON fails the opcode, saying where."""

    @pytest.mark.parametrize(
        ("value", "where"),
        [
            ({1, 2}, "result is of type set"),
            ({"disks": [1, b"raw"]}, "result['disks'][1] is of type bytes"),
            ([float("nan")], "result[0] is nan"),
            ({"when": uuid.UUID(int=1)}, "result['when'] is of type UUID"),
        ],
    )
    def test_result_fails_the_opcode(
        self,
        processor: Processor,
        locks: LockManager,
        caplog: pytest.LogCaptureFixture,
        value: Any,
        where: str,
    ) -> None:
        cbs = FakeCallbacks(locks)
        with (
            caplog.at_level(logging.ERROR, logger="test.processor"),
            pytest.raises(OpExecError, match=re.escape(where)),
        ):
            run(processor, probe(lambda lu: value, exclusive=["res"]), cbs)
        assert locks.owned(OWNER) == {}
        assert any(where in record.getMessage() for record in caplog.records)

    def test_extra_values_are_checked_before_any_child_is_submitted(
        self, processor: Processor, locks: LockManager
    ) -> None:
        def action(lu: LogicalUnit) -> ResultWithJobs:
            return ResultWithJobs([[{"OP_ID": "OP_TEST_DUMMY"}]], {"size": {3}})

        cbs = FakeCallbacks(locks)
        with pytest.raises(OpExecError, match=re.escape("result['size'] is of type set")):
            run(processor, probe(action), cbs)
        assert cbs.submitted == []


class TestErrors:
    def test_foreign_exception_becomes_op_exec_error(
        self, processor: Processor, locks: LockManager, caplog: pytest.LogCaptureFixture
    ) -> None:
        def action(lu: LogicalUnit) -> Any:
            raise ValueError("disk on fire")

        cbs = FakeCallbacks(locks)
        with (
            caplog.at_level(logging.ERROR, logger="test.processor"),
            pytest.raises(OpExecError) as info,
        ):
            run(processor, probe(action, exclusive=["res"]), cbs)
        assert type(info.value) is OpExecError
        assert str(info.value) == "disk on fire"
        assert isinstance(info.value.__cause__, ValueError)
        records = [r for r in caplog.records if r.name == "test.processor"]
        assert records and records[-1].exc_info is not None
        assert "OP_PROBE" in records[-1].getMessage()
        assert locks.owned(OWNER) == {}

    def test_foreign_exception_without_text(self, processor: Processor, locks: LockManager) -> None:
        def action(lu: LogicalUnit) -> Any:
            raise KeyError

        with pytest.raises(OpExecError, match="KeyError"):
            run(processor, probe(action), FakeCallbacks(locks))

    def test_our_errors_pass_unchanged(self, processor: Processor, locks: LockManager) -> None:
        failure = OpPrereqError("not now", "wrong_state")

        def action(lu: LogicalUnit) -> Any:
            raise failure

        with pytest.raises(OpPrereqError) as info:
            run(processor, probe(action), FakeCallbacks(locks))
        assert info.value is failure

    def test_check_arguments_fails_before_any_lock(
        self, processor: Processor, locks: RecordingLockManager
    ) -> None:
        cbs = FakeCallbacks(locks)
        op = {"OP_ID": "OP_TEST_DELAY", "duration": 0, "on_nodes": ["node1"]}
        with pytest.raises(OpPrereqError) as info:
            run(processor, op, cbs)
        assert info.value.args[1] == ECODE_INVAL
        assert locks.acquired == []
        assert "notify_start" not in cbs.calls

    def test_unknown_opcode(self, processor: Processor, locks: LockManager) -> None:
        with pytest.raises(OpCodeUnknown):
            run(processor, {"OP_ID": "OP_NOPE"}, FakeCallbacks(locks))

    def test_reserved_lock_name(self, processor: Processor, locks: LockManager) -> None:
        cbs = FakeCallbacks(locks)
        with pytest.raises(ProgrammerError):
            run(processor, probe(exclusive=[CLUSTER_LOCK]), cbs)
        assert locks.owned(OWNER) == {}
        assert "notify_start" not in cbs.calls


class TestLocks:
    def test_cluster_first_then_sorted_and_released(
        self, processor: Processor, locks: RecordingLockManager
    ) -> None:
        expected = {
            CLUSTER_LOCK: "shared",
            "a": "exclusive",
            "b": "exclusive",
            "c": "shared",
            "d": "exclusive",
        }
        cbs = FakeCallbacks(locks, priority=-10, expect_locks=expected)
        op = probe(exclusive=["d", "b", "a"], shared=["c", "d"])
        assert run(processor, op, cbs) == "probe done"
        assert [names for names, _, _ in locks.acquired] == [
            [CLUSTER_LOCK],
            ["a"],
            ["b"],
            ["c"],
            ["d"],
        ]
        assert [shared for _, shared, _ in locks.acquired] == [True, False, False, True, False]
        assert {priority for _, _, priority in locks.acquired} == {-10}
        # check_cancel runs before every acquisition and sees the locks grow one by one
        assert [sorted(owned) for owned in cbs.owned_at_check] == [
            [],
            [CLUSTER_LOCK],
            ["a", CLUSTER_LOCK],
            ["a", "b", CLUSTER_LOCK],
            ["a", "b", "c", CLUSTER_LOCK],
        ]
        assert cbs.owned_at_start == expected
        assert cbs.violations == []
        assert locks.owned(OWNER) == {}
        assert locks.lock_info() == []

    def test_exclusive_cluster_lock(self, processor: Processor, locks: LockManager) -> None:
        cbs = FakeCallbacks(locks, expect_locks={CLUSTER_LOCK: "exclusive"})
        assert run(processor, {"OP_ID": "OP_PROBE_CLUSTER"}, cbs) == "cluster"
        assert cbs.violations == []

    def test_lock_timeout_leaves_nothing_held(
        self, processor: Processor, locks: LockManager
    ) -> None:
        assert locks.acquire("other", ["b"], shared=False, timeout=0)
        cbs = FakeCallbacks(locks)
        started = time.monotonic()
        with pytest.raises(LockAcquireTimeout):
            run(processor, probe(exclusive=["a", "b", "c"]), cbs, timeout=0.05)
        assert time.monotonic() - started < WAIT
        assert locks.owned(OWNER) == {}
        assert locks.owned("other") == {"b": "exclusive"}
        assert "notify_start" not in cbs.calls
        assert cbs.calls.count("notify_waiting") == 1  # told once, when "b" was busy
        assert [info["name"] for info in locks.lock_info()] == ["b"]

    def test_free_locks_never_report_waiting(
        self, processor: Processor, locks: LockManager
    ) -> None:
        cbs = FakeCallbacks(locks)
        run(processor, probe(exclusive=["a", "b"], shared=["c"]), cbs, timeout=0.05)
        assert "notify_waiting" not in cbs.calls and "notify_start" in cbs.calls

    def test_timeout_on_the_cluster_lock(self, processor: Processor, locks: LockManager) -> None:
        assert locks.acquire("other", [CLUSTER_LOCK], shared=False, timeout=0)
        cbs = FakeCallbacks(locks)
        with pytest.raises(LockAcquireTimeout):
            run(processor, probe(), cbs, timeout=0)
        assert locks.owned(OWNER) == {}
        assert "notify_start" not in cbs.calls

    def test_shared_locks_do_not_block_each_other(
        self, processor: Processor, locks: LockManager
    ) -> None:
        assert locks.acquire("other", [CLUSTER_LOCK, "c"], shared=True, timeout=0)
        cbs = FakeCallbacks(locks)
        assert run(processor, probe(shared=["c"]), cbs, timeout=0) == "probe done"

    def test_cancel_during_lock_wait(self, processor: Processor, locks: LockManager) -> None:
        cbs, thread, outcome = start_behind_a_held_lock(processor, locks)

        def waiting() -> bool:
            return any(
                info["name"] == "busy" and OWNER in info["pending"][0][1]
                for info in locks.lock_info()
                if info["pending"]
            )

        assert wait_until(waiting), "never queued for the lock"
        cbs.cancel.set()
        locks.interrupt(OWNER)
        thread.join(WAIT)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], JobCanceled)
        assert locks.owned(OWNER) == {}
        assert locks.owned("other") == {"busy": "exclusive"}
        assert "notify_start" not in cbs.calls

    def test_interrupt_without_cancel_is_a_timeout(
        self, processor: Processor, locks: LockManager
    ) -> None:
        _, thread, outcome = start_behind_a_held_lock(processor, locks)
        assert wait_until(lambda: any(info["pending"] for info in locks.lock_info()))
        locks.interrupt(OWNER)
        thread.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], LockAcquireTimeout)
        assert locks.owned(OWNER) == {}

    def test_locks_released_after_failure(self, processor: Processor, locks: LockManager) -> None:
        def action(lu: LogicalUnit) -> Any:
            raise GenericError("boom")

        with pytest.raises(GenericError):
            run(processor, probe(action, exclusive=["x"], shared=["y"]), FakeCallbacks(locks))
        assert locks.owned(OWNER) == {}
        assert locks.lock_info() == []


class TestExecution:
    def test_feedback_goes_through_callbacks(
        self, processor: Processor, locks: LockManager
    ) -> None:
        cbs = FakeCallbacks(locks)
        op = {"OP_ID": "OP_TEST_JQUEUE", "log_messages": ["one", "two"]}
        assert run(processor, op, cbs) is True
        assert cbs.log == [("message", "one"), ("message", "two")]
        assert cbs.calls.index("notify_start") < cbs.calls.index("feedback")
        assert cbs.violations == []

    def test_priority_is_read_from_callbacks(
        self, processor: Processor, locks: RecordingLockManager
    ) -> None:
        run(processor, probe(exclusive=["a"]), FakeCallbacks(locks, priority=5))
        assert [priority for _, _, priority in locks.acquired] == [5, 5]

    def test_dry_run_does_not_execute(self, processor: Processor, locks: LockManager) -> None:
        ran: list[bool] = []

        def action(lu: LogicalUnit) -> Any:
            ran.append(True)
            return "ran"

        cbs = FakeCallbacks(locks, expect_locks={CLUSTER_LOCK: "shared", "a": "exclusive"})
        assert run(processor, probe(action, exclusive=["a"], dry_run=True), cbs) == "probe dry run"
        assert ran == []
        assert cbs.violations == []

    def test_command_dry_run_runs_nothing(
        self, processor: Processor, locks: LockManager, tmp_path: Path
    ) -> None:
        marker = tmp_path / "marker"
        argv = ["touch", str(marker)]
        op = {"OP_ID": "OP_COMMAND_RUN", "argv": argv, "dry_run": True, "locks": ["host"]}
        cbs = FakeCallbacks(locks, expect_locks={CLUSTER_LOCK: "shared", "host": "exclusive"})
        assert run(processor, op, cbs) == {"argv": argv}
        assert not marker.exists()
        assert cbs.log == []
        assert cbs.violations == []

    def test_fanout_dry_run_submits_nothing(self, processor: Processor, locks: LockManager) -> None:
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": ["ping", "{item}"],
            "items": ["h1", "h2"],
            "locks": ["host:{item}"],
            "then": [{"OP_ID": "OP_TEST_DUMMY"}],
            "dry_run": True,
        }
        cbs = FakeCallbacks(locks)
        result = run(processor, op, cbs)
        assert cbs.submitted == []
        jobs = result["jobs"]
        assert [job[0]["argv"] for job in jobs[:2]] == [["ping", "h1"], ["ping", "h2"]]
        assert [job[0]["locks"] for job in jobs[:2]] == [["host:h1"], ["host:h2"]]
        assert jobs[2][0]["OP_ID"] == "OP_TEST_DUMMY"
        assert [dep[0] for dep in jobs[2][0]["depends"]] == [-1, -2]

    def test_fanout_submits_children_with_relative_dependencies(
        self, processor: Processor, locks: LockManager
    ) -> None:
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": ["echo", "{item}"],
            "items": ["a", "b", "c"],
            "then": [{"OP_ID": "OP_TEST_DUMMY"}, {"OP_ID": "OP_TEST_DUMMY", "result": 1}],
            "priority": 10,
        }
        cbs = FakeCallbacks(locks)
        result = run(processor, op, cbs)
        assert result == {"jobs": [[True, 100], [True, 101], [True, 102], [True, 103]]}
        (jobs,) = cbs.submitted
        assert len(jobs) == 4
        assert all(job[0]["priority"] == 10 for job in jobs)
        assert all(job[0]["comment"] == "Submitted by OP_COMMAND_FANOUT" for job in jobs)
        then_first, then_second = jobs[3]
        assert sorted(dep[0] for dep in then_first["depends"]) == [-3, -2, -1]
        assert all(
            sorted(dep[1]) == ["canceled", "error", "success"] for dep in then_first["depends"]
        )
        assert "depends" not in then_second
