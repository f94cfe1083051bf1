"""Advancing a job by one opcode: the step, its verdict, and the callbacks.

``step`` takes the next unfinished opcode of a job through Ganeti's
transitions (queued -> waiting -> running -> success/error, or canceled) and
returns a ``Verdict``: ``DEFER`` (put the job back in the pool), ``WAITDEP``
(parked until a dependency finishes; no worker held) or ``FINISHED``. It needs
no threads and is tested without any; the worker pool only loops over it.

Locking: ``ActiveJob.lock`` guards the job's record and its writes; the step
holds it for each transition but never while the LU runs, so cancel,
priority changes and log feedback can get in meanwhile.

Failed writes: only the writes of an opcode's start and end decide its fate
(a ``StorageError`` from them leaves the step, and the queue goes back to
what is on disk). A failed write of log feedback does not: the entries stay
in the record, bounded by ``UNWRITTEN_LOG_MAX_*``, and reach the disk with
the next write that works.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from typing import Any, Protocol

from jobqueue import constants, plainjson
from jobqueue.constants import FINALIZED, Status
from jobqueue.depmgr import DependencyManager, Outcome
from jobqueue.errors import (
    GenericError,
    OpExecError,
    OpResultUnstorable,
    ProgrammerError,
    StorageError,
    encode_error,
)
from jobqueue.locking import LockAttemptTimeoutStrategy
from jobqueue.model import Job, QueuedOpCode, Timestamp, merge_time
from jobqueue.opcodes import InvalidOpCode, OpCode
from jobqueue.processor import Processor
from jobqueue.retries import arrange_retry
from jobqueue.signals import JobCanceled, LockAcquireTimeout, QueueShutdown

#: While its job cannot be written, an opcode's log keeps at most this many new
#: entries and characters of text in memory; later entries are dropped, and
#: one message in the log says from where.
UNWRITTEN_LOG_MAX_ENTRIES = 10_000
UNWRITTEN_LOG_MAX_CHARS = 4 * 1024 * 1024
#: Seconds between two attempts to write log feedback while writes fail.
FEEDBACK_RETRY_INTERVAL = 1.0
#: What a log message that is not a string counts against the character bound.
_OTHER_MESSAGE_CHARS = 256


@dataclasses.dataclass
class LogBacklog:
    """Log entries in a job's record but not on disk, while its writes fail."""

    entries: int = 0
    chars: int = 0
    dropped: int = 0
    #: Why the last write failed; None while writes work.
    failure: str | None = None
    retry_at: float = 0.0

    def count(self, message: Any) -> None:
        self.entries += 1
        self.chars += len(message) if isinstance(message, str) else _OTHER_MESSAGE_CHARS

    def full(self) -> bool:
        return self.entries >= UNWRITTEN_LOG_MAX_ENTRIES or self.chars >= UNWRITTEN_LOG_MAX_CHARS


class Verdict(enum.Enum):
    DEFER = "defer"
    WAITDEP = "waitdep"
    FINISHED = "finished"


#: Guards the first making of an ``ActiveJob``'s kill event.
_KILL_EVENT_MADE = threading.Lock()


@dataclasses.dataclass(eq=False)
class ActiveJob:
    """A live, unfinished job and what the queue tracks about it in memory."""

    job: Job
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    run_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _kill: threading.Event | None = dataclasses.field(default=None, init=False, repr=False)
    strategy: LockAttemptTimeoutStrategy | None = None
    strategy_op: int = -1
    rerun: bool = False
    #: The record holds a change not yet on disk; the next step writes it first.
    unsaved: bool = False
    backlog: LogBacklog = dataclasses.field(default_factory=LogBacklog)
    #: The result of its canceled opcodes when the queue, not a user, cancels
    #: the job (a time limit, a filter rule); None: ``MSG_CANCELED``.
    cancel_message: str | None = None
    #: Whether the timer of the job's time limit is set.
    timeout_armed: bool = False

    @property
    def kill(self) -> threading.Event:
        """Set to stop the running opcode now (``CancelJob`` with kill, a slow
        shutdown). Made when first asked for: an event costs about 1 KB, and
        most jobs only ever wait."""
        event = self._kill
        if event is None:
            with _KILL_EVENT_MADE:
                event = self._kill
                if event is None:
                    event = self._kill = threading.Event()
        return event

    def kill_requested(self) -> bool:
        """Whether ``kill`` is set, without making it."""
        event = self._kill
        return event is not None and event.is_set()

    def wait_kill(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for ``kill``; whether it is set.

        A wait of zero (a no-op delay) only looks: it makes no event.
        """
        if timeout is not None and timeout <= 0:
            return self.kill_requested()
        return self.kill.wait(timeout)


class StepEnv(Protocol):
    """What the step needs from the queue."""

    processor: Processor
    depmgr: DependencyManager

    def write(self, job: Job, *, start: bool = False) -> None: ...
    def now(self) -> Timestamp: ...
    def accepting(self) -> bool: ...
    def new_strategy(self) -> LockAttemptTimeoutStrategy: ...
    def submit_from_lu(
        self, jobs: list[list[dict[str, Any]]], parent: Job | None = None
    ) -> list[list[Any]]: ...
    def log_unwritten(self, job_id: int, backlog: LogBacklog, resumed: bool) -> None: ...
    def job_started(self, job: Job) -> None: ...
    def step_aside(self) -> None: ...


def step(active: ActiveJob, env: StepEnv) -> Verdict:
    """Run the job's next opcode and say what to do with the job next."""
    job = active.job
    with active.lock:
        if active.unsaved:
            _save_locked(active, env)
        index = next_opcode(job)
        if index is None:
            return Verdict.FINISHED
        op = job.ops[index]
        if op.status == Status.CANCELING:
            return _cancel_locked(active, env)
        if op.opcode is None:
            raise ProgrammerError(f"Job {job.id}: opcode {index} was never typed")
        if op.status == Status.QUEUED:  # written once it really waits, or as it starts
            starting = job.start_timestamp is None
            _mark_waiting_locked(job, op, env.now())
            active.unsaved = True
            if starting:
                env.job_started(job)
    opcode = op.opcode
    verdict = _check_dependencies(active, op, env)
    if verdict is not None:
        return verdict
    try:
        result = _execute(active, index, opcode, env)
    except LockAcquireTimeout:
        with active.lock:
            if active.unsaved:
                _save_locked(active, env)
        return Verdict.DEFER
    except QueueShutdown:
        with active.lock:
            op.status = Status.QUEUED
            _save_locked(active, env)
        return Verdict.DEFER
    except JobCanceled:
        with active.lock:
            if op.status == Status.RUNNING and not env.accepting():
                # Killed by a shutdown that outlasted --shutdown-timeout, not
                # canceled by anyone: the opcode did not finish, as after a crash.
                error = OpExecError(constants.MSG_KILLED_AT_SHUTDOWN)
                return _fail_locked(active, env, op, error, retry=True)
            return _cancel_locked(active, env)
    except OpResultUnstorable as err:
        with active.lock:
            if job.retry is not None:
                job.add_log(index, constants.ELOG_MESSAGE, constants.MSG_NOT_RETRIED, env.now())
            return _fail_locked(active, env, op, err)
    except GenericError as err:
        with active.lock:
            return _fail_locked(active, env, op, err, retry=True)
    with active.lock:
        op.status, op.result, op.end_timestamp = Status.SUCCESS, result, env.now()
        last = index == len(job.ops) - 1
        if last:
            job.end_timestamp = op.end_timestamp
        _save_locked(active, env)
        if last:
            return Verdict.FINISHED
        if job.ops[index + 1].status == Status.CANCELING:  # canceled while it ran
            return _cancel_locked(active, env)
    return Verdict.DEFER


def _execute(active: ActiveJob, index: int, opcode: OpCode | InvalidOpCode, env: StepEnv) -> Any:
    """Run the opcode; once it is over, its worker steps aside to record it.

    Writing the outcome durably is bookkeeping: the worker's slot goes to
    the next job meanwhile (``WorkerPool.step_aside``), so that a job's end
    write and the next job's start overlap.
    """
    job = active.job
    try:
        return env.processor.exec_opcode(
            opcode,
            OpCallbacks(active, index, env),
            owner=job.id,
            job_id=job.id,
            lock_timeout=_next_lock_timeout(active, index, env),
            submitter=job.submitter,
            op_index=index,
        )
    finally:
        env.step_aside()


def next_opcode(job: Job) -> int | None:
    """Index of the first unfinished opcode; ``ProgrammerError`` if one is running."""
    for index, op in enumerate(job.ops):
        if op.status == Status.RUNNING:
            raise ProgrammerError(f"Job {job.id}: opcode {index} is already running")
        if op.status not in FINALIZED:
            return index
    return None


def fail_on_internal_error_locked(job: Job, err: Exception, now: Timestamp) -> None:
    """A bug of ours broke the job's step: its first unfinished opcode fails with it.

    The opcodes after it fail as after any error, and the job ends; the
    caller writes it. Better an error that names the bug than a job that
    waits for ever for a step that will not come.
    """
    error = OpExecError(f"Internal error of the daemon: {type(err).__name__}: {err}")
    for op in job.ops:
        if op.status not in FINALIZED:
            op.status, op.result, op.end_timestamp = Status.ERROR, encode_error(error), now
            break
    _fail_the_rest_locked(job, now)


def end_lost_opcodes_locked(job: Job, reason: str, now: Timestamp) -> bool:
    """After a failed write: a running opcode, whose end could not be recorded, failed.

    Its result says so; the opcodes after it fail as after any error. Returns
    whether the job changed (and so must be written before it counts as done).
    """
    running = [op for op in job.ops if op.status == Status.RUNNING]
    for op in running:
        op.status, op.result, op.end_timestamp = Status.ERROR, f"Result lost: {reason}", now
    if running:
        _fail_the_rest_locked(job, now)
    return bool(running)


def _fail_the_rest_locked(job: Job, now: Timestamp) -> None:
    """After an opcode failed: those not ended fail as after any error; the job ends."""
    job.finalize_pending(
        Status.ERROR, encode_error(OpExecError(constants.MSG_PRECEDING_FAILED)), now
    )


def _mark_waiting_locked(job: Job, op: QueuedOpCode, now: Timestamp) -> None:
    op.status = Status.WAITING
    op.result = None
    op.start_timestamp = now
    if job.start_timestamp is None:
        job.start_timestamp = now


def _save_locked(active: ActiveJob, env: StepEnv, *, start: bool = False) -> None:
    """Write the job; everything in memory is on disk afterwards.

    ``start``: the write that lets an opcode run (a start record where the
    store has them: ``JobStore.record_start``).
    """
    env.write(active.job, start=start)
    active.unsaved = False
    backlog = active.backlog
    if backlog.failure is not None:
        env.log_unwritten(active.job.id, backlog, True)
    if backlog.entries or backlog.failure is not None:  # else it is as new (most writes)
        active.backlog = LogBacklog()


def _finish_locked(active: ActiveJob, env: StepEnv, status: Status, result: Any) -> Verdict:
    active.job.finalize_pending(status, result, env.now())
    _save_locked(active, env)
    return Verdict.FINISHED


def _cancel_locked(active: ActiveJob, env: StepEnv) -> Verdict:
    message = active.cancel_message or constants.MSG_CANCELED
    return _finish_locked(active, env, Status.CANCELED, message)


def _fail_locked(
    active: ActiveJob, env: StepEnv, op: QueuedOpCode, err: Exception, *, retry: bool = False
) -> Verdict:
    """The opcode failed: the job fails, or with ``retry`` is set to run again if it may."""
    now = env.now()
    index = next(i for i, candidate in enumerate(active.job.ops) if candidate is op)
    if retry and arrange_retry(active.job, index, encode_error(err), now):
        _save_locked(active, env)
        return Verdict.DEFER
    op.status, op.result, op.end_timestamp = Status.ERROR, encode_error(err), now
    _fail_the_rest_locked(active.job, now)
    _save_locked(active, env)
    return Verdict.FINISHED


def _add_log_locked(
    active: ActiveJob, index: int, entries: list[tuple[str, Any]], stamp: Timestamp
) -> None:
    """Append log entries to opcode ``index``, dropping them while the backlog is full."""
    backlog = active.backlog
    for log_type, message in entries:
        if backlog.failure is not None and backlog.full():
            if not backlog.dropped:
                note = f"Log entries dropped from here: cannot write the job ({backlog.failure})"
                active.job.add_log(index, constants.ELOG_MESSAGE, note, stamp)
            backlog.dropped += 1
            continue
        active.job.add_log(index, log_type, message, stamp)
        backlog.count(message)


def _refuse_unstorable(entries: list[tuple[str, Any]]) -> None:
    """``OpExecError`` unless every log type is a string and every message plain JSON."""
    for log_type, message in entries:
        if not isinstance(log_type, str):
            problem: str | None = f"log type is of type {type(log_type).__name__}"
        else:
            problem = plainjson.problem(message, "log message")
        if problem is not None:
            raise OpExecError(f"A log entry cannot be stored: {problem}")


def _check_dependencies(active: ActiveJob, op: QueuedOpCode, env: StepEnv) -> Verdict | None:
    """None when every dependency is satisfied, else the verdict to return.

    An opcode that no longer validates has none: it fails as soon as it runs.
    """
    depends = op.opcode.depends if isinstance(op.opcode, OpCode) else None
    for dep_id, wanted in depends or ():
        outcome, message = env.depmgr.check(active.job.id, dep_id, wanted)
        if outcome == Outcome.CONTINUE:
            continue
        with active.lock:
            if op.status == Status.CANCELING:  # canceled while we looked
                env.depmgr.remove_waiter(active.job.id)
                return _cancel_locked(active, env)
            if outcome == Outcome.WAIT:
                if active.unsaved:  # parked: show it as waiting
                    _save_locked(active, env)
                return Verdict.WAITDEP
            if outcome == Outcome.CANCEL:
                return _finish_locked(active, env, Status.CANCELED, constants.MSG_CANCELED)
            return _fail_locked(active, env, op, OpExecError(message))
    return None


def _next_lock_timeout(active: ActiveJob, index: int, env: StepEnv) -> float | None:
    """The next per-attempt lock timeout; raises the priority when one round is used up."""
    if active.strategy is None or active.strategy_op != index:
        active.strategy, active.strategy_op = env.new_strategy(), index
    timeout = active.strategy.next_attempt()
    op = active.job.ops[index]
    if timeout is None and op.priority > constants.PRIO_HIGHEST:
        with active.lock:
            op.priority -= 1
            _save_locked(active, env)
        active.strategy = env.new_strategy()
        timeout = active.strategy.next_attempt()
    return timeout


class OpCallbacks:
    """The ``ExecCallbacks`` of one opcode of one job."""

    def __init__(self, active: ActiveJob, index: int, env: StepEnv) -> None:
        self._active = active
        self._index = index
        self._env = env

    @property
    def _op(self) -> QueuedOpCode:
        return self._active.job.ops[self._index]

    def notify_start(self) -> None:
        with self._active.lock:
            self._check_cancel_locked()
            self._op.status = Status.RUNNING
            self._op.exec_timestamp = self._env.now()
            _save_locked(self._active, self._env, start=True)

    def notify_waiting(self) -> None:
        with self._active.lock:
            if self._active.unsaved:
                _save_locked(self._active, self._env)

    def feedback(self, log_type: str, message: Any) -> None:
        self.feedback_many([(log_type, message)])

    def feedback_many(self, entries: list[tuple[str, Any]]) -> None:
        """Add log entries and write the job; a failed write does not fail the opcode.

        While writes fail, the entries wait in the record (bounded; see
        ``LogBacklog``) and the write is tried again at most once every
        ``FEEDBACK_RETRY_INTERVAL`` seconds, or by the opcode's end.
        An entry the job cannot store (``plainjson``) adds nothing and
        raises ``OpExecError``.
        """
        _refuse_unstorable(entries)
        with self._active.lock:
            active, stamp = self._active, self._env.now()
            _add_log_locked(active, self._index, entries, stamp)
            backlog, now = active.backlog, merge_time(stamp)
            if backlog.failure is not None and now < backlog.retry_at:
                return
            try:
                _save_locked(active, self._env)
            except StorageError as err:
                active.unsaved = True
                first = backlog.failure is None
                backlog.failure, backlog.retry_at = str(err.args[0]), now + FEEDBACK_RETRY_INTERVAL
                if first:
                    self._env.log_unwritten(active.job.id, backlog, False)

    def check_cancel(self) -> None:
        with self._active.lock:
            self._check_cancel_locked()

    def _check_cancel_locked(self) -> None:
        if self._op.status == Status.CANCELING:
            raise JobCanceled()
        if self._op.status == Status.WAITING and not self._env.accepting():
            raise QueueShutdown()

    def kill_requested(self) -> bool:
        return self._active.kill_requested()

    def wait_kill(self, timeout: float) -> bool:
        return self._active.wait_kill(timeout)

    def submit_many_jobs(self, jobs: list[list[dict[str, Any]]]) -> list[list[Any]]:
        return self._env.submit_from_lu(jobs, self._active.job)  # its id and submitter

    def current_priority(self) -> int:
        with self._active.lock:
            return self._op.priority
