"""``jobstep.step`` driven by hand, with no threads (Ganeti's TestJobProcessor scenarios):
jobs that run to their end, with success, errors and log feedback (also when writing it
fails).
"""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.errors import (
    OpExecError,
    OpResultUnstorable,
    ProgrammerError,
    StorageError,
    encode_error,
)
from jobqueue.jobstep import (
    UNWRITTEN_LOG_MAX_ENTRIES,
    ActiveJob,
    OpCallbacks,
    Verdict,
    step,
)
from jobqueue.model import Job, RetryPolicy
from jobqueue.signals import LockAcquireTimeout
from jobqueue.submission import load_opcodes
from tests.jobstep_harness import (
    JOB_ID,
    PRECEDING,
    REGISTRY,
    Env,
    FakeProcessor,
    dummy,
    make_job,
    results,
    run_to_end,
    statuses,
    succeed,
)

REQUESTED = encode_error(OpExecError("Opcode failure was requested"))


class TestSuccess:
    def test_each_opcode_runs_knowing_its_index(self) -> None:
        processor = FakeProcessor(succeed(), succeed())
        active = make_job(dummy(), dummy())
        env = Env(processor)
        assert step(active, env) == Verdict.DEFER
        assert step(active, env) == Verdict.FINISHED
        assert [call["index"] for call in processor.calls] == [0, 1]

    @pytest.mark.parametrize("count", [1, 3, 10])
    def test_success(self, count: int) -> None:
        env = Env()
        active = make_job(*[dummy(result=index) for index in range(count)])
        job = active.job
        for index in range(count):
            before = env.writes
            verdict = step(active, env)
            # queued -> running (locks free: "waiting" is never written), running -> success
            assert env.writes - before == 2
            op = job.ops[index]
            assert op.status == Status.SUCCESS and op.result == index
            assert op.start_timestamp is not None and op.exec_timestamp is not None
            assert op.start_timestamp < op.exec_timestamp < op.end_timestamp
            assert job.start_timestamp == job.ops[0].start_timestamp
            if index < count - 1:
                assert verdict == Verdict.DEFER
                assert job.status == Status.QUEUED
                assert env.stored().status == Status.QUEUED
                assert job.end_timestamp is None
            else:
                assert verdict == Verdict.FINISHED
        assert job.status == Status.SUCCESS
        assert job.end_timestamp == job.ops[-1].end_timestamp
        assert env.stored().to_dict() == job.to_dict()
        assert results(env.stored()) == list(range(count))
        assert env.locks.lock_info() == []

    def test_the_start_is_announced_once_before_the_first_opcode_runs(self) -> None:
        env = Env()
        active = make_job(dummy(result=1), dummy(result=2))
        statuses_then: list[str] = []
        original = env.job_started

        def started(job: Job) -> None:
            statuses_then.extend(str(op.status) for op in job.ops)
            original(job)

        env.job_started = started  # type: ignore[method-assign]
        run_to_end(active, env)
        assert env.started == [JOB_ID]  # once, though the job took several steps
        assert statuses_then == ["waiting", "queued"]  # as it starts, before anything ran

    def test_the_worker_steps_aside_once_each_opcode_is_over(self) -> None:
        env = Env()
        active = make_job(dummy(), dummy())
        run_to_end(active, env)
        # After each opcode's "running" write, before its end is written: the
        # end write no longer holds the worker's slot (WorkerPool.step_aside).
        assert env.asides == [1, 3]
        assert env.writes == 4

    def test_finished_job_is_a_no_op(self) -> None:
        env = Env()
        active = make_job(dummy())
        assert run_to_end(active, env) == [Verdict.FINISHED]
        writes, state = env.writes, active.job.to_dict()
        assert step(active, env) == Verdict.FINISHED
        assert env.writes == writes and active.job.to_dict() == state

    def test_statuses_seen_while_running(self) -> None:
        seen: list[tuple[str, str]] = []

        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            seen.append(("picked", str(env.stored().status)))
            cbs.notify_waiting()  # a lock was busy: now the wait shows on disk
            seen.append(("waiting", str(env.stored().status)))
            cbs.notify_start()
            seen.append(("started", str(env.stored().status)))
            return None

        env = Env(FakeProcessor(run))
        active = make_job(dummy())
        env.write(active.job)
        assert step(active, env) == Verdict.FINISHED
        assert seen == [("picked", "queued"), ("waiting", "waiting"), ("started", "running")]

    def test_waiting_is_written_once_and_only_when_it_waits(self) -> None:
        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_waiting()
            cbs.notify_waiting()
            raise LockAcquireTimeout()

        env = Env(FakeProcessor(run))
        active = make_job(dummy())
        assert step(active, env) == Verdict.DEFER
        assert env.writes == 1 and statuses(env.stored()) == ["waiting"]

    def test_job_with_running_opcode_is_a_programmer_error(self) -> None:
        env = Env(FakeProcessor())
        active = make_job(dummy(), dummy())
        active.job.ops[0].status = Status.RUNNING
        with pytest.raises(ProgrammerError):
            step(active, env)
        assert env.writes == 0

    def test_partially_run_job_resumes_at_the_next_opcode(self) -> None:
        env = Env()
        active = make_job(
            dummy(result="a", messages=["m1"]),
            dummy(result="b", messages=["m2"]),
            dummy(result="c", messages=["m3"]),
        )
        assert step(active, env) == Verdict.DEFER
        assert step(active, env) == Verdict.DEFER
        # a new daemon reads the job back from storage and types what may still run
        restored = Job.from_dict(env.stored().to_dict())
        load_opcodes(restored, REGISTRY)
        assert [op.opcode is None for op in restored.ops] == [True, True, False]
        assert statuses(restored) == ["success", "success", "queued"]
        assert restored.log_serial == 2
        again = ActiveJob(restored)
        before = env.writes
        assert step(again, env) == Verdict.FINISHED
        assert env.writes - before == 3  # running, log, success
        assert results(restored) == ["a", "b", "c"]
        assert [entry[0] for entry in restored.log_entries_after(None)] == [1, 2, 3]

    def test_log_serials_increase_across_opcodes(self) -> None:
        env = Env()
        active = make_job(
            dummy(messages=["a", "b"]),
            dummy(),
            dummy(messages=["c"]),
            dummy(messages=["d", "e", "f"]),
        )
        run_to_end(active, env)
        entries = env.stored().log_entries_after(None)
        assert [entry[3] for entry in entries] == ["a", "b", "c", "d", "e", "f"]
        serials = [entry[0] for entry in entries]
        assert serials == sorted(set(serials)) and serials[0] == 1
        assert [entry[0] for entry in env.stored().log_entries_after(3)] == [4, 5, 6]
        assert [len(op.log) for op in env.stored().ops] == [2, 0, 1, 3]
        assert all(entry[2] == "message" for entry in entries)

    def test_feedback_with_and_without_type(self) -> None:
        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            before = env.writes
            cbs.feedback("message", "one")
            cbs.feedback("stdout", {"structured": True})
            cbs.feedback_many([("stderr", "x"), ("stderr", "y")])
            assert env.writes - before == 3
            return None

        env = Env(FakeProcessor(run))
        step(make_job(dummy()), env)
        log = env.stored().ops[0].log
        assert [(e[0], e[2], e[3]) for e in log] == [
            (1, "message", "one"),
            (2, "stdout", {"structured": True}),
            (3, "stderr", "x"),
            (4, "stderr", "y"),
        ]
        assert log[2][1] == log[3][1], "one batch, one timestamp"

    @pytest.mark.parametrize(
        ("entry", "where"),
        [
            (("message", {"sizes": {1}}), "log message['sizes'] is of type set"),
            (("message", float("inf")), "log message is inf, which JSON cannot hold"),
            ((b"stdout", "text"), "log type is of type bytes"),
        ],
    )
    def test_feedback_the_job_cannot_store_fails_the_opcode(
        self, entry: tuple[Any, Any], where: str
    ) -> None:
        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            cbs.feedback("message", "kept")
            cbs.feedback_many([("stdout", "refused with the entry after it"), entry])
            return "not reached"

        env = Env(FakeProcessor(run))
        assert step(make_job(dummy()), env) == Verdict.FINISHED
        stored = env.stored()
        assert statuses(stored) == ["error"]
        assert results(stored) == [["OpExecError", [f"A log entry cannot be stored: {where}"]]]
        assert [entry[3] for entry in stored.ops[0].log] == ["kept"]

    @pytest.mark.parametrize("error", [OpExecError("failed"), OpResultUnstorable("unstorable")])
    def test_a_retry_policy_reruns_failures_but_not_an_unstorable_result(
        self, error: OpExecError
    ) -> None:
        # A result that cannot be stored comes from an opcode that ran to its end:
        # a retry would repeat what it did, and fail the same way.
        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            raise error

        env = Env(FakeProcessor(run))
        active = make_job(dummy())
        active.job.retry = RetryPolicy(retries=2)
        verdict = step(active, env)
        stored = env.stored()
        messages = [entry[3] for entry in stored.ops[0].log]
        if isinstance(error, OpResultUnstorable):
            assert verdict == Verdict.FINISHED and statuses(stored) == ["error"]
            assert results(stored) == [["OpExecError", ["unstorable"]]]
            assert stored.attempts == [] and messages == [constants.MSG_NOT_RETRIED]
        else:
            assert verdict == Verdict.DEFER and statuses(stored) == ["queued"]
            assert [record["error"] for record in stored.attempts] == [encode_error(error)]
            assert messages[0].startswith("Attempt 1 of 3 failed: failed; attempt 2 in")

    def test_jobs_submitted_by_an_lu(self) -> None:
        env = Env()
        child = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
        active = make_job(dummy(submit_jobs=[[child], [child]]))
        assert step(active, env) == Verdict.FINISHED
        assert active.job.ops[0].result == {"jobs": [[True, 500], [True, 501]]}
        assert len(env.submitted) == 1 and len(env.submitted[0]) == 2


class TestFailedLogWrites:
    """A failed write of log feedback does not fail the opcode (issue 14, item 8)."""

    def test_entries_wait_in_memory_bounded_and_are_written_later(self) -> None:
        extra = 50

        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            cbs.feedback("message", "written at once")
            env.fail_writes = True
            cbs.feedback_many([("stdout", "kept 0"), ("stdout", "kept 1")])
            assert env.unwritten_reports == [(JOB_ID, 2, 0, False)]
            assert [entry[3] for entry in env.stored().ops[0].log] == ["written at once"]
            more = UNWRITTEN_LOG_MAX_ENTRIES - 2 + extra
            for number in range(2, 2 + more, 1000):
                last = min(number + 1000, 2 + more)
                cbs.feedback_many([("stdout", f"kept {i}") for i in range(number, last)])
            env.fail_writes = False
            return "done"

        env = Env(FakeProcessor(run))
        active = make_job(dummy())
        assert run_to_end(active, env) == [Verdict.FINISHED]
        stored = env.stored()
        assert statuses(stored) == ["success"] and results(stored) == ["done"]
        messages = [entry[3] for entry in stored.ops[0].log]
        kept = [f"kept {i}" for i in range(UNWRITTEN_LOG_MAX_ENTRIES)]
        assert messages[: len(kept) + 1] == ["written at once", *kept]
        (note,) = messages[len(kept) + 1 :]
        assert note.startswith("Log entries dropped from here: cannot write the job (Cannot")
        serials = [entry[0] for entry in stored.ops[0].log]
        assert serials == list(range(1, len(serials) + 1))
        assert env.unwritten_reports[-1] == (JOB_ID, UNWRITTEN_LOG_MAX_ENTRIES, extra, True)
        assert len(env.unwritten_reports) == 2  # one when writes stopped, one when they resumed

    def test_a_failed_end_write_still_decides(self) -> None:
        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            env.fail_writes = True
            cbs.feedback("stdout", "waits")
            return "done"

        env = Env(FakeProcessor(run))
        with pytest.raises(StorageError):
            step(make_job(dummy()), env)
        assert statuses(env.stored()) == ["running"]
        assert env.asides == [1]  # stepped aside before the end write that failed


class TestErrors:
    @pytest.mark.parametrize(("count", "failing"), [(1, 0), (3, 0), (3, 1), (5, 4), (10, 3)])
    def test_opcode_error(self, count: int, failing: int) -> None:
        env = Env()
        ops = [dummy(result=index, fail=index == failing) for index in range(count)]
        active = make_job(*ops)
        verdicts = run_to_end(active, env)
        assert verdicts == [Verdict.DEFER] * failing + [Verdict.FINISHED]
        job = env.stored()
        assert job.status == Status.ERROR
        assert statuses(job) == ["success"] * failing + ["error"] * (count - failing)
        assert results(job) == [
            *range(failing),
            REQUESTED,
            *[PRECEDING] * (count - failing - 1),
        ]
        assert job.end_timestamp is not None
        assert all(op.end_timestamp is not None for op in job.ops)
        assert all(op.start_timestamp is None for op in job.ops[failing + 1 :])
        assert step(active, env) == Verdict.FINISHED

    def test_error_before_start_leaves_no_exec_timestamp(self) -> None:
        env = Env()
        delay = {"OP_ID": "OP_TEST_DELAY", "duration": 0, "on_nodes": ["n1"]}
        active = make_job(delay, dummy())
        assert step(active, env) == Verdict.FINISHED
        job = env.stored()
        assert statuses(job) == ["error", "error"]
        assert job.ops[0].result[0] == "OpPrereqError"
        assert job.ops[0].exec_timestamp is None and job.ops[0].start_timestamp is not None
        assert env.writes == 1  # error (it never waited for anything)

    def test_foreign_exception_is_encoded(self) -> None:
        def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
            cbs.notify_start()
            raise OpExecError("broke")

        env = Env(FakeProcessor(run))
        active = make_job(dummy(), dummy())
        assert step(active, env) == Verdict.FINISHED
        assert results(active.job) == [["OpExecError", ["broke"]], PRECEDING]
