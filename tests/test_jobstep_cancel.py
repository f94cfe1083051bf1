"""``jobstep.step`` driven by hand, with no threads: a job canceled while queued, waiting
or running, and the queue shutting down around it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobqueue.constants import Status
from jobqueue.jobstep import ActiveJob, OpCallbacks, Verdict, step
from jobqueue.locking import LockManager
from jobqueue.signals import JobCanceled
from tests.jobstep_harness import (
    CANCELED,
    JOB_ID,
    Env,
    FakeProcessor,
    dummy,
    make_job,
    mark_canceling,
    results,
    run_to_end,
    statuses,
    time_out,
)


def cancel_queued(active: ActiveJob, env: Env) -> None:
    """What the queue does to cancel a queued job: finalize it at once."""
    active.job.finalize_pending(Status.CANCELED, CANCELED, env.now())
    env.write(active.job)


class TestCancel:
    def test_cancel_while_queued(self) -> None:
        env = Env(FakeProcessor())
        active = make_job(dummy(), dummy())
        cancel_queued(active, env)
        writes = env.writes
        assert step(active, env) == Verdict.FINISHED
        assert env.writes == writes
        job = env.stored()
        assert statuses(job) == ["canceled", "canceled"]
        assert results(job) == [CANCELED, CANCELED]
        assert job.start_timestamp is None and job.end_timestamp is not None

    def test_cancel_while_waiting_in_queue(self) -> None:
        processor = FakeProcessor(time_out)
        env = Env(processor)
        active = make_job(dummy(), dummy(), dummy())
        assert step(active, env) == Verdict.DEFER
        assert statuses(active.job) == ["waiting", "queued", "queued"]
        mark_canceling(active)
        assert active.job.status == Status.CANCELING
        writes = env.writes
        assert step(active, env) == Verdict.FINISHED
        assert env.writes == writes + 1
        assert len(processor.calls) == 1, "a canceling opcode must not run"
        job = env.stored()
        assert statuses(job) == ["canceled"] * 3 and results(job) == [CANCELED] * 3
        assert job.start_timestamp is not None and job.end_timestamp is not None

    def test_cancel_during_lock_wait(self) -> None:
        active = make_job(dummy(), dummy())

        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.check_cancel()
            mark_canceling(active)  # the cancel arrives while the locks are awaited
            cbs.check_cancel()
            raise AssertionError("check_cancel did not see the cancel")

        env = Env(FakeProcessor(run))
        assert step(active, env) == Verdict.FINISHED
        assert statuses(env.stored()) == ["canceled", "canceled"]
        assert results(env.stored()) == [CANCELED, CANCELED]

    def test_cancel_during_lock_wait_with_timeout(self) -> None:
        """The real processor: the lock attempt times out after the cancel arrived."""
        active = make_job({"OP_ID": "OP_COMMAND_RUN", "argv": ["false"], "locks": ["busy"]})
        locks = ClockHookLockManager(lambda: mark_canceling(active))
        assert locks.acquire("other", ["busy"], shared=False, timeout=0)
        locks.armed = True
        env = Env(locks=locks)
        assert step(active, env) == Verdict.FINISHED
        assert locks.fired
        assert statuses(env.stored()) == ["canceled"]
        assert results(env.stored()) == [CANCELED]
        assert locks.owned(JOB_ID) == {}

    def test_cancel_wins_over_queue_shutdown(self) -> None:
        active = make_job({"OP_ID": "OP_COMMAND_RUN", "argv": ["false"], "locks": ["busy"]})
        env: Env

        def both() -> None:
            env.is_accepting = False
            mark_canceling(active)

        locks = ClockHookLockManager(both)
        assert locks.acquire("other", ["busy"], shared=False, timeout=0)
        locks.armed = True
        env = Env(locks=locks)
        assert step(active, env) == Verdict.FINISHED
        assert statuses(env.stored()) == ["canceled"]

    def test_cancel_between_opcodes(self) -> None:
        env = Env()
        active = make_job(dummy(result=1), dummy(), dummy())
        assert step(active, env) == Verdict.DEFER
        assert active.job.status == Status.QUEUED
        cancel_queued(active, env)
        assert step(active, env) == Verdict.FINISHED
        job = env.stored()
        assert statuses(job) == ["success", "canceled", "canceled"]
        assert results(job) == [1, CANCELED, CANCELED]

    def test_killed_while_running_but_opcode_succeeded(self) -> None:
        active = make_job(dummy(), dummy(), dummy())

        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            mark_canceling(active)  # CancelJob(kill=True) while the LU runs
            return "done anyway"

        env = Env(FakeProcessor(run))
        assert step(active, env) == Verdict.FINISHED
        job = env.stored()
        assert statuses(job) == ["success", "canceled", "canceled"]
        assert results(job) == ["done anyway", CANCELED, CANCELED]

    def test_a_look_for_a_kill_makes_no_event(self) -> None:
        """A no-op delay (``wait_kill(0)``) and ``kill_requested`` only look:
        the event (about 1 KB) is made by a wait that can be woken, or a kill."""
        seen: list[tuple[bool, bool, bool]] = []

        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            looked = (cbs.wait_kill(0), cbs.kill_requested(), active._kill is None)
            active.kill.set()  # CancelJob(kill=True) while the LU runs
            seen.append(looked)
            seen.append((cbs.wait_kill(0), cbs.kill_requested(), cbs.wait_kill(60)))
            return "done"

        active = make_job(dummy())
        assert step(active, Env(FakeProcessor(run))) == Verdict.FINISHED
        assert seen == [(False, False, True), (True, True, True)]

    def test_lu_raising_job_canceled(self) -> None:
        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            raise JobCanceled()

        env = Env(FakeProcessor(run))
        active = make_job(dummy(), dummy())
        assert step(active, env) == Verdict.FINISHED
        assert statuses(env.stored()) == ["canceled", "canceled"]


class ClockHookLockManager(LockManager):
    """A real LockManager whose clock runs ``hook`` once, while the job waits for a lock.

    The clock is read inside the wait loop, with the manager's mutex held and
    the job's request queued; so the hook changes the job's state "while the
    locks are awaited" without a second thread. Every reading is one second
    later than the last, so timed waits end at once.
    """

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__(clock=self._tick)
        self.hook = hook
        self.armed = False
        self.fired = False
        self._now = 0.0

    def _job_is_queued_locked(self) -> bool:
        return any(
            request.owner == JOB_ID for lock in self._locks.values() for request in lock.pending
        )

    def _tick(self) -> float:
        if self.armed and not self.fired and self._job_is_queued_locked():
            self.fired = True
            self.hook()
        self._now += 1.0
        return self._now


class TestQueueShutdown:
    def test_shutdown_during_lock_wait(self) -> None:
        active = make_job({"OP_ID": "OP_COMMAND_RUN", "argv": ["false"], "locks": ["busy"]})
        env: Env

        def shut_down() -> None:
            env.is_accepting = False

        locks = ClockHookLockManager(shut_down)
        assert locks.acquire("other", ["busy"], shared=False, timeout=0)
        locks.armed = True
        env = Env(locks=locks)
        assert step(active, env) == Verdict.DEFER
        assert locks.fired
        job = env.stored()
        assert statuses(job) == ["queued"]
        assert job.start_timestamp is not None and job.end_timestamp is None
        assert locks.owned(JOB_ID) == {}

    def test_shutdown_between_opcodes(self) -> None:
        env = Env()
        active = make_job(dummy(result="kept"), dummy(), dummy())
        assert step(active, env) == Verdict.DEFER
        env.is_accepting = False
        assert step(active, env) == Verdict.DEFER
        job = env.stored()
        assert statuses(job) == ["success", "queued", "queued"]
        assert results(job) == ["kept", None, None]
        assert job.end_timestamp is None
        env.is_accepting = True
        assert run_to_end(active, env) == [Verdict.DEFER, Verdict.FINISHED]
        assert env.stored().status == Status.SUCCESS

    def test_shutdown_before_start(self) -> None:
        env = Env()
        env.is_accepting = False
        active = make_job(dummy())
        assert step(active, env) == Verdict.DEFER
        job = env.stored()
        assert statuses(job) == ["queued"]
        assert job.start_timestamp is not None and job.end_timestamp is None
