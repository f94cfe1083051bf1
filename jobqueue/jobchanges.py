"""Changes a user asks of one live job: cancel (or kill) it, change its priority.

``JobChanges`` is the part of ``JobQueue`` that answers ``CancelJob`` and
``ChangeJobPriority``. It checks who asks (``ownership``), changes the job
under the job's own lock and writes it through the queue (``QueueCore``),
which publishes it once it is durable; then it tells the parts that wait on
the job: its lock waits are interrupted, a job parked on a dependency goes
back to the workers, a canceled job counts as finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from jobqueue import constants
from jobqueue.constants import FINALIZED, Status
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import ECODE_INVAL, NoSuchTask, OpPrereqError
from jobqueue.jobstep import ActiveJob
from jobqueue.locking import LockManager
from jobqueue.model import Submitter, Timestamp
from jobqueue.ownership import Ownership
from jobqueue.workerpool import WorkerPool


class QueueCore(Protocol):
    """What the job changes use of the queue (``JobQueue`` provides it)."""

    locks: LockManager
    depmgr: DependencyManager
    pool: WorkerPool

    def now(self) -> Timestamp: ...
    def active_job(self, job_id: int) -> ActiveJob | None: ...
    def change_locked(self, active: ActiveJob, change: Callable[[], None]) -> None: ...
    def enqueue(self, job_ids: list[int]) -> None: ...
    def finished(self, job_id: int) -> None: ...
    def not_active_message(self, job_id: int) -> str: ...


class JobChanges:
    """Cancel and priority changes of live jobs; see the module docstring."""

    def __init__(self, queue: QueueCore, ownership: Ownership) -> None:
        self._queue = queue
        self._ownership = ownership

    def cancel_job(
        self, job_id: int, kill: bool = False, *, caller: Submitter | None = None
    ) -> list[Any]:
        """Cancel a queued or waiting job; with ``kill`` also a running one.

        ``AccessDenied`` unless ``caller`` may change the job (see ``ownership``).
        """
        active = self._queue.active_job(job_id)
        if active is None:
            return [False, self._queue.not_active_message(job_id)]
        with active.lock:
            status, job = active.job.status, active.job
            self._ownership.check_job(caller, job.submitter, job_id, "kill" if kill else "cancel")
            if status == Status.QUEUED:
                message = active.cancel_message or constants.MSG_CANCELED
                self._queue.change_locked(
                    active,
                    lambda: job.finalize_pending(Status.CANCELED, message, self._queue.now()),
                )
                reply = [True, f"Job {job_id} canceled"]
            elif status == Status.WAITING or (
                kill and status in (Status.RUNNING, Status.CANCELING)
            ):
                self._queue.change_locked(active, job.mark_canceling)
                if kill:
                    active.kill.set()
                reply = [True, f"Job {job_id} will be {'killed' if kill else 'canceled'}"]
            elif status == Status.RUNNING:
                return [False, f"Job {job_id} is running; cancel it with kill to stop it"]
            elif status in FINALIZED:
                return [False, f"Job {job_id} has already finished"]
            else:
                return [False, f"Job {job_id} is already being canceled"]
        if status == Status.QUEUED:
            self._queue.finished(job_id)
        else:
            self._queue.locks.interrupt(job_id)
            if self._queue.depmgr.remove_waiter(job_id):
                self._queue.enqueue([job_id])
        return reply

    def change_job_priority(
        self, job_id: int, priority: int, *, caller: Submitter | None = None
    ) -> list[Any]:
        """Change the priority of the job's queued and waiting opcodes.

        ``AccessDenied`` unless ``caller`` may change the job.
        """
        if priority not in constants.PRIO_SUBMIT_VALID:
            raise OpPrereqError(
                f"Invalid priority {priority}, allowed are {sorted(constants.PRIO_SUBMIT_VALID)}",
                ECODE_INVAL,
            )
        active = self._queue.active_job(job_id)
        if active is None:
            return [False, self._queue.not_active_message(job_id)]
        with active.lock:
            self._ownership.check_job(caller, active.job.submitter, job_id, "reprioritise")
            if active.job.status == Status.CANCELING:
                return [False, f"Job {job_id} is cancelling"]
            pending = [op for op in active.job.ops if op.status in (Status.QUEUED, Status.WAITING)]
            if not pending:
                return [False, f"Job {job_id} had no pending opcodes"]

            def change() -> None:
                for op in pending:
                    op.priority = priority

            self._queue.change_locked(active, change)
            active.strategy = None  # escalation restarts from the new priority
            new_priority = active.job.priority
        try:
            self._queue.pool.change_task_priority(job_id, new_priority)
        except NoSuchTask:
            pass  # running or parked on a dependency; picked up at its next turn
        return [
            True,
            f"Priorities of pending opcodes for job {job_id} have been changed to {priority}",
        ]
