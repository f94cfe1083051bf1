"""``jobstep.step`` driven by hand, with no threads: a job waiting for its dependencies
and for its locks (lock attempt timeouts, priority escalation).
"""

from __future__ import annotations

import itertools
from typing import Any

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.jobstep import OpCallbacks, Verdict, step
from tests.jobstep_harness import (
    CANCELED,
    JOB_ID,
    PRECEDING,
    Env,
    FakeProcessor,
    dummy,
    make_job,
    mark_canceling,
    results,
    run_to_end,
    statuses,
    succeed,
    time_out,
)


class TestDependencies:
    def test_wait_then_continue(self) -> None:
        env = Env()
        env.statuses[50] = Status.RUNNING
        env.statuses[51] = Status.SUCCESS
        active = make_job(dummy(depends=[[51, []], [50, ["success"]]], result="ran"))
        assert step(active, env) == Verdict.WAITDEP
        assert env.writes == 1  # only queued -> waiting
        assert env.stored().status == Status.WAITING
        assert env.depmgr.waiting_jobs() == {JOB_ID}
        assert step(active, env) == Verdict.WAITDEP
        assert env.writes == 1, "no write while waiting"
        env.statuses[50] = Status.SUCCESS
        assert env.depmgr.notify(50) == [JOB_ID]
        assert step(active, env) == Verdict.FINISHED
        assert env.stored().ops[0].result == "ran"
        assert env.depmgr.waiting_jobs() == set()

    def test_continue(self) -> None:
        env = Env()
        env.statuses.update({10: Status.SUCCESS, 11: Status.ERROR, 12: Status.CANCELED})
        depends = [[10, ["success"]], [11, []], ["12", ["canceled", "error"]]]
        active = make_job(dummy(depends=depends))
        assert step(active, env) == Verdict.FINISHED
        assert env.stored().status == Status.SUCCESS

    def test_cancel(self) -> None:
        env = Env()
        env.statuses[10] = Status.CANCELED
        active = make_job(dummy(result=0), dummy(depends=[[10, ["success"]]]), dummy())
        assert run_to_end(active, env) == [Verdict.DEFER, Verdict.FINISHED]
        job = env.stored()
        assert statuses(job) == ["success", "canceled", "canceled"]
        assert results(job) == [0, CANCELED, CANCELED]

    def test_wrong_status(self) -> None:
        env = Env()
        env.statuses[10] = Status.ERROR
        active = make_job(dummy(result=0), dummy(depends=[[10, ["success"]]]), dummy())
        assert run_to_end(active, env) == [Verdict.DEFER, Verdict.FINISHED]
        job = env.stored()
        assert statuses(job) == ["success", "error", "error"]
        name, (message,) = job.ops[1].result
        assert name == "OpExecError"
        assert "10" in message and "error" in message and "success" in message
        assert job.ops[2].result == PRECEDING

    def test_missing_dependency(self) -> None:
        env = Env()
        active = make_job(dummy(depends=[[99, []]]))
        assert step(active, env) == Verdict.FINISHED
        name, (message,) = env.stored().ops[0].result
        assert name == "OpExecError" and "99" in message and "lost" in message
        assert env.depmgr.waiting_jobs() == set()

    def test_self_dependency(self) -> None:
        env = Env()
        active = make_job(dummy(depends=[[JOB_ID, []]]))
        assert step(active, env) == Verdict.FINISHED
        assert env.stored().status == Status.ERROR
        assert "itself" in env.stored().ops[0].result[1][0]

    def test_canceled_while_waiting_for_dependency(self) -> None:
        env = Env()
        env.statuses[10] = Status.WAITING
        active = make_job(dummy(depends=[[10, []]]), dummy())
        assert step(active, env) == Verdict.WAITDEP
        mark_canceling(active)
        assert env.depmgr.remove_waiter(JOB_ID)
        assert step(active, env) == Verdict.FINISHED
        assert statuses(env.stored()) == ["canceled", "canceled"]
        assert env.depmgr.lock_info() == []


class TestLockTimeouts:
    def test_timeout_defers_and_keeps_waiting(self) -> None:
        processor = FakeProcessor(time_out, time_out, succeed())
        env = Env(processor, attempts=5, first_timeout=0.5)
        active = make_job(dummy())
        assert step(active, env) == Verdict.DEFER
        assert step(active, env) == Verdict.DEFER
        assert env.writes == 1  # queued -> waiting only
        assert env.stored().status == Status.WAITING
        assert step(active, env) == Verdict.FINISHED
        assert [call["timeout"] for call in processor.calls] == [0.5, 0.5, 0.5]
        assert env.stored().status == Status.SUCCESS

    def test_priority_escalation(self) -> None:
        processor = FakeProcessor()
        env = Env(processor, attempts=2, first_timeout=1.0)
        active = make_job(dummy(priority=constants.PRIO_LOW))
        op = active.job.ops[0]

        def attempt(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            if timeout is None:  # blocking acquire: the locks come eventually
                return succeed("finally")(op_input, cbs, timeout)
            return time_out(op_input, cbs, timeout)

        processor.script = [attempt] * 200
        writes_at: list[tuple[int, int]] = []  # (priority, writes) after every step
        verdicts = []
        for _ in range(200):
            verdicts.append(step(active, env))
            writes_at.append((op.priority, env.writes))
            if verdicts[-1] == Verdict.FINISHED:
                break
        assert verdicts[-1] == Verdict.FINISHED and op.result == "finally"
        calls = processor.calls
        # every attempt used the opcode's current priority for its locks
        assert [call["priority"] for call in calls] == [prio for prio, _ in writes_at]
        priorities = [call["priority"] for call in calls]
        assert priorities[0] == constants.PRIO_LOW
        assert min(priorities) == constants.PRIO_HIGHEST
        assert priorities == sorted(priorities, reverse=True)
        assert all(a - b in (0, 1) for a, b in itertools.pairwise(priorities))
        # two attempts per priority, from 10 down to -20, then one blocking attempt
        levels = constants.PRIO_LOW - constants.PRIO_HIGHEST + 1
        assert len(calls) == 2 * levels + 1
        assert [call["timeout"] for call in calls] == [1.0] * (2 * levels) + [None]
        assert calls[-1]["priority"] == constants.PRIO_HIGHEST
        # one write per priority change (plus waiting, running, success)
        assert env.writes == 1 + (levels - 1) + 2
        for (prio_a, writes_a), (prio_b, writes_b) in itertools.pairwise(writes_at[:-1]):
            assert writes_b - writes_a == (1 if prio_b != prio_a else 0)
        assert env.strategies == levels

    def test_escalation_never_goes_below_highest(self) -> None:
        processor = FakeProcessor(*[time_out] * 5)
        env = Env(processor, attempts=1, first_timeout=1.0)
        active = make_job(dummy())
        active.job.ops[0].priority = constants.PRIO_HIGHEST + 1
        for _ in range(5):
            assert step(active, env) == Verdict.DEFER
        assert [call["timeout"] for call in processor.calls] == [1.0, 1.0, None, None, None]
        assert active.job.ops[0].priority == constants.PRIO_HIGHEST
        assert env.stored().ops[0].priority == constants.PRIO_HIGHEST

    def test_new_opcode_gets_a_new_strategy(self) -> None:
        processor = FakeProcessor(time_out, succeed(), succeed())
        env = Env(processor, attempts=2, first_timeout=1.0)
        active = make_job(dummy(), dummy())
        assert run_to_end(active, env) == [Verdict.DEFER, Verdict.DEFER, Verdict.FINISHED]
        assert [call["timeout"] for call in processor.calls] == [1.0, 1.0, 1.0]
        assert env.strategies == 2
        assert [op.priority for op in active.job.ops] == [0, 0]

    def test_real_processor_lock_timeout(self) -> None:
        env = Env(attempts=2, first_timeout=0.001)
        assert env.locks.acquire("other", ["busy"], shared=False, timeout=0)
        active = make_job({"OP_ID": "OP_COMMAND_RUN", "argv": ["false"], "locks": ["busy"]})
        assert step(active, env) == Verdict.DEFER
        assert step(active, env) == Verdict.DEFER
        assert statuses(env.stored()) == ["waiting"]
        assert env.locks.owned(JOB_ID) == {}
        assert env.writes == 1
