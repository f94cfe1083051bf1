"""The step environment and helpers for driving ``jobstep.step`` by hand, with no
threads: ``Env`` (in-memory storage that counts writes, a tick clock, fake dependency
data), ``FakeProcessor`` and its scripted steps, job builders and the status and
result readers, for ``test_jobstep``, ``test_jobstep_cancel`` and
``test_jobstep_waiting``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from jobqueue import constants
from jobqueue.constants import FINALIZED, Status
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import OpExecError, StorageError, encode_error
from jobqueue.jobstep import ActiveJob, LogBacklog, OpCallbacks, Verdict, step
from jobqueue.locking import LockAttemptTimeoutStrategy, LockManager
from jobqueue.lus import builtin_registry
from jobqueue.model import Job
from jobqueue.processor import Processor
from jobqueue.signals import LockAcquireTimeout
from jobqueue.storage.memory import MemoryJobStore

JOB_ID = 1
CANCELED = constants.MSG_CANCELED
PRECEDING = encode_error(OpExecError(constants.MSG_PRECEDING_FAILED))


class Env:
    """A StepEnv: in-memory storage that counts writes, a tick clock, fake dependency data.

    Every write checks Ganeti's invariant: a job is finalized iff it has an
    end timestamp.
    """

    def __init__(
        self,
        processor: Any = None,
        *,
        locks: LockManager | None = None,
        attempts: int = 3,
        first_timeout: float = 0.01,
    ) -> None:
        self.store = MemoryJobStore()
        self.writes = 0
        self.locks = locks or LockManager()
        self.processor = processor or Processor(
            builtin_registry(), self.locks, logger=logging.getLogger("test.jobstep")
        )
        self.statuses: dict[int, Status] = {}
        self.depmgr = DependencyManager(self.statuses.get)
        self.is_accepting = True
        self.ticks = itertools.count(1000)
        self.attempts = attempts
        self.first_timeout = first_timeout
        self.strategies = 0
        self.submitted: list[list[list[dict[str, Any]]]] = []
        self.unwritten_reports: list[tuple[int, int, int, bool]] = []
        self.fail_writes = False
        self.started: list[int] = []
        self.asides: list[int] = []  # the writes made when the worker stepped aside
        self.starts = 0  # writes that let an opcode run

    def write(self, job: Job, *, start: bool = False) -> None:
        assert (job.status in FINALIZED) == (job.end_timestamp is not None), job.to_dict()
        if self.fail_writes:
            raise StorageError("Cannot write job: No space left on device", 28)
        self.writes += 1
        self.starts += start
        self.store.record_start(job) if start else self.store.replace_job(job)

    def now(self) -> list[int]:
        return [next(self.ticks), 0]

    def accepting(self) -> bool:
        return self.is_accepting

    def new_strategy(self) -> LockAttemptTimeoutStrategy:
        self.strategies += 1
        return LockAttemptTimeoutStrategy(
            total=self.attempts * self.first_timeout,
            min_wait=self.first_timeout,
            max_wait=self.first_timeout,
            rng=lambda: 0.5,
        )

    def submit_from_lu(
        self, jobs: list[list[dict[str, Any]]], parent: Job | None = None
    ) -> list[list[Any]]:
        self.submitted.append(jobs)
        return [[True, 500 + number] for number in range(len(jobs))]

    def job_started(self, job: Job) -> None:
        self.started.append(job.id)

    def step_aside(self) -> None:
        self.asides.append(self.writes)

    def log_unwritten(self, job_id: int, backlog: LogBacklog, resumed: bool) -> None:
        self.unwritten_reports.append((job_id, backlog.entries, backlog.dropped, resumed))

    def stored(self, job_id: int = JOB_ID) -> Job:
        job = self.store.read_job(job_id)
        assert job is not None
        return job


Exec = Callable[[dict[str, Any], OpCallbacks, Any], Any]


class FakeProcessor:
    """Runs each call through the next function of ``script`` (op input, callbacks, timeout)."""

    def __init__(self, *script: Exec) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def exec_opcode(
        self,
        op_input: dict[str, Any],
        cbs: OpCallbacks,
        *,
        owner: Any,
        job_id: int,
        lock_timeout: float | None,
        submitter: Any = None,
        op_index: int = 0,
    ) -> Any:
        assert owner == job_id
        self.calls.append(
            {
                "input": op_input,
                "index": op_index,
                "timeout": lock_timeout,
                "priority": cbs.current_priority(),
            }
        )
        assert self.script, "processor called more often than expected"
        return self.script.pop(0)(op_input, cbs, lock_timeout)


def succeed(result: Any = "ok") -> Exec:
    def run(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
        cbs.check_cancel()
        cbs.notify_start()
        return result

    return run


def time_out(op_input: dict[str, Any], cbs: OpCallbacks, timeout: Any) -> Any:
    cbs.check_cancel()
    raise LockAcquireTimeout()


def dummy(**params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DUMMY", **params}


#: Types the opcodes of the jobs made here, as submission does.
REGISTRY = builtin_registry()


def make_job(*ops: dict[str, Any], job_id: int = JOB_ID) -> ActiveJob:
    return ActiveJob(Job.new(job_id, [REGISTRY.typed(op) for op in ops], [900, 0]))


def statuses(job: Job) -> list[str]:
    return [str(op.status) for op in job.ops]


def results(job: Job) -> list[Any]:
    return [op.result for op in job.ops]


def mark_canceling(active: ActiveJob) -> None:
    """What the queue does to cancel a waiting (or killed running) job."""
    for op in active.job.ops:
        if op.status not in FINALIZED:
            op.status = Status.CANCELING


def run_to_end(active: ActiveJob, env: Env, limit: int = 100) -> list[Verdict]:
    verdicts = []
    for _ in range(limit):
        verdicts.append(step(active, env))
        if verdicts[-1] != Verdict.DEFER:
            return verdicts
    raise AssertionError(f"job did not finish in {limit} steps")
