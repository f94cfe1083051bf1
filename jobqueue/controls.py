"""The queue's controls of what runs when: filter rules, start times, time limits,
the number of workers.

``Controls`` is the part of ``JobQueue`` that applies ``admission``'s
verdicts to jobs: before each opcode it holds a job back (showing why), or
cancels a rejected one; it changes the filter rules and then applies them
to the jobs that cannot wait for their next opcode; it changes a waiting
job's start time; it runs a job's time limit (``Job.timeout``) on the
timer thread; it sets the number of workers, durably. It reaches the jobs
only through the queue (``QueueCore``), under each job's own lock, and
writes them only through it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from jobqueue import constants, filters
from jobqueue.admission import Admission, job_view
from jobqueue.constants import Status
from jobqueue.errors import (
    ECODE_INVAL,
    GenericError,
    JobRejected,
    OpExecError,
    OpPrereqError,
    encode_error,
)
from jobqueue.joboptions import check_start
from jobqueue.jobstep import ActiveJob
from jobqueue.livejobs import LiveJobs
from jobqueue.locking import LockManager
from jobqueue.model import Job, Timestamp, merge_time, split_time
from jobqueue.opcodes import REASON_SOURCE_DAEMON, OpCode
from jobqueue.retries import arrange_retry
from jobqueue.storage.base import MAX_RUNNING_JOBS, JobStore
from jobqueue.timers import Timers
from jobqueue.workerpool import WorkerPool


class QueueCore(Protocol):
    """What the controls use of the queue (``JobQueue`` provides it)."""

    live: LiveJobs
    locks: LockManager

    def write(self, job: Job) -> None: ...
    def now(self) -> Timestamp: ...
    def active_job(self, job_id: int) -> ActiveJob | None: ...
    def active_jobs(self) -> list[ActiveJob]: ...
    def change_locked(self, active: ActiveJob, change: Callable[[], None]) -> None: ...
    def enqueue(self, job_ids: list[int]) -> None: ...
    def cancel_job(self, job_id: int, kill: bool = False) -> list[Any]: ...
    def not_active_message(self, job_id: int) -> str: ...


class Controls:
    """See the module docstring; built by ``JobQueue`` for itself."""

    def __init__(
        self,
        queue: QueueCore,
        admission: Admission,
        store: JobStore,
        timers: Timers,
        pool: WorkerPool,
        *,
        clock: Callable[[], float],
        logger: logging.Logger,
    ) -> None:
        self._queue = queue
        self._admission = admission
        self._store = store
        self._timers = timers
        self._pool = pool
        self._workers = 0  # the number of workers asked for
        self._clock = clock
        self._log = logger
        self._ids_lock = threading.Lock()  # guards the two below
        self._highest_id = 0  # the highest job id known to have been issued
        self._highest_known = False  # whether it counts the archive (or newer ids)

    # -- before each opcode ------------------------------------------------------------
    def hold_back(self, active: ActiveJob) -> bool:
        """Ask ``admission`` whether the job may run its next opcode; True if it is held.

        A held job shows why (``Job.hold``; an opcode that waited for locks
        goes back to queued, written); a rejected one is marked canceling,
        which its step finishes at once. Arms the job's time limit when it
        first may run.
        """
        job = active.job
        with active.lock:
            if job.status == Status.CANCELING:
                return False  # its step finishes it
            priority, not_before, attempt = job.priority, job.not_before, job.attempt
        view = job_view(job.id, (op.input for op in job.ops))
        decision = self._admission.admit(view, priority, not_before, attempt)
        with active.lock:
            if decision.reject is not None:
                active.cancel_message = rejected_message(decision.reject)
                self._queue.change_locked(active, job.mark_canceling)
                return False
            if decision.hold is None:
                job.hold = None  # shown from the job's next write on
                self.arm_timeout_locked(active)
                return False
            job.hold = decision.hold
            waiting = [op for op in job.ops if op.status == Status.WAITING]
            for op in waiting:
                op.status, op.result = Status.QUEUED, None
            if waiting:
                self._queue.write(job)
            else:
                self._queue.live.publish([job])  # a hold is not stored: only shown
        return True

    # -- time limits -----------------------------------------------------------------
    def arm_timeout_locked(self, active: ActiveJob) -> None:
        """Set the timer of the job's time limit, counted from its first start (once)."""
        job = active.job
        if job.timeout is None or active.timeout_armed:
            return
        active.timeout_armed = True
        started = merge_time(job.start_timestamp) if job.start_timestamp else self._clock()
        job_id, limit = job.id, job.timeout
        delay = started + limit - self._clock()
        self._timers.call_later(delay, lambda: self._time_out(job_id, limit))

    def _time_out(self, job_id: int, limit: float) -> None:
        """The job's time limit passed: cancel it, killing what it runs."""
        message = f"Job canceled: its time limit of {limit:g}s was reached"
        if self.cancel_as(job_id, message)[0]:
            self._log.warning("Job %s reached its time limit of %gs; canceled", job_id, limit)

    def cancel_as(self, job_id: int, message: str) -> list[Any]:
        """Cancel (and kill) a job for the queue's own reason, which its result gives."""
        active = self._queue.active_job(job_id)
        if active is None:
            return [False, self._queue.not_active_message(job_id)]
        with active.lock:
            active.cancel_message = message
        reply = self._queue.cancel_job(job_id, True)
        if not reply[0]:
            with active.lock:
                active.cancel_message = None
        return reply

    # -- retries -------------------------------------------------------------------------
    def retry_cut_short(self, job: Job, reason: str) -> bool:
        """At start: a running opcode was cut short; retry the job if its policy allows.

        The attempt counts as failed (with ``reason``), so nothing re-runs
        silently. Returns whether a retry was arranged (and written).
        """
        index = next(i for i, op in enumerate(job.ops) if op.status == Status.RUNNING)
        if not arrange_retry(job, index, encode_error(OpExecError(reason)), self._queue.now()):
            return False
        self._queue.write(job)
        return True

    # -- start times -------------------------------------------------------------------
    def change_job_start(self, job_id: int, start: float | None) -> list[Any]:
        """Set when a queued job may start (None: as soon as it can); ``[success, message]``.

        Queued means not started yet, or held between opcodes or attempts.
        """
        stamp = None if start is None else split_time(check_start(start))
        active = self._queue.active_job(job_id)
        if active is None:
            return [False, self._queue.not_active_message(job_id)]
        with active.lock:
            status = active.job.status
            if status != Status.QUEUED:
                return [False, f"Job {job_id} is {status}; only a queued job's start can change"]

            def change() -> None:
                active.job.not_before = stamp

            self._queue.change_locked(active, change)
        self._queue.enqueue([job_id])  # decided again: runs now, or waits for the new time
        if start is None:
            return [True, f"Job {job_id} may start at once"]
        return [True, f"Job {job_id} may start at {start:.6f}"]

    # -- filter rules -------------------------------------------------------------------
    def replace_filter(
        self, uuid: str | None, priority: Any, predicates: Any, action: Any, reason: Any
    ) -> str:
        """Add a filter rule, or replace the one with ``uuid``; return its uuid.

        Its watermark is the highest job id issued now; the daemon's entry
        ends its reason trail. Raises ``OpPrereqError`` for a malformed rule
        and ``StorageError`` when it cannot be stored.
        """
        rule = filters.make_rule(
            uuid, priority, predicates, action, reason, watermark=self._watermark()
        )
        entry = [REASON_SOURCE_DAEMON, "filter rule set", int(self._clock() * 1_000_000_000)]
        rule = dataclasses.replace(rule, reason_trail=[*rule.reason_trail, entry])
        self._admission.replace_rule(rule)
        self._log.info("Filter rule %s set: %s", rule.uuid, rule.to_dict())
        self._rules_changed()
        return rule.uuid

    def delete_filter(self, uuid: str) -> bool:
        """Delete a filter rule; ``OpPrereqError`` if there is none by that uuid."""
        self._admission.delete_rule(filters.canonical_uuid(uuid))
        self._log.info("Filter rule %s deleted", uuid)
        self._rules_changed()
        return True

    def _rules_changed(self) -> None:
        """Apply changed rules to what cannot wait for its next opcode.

        Queued and waiting jobs a REJECT matches are canceled; jobs waiting
        for locks that are to be held stop waiting (their next attempt is
        held). Held jobs were woken by ``admission`` already.
        """
        for active in self._queue.active_jobs():
            job = active.job
            rule = self._admission.decide(job_view(job.id, (op.input for op in job.ops)))
            if rule is None or rule.action == filters.ACCEPT:
                continue
            status = self._queue.live.status_of(job.id)
            if rule.action == filters.REJECT and status in (Status.QUEUED, Status.WAITING):
                self.cancel_as(job.id, rejected_message(rule))
            elif status == Status.WAITING:
                self._queue.locks.interrupt(job.id)

    def rejected(self, prepared: list[Any]) -> dict[int, GenericError]:
        """The jobs of a submission (``submission.prepare_jobs``) a REJECT rule refuses."""
        valid = [item for item in prepared if not isinstance(item, GenericError)]
        if valid:
            self.issued(max(job_id for job_id, _ in valid), new=True)
        refused: dict[int, GenericError] = {}
        if not self._admission.rejects_any():
            return refused
        for job_id, ops in valid:
            rule = self._admission.rejecting(job_view(job_id, _stored(ops)))
            if rule is not None:
                refused[job_id] = JobRejected(f"Job refused by filter rule {rule.uuid}", rule.uuid)
        return refused

    def issued(self, job_id: int, *, new: bool = False) -> None:
        """Job ``job_id`` exists (loaded), or was just handed out (``new``).

        Ids only grow, so a new id is above every archived job's.
        """
        with self._ids_lock:
            self._highest_id = max(self._highest_id, job_id)
            self._highest_known = self._highest_known or new

    def _watermark(self) -> int:
        """The highest job id issued so far; the archive is read once if need be."""
        with self._ids_lock:
            if self._highest_known:
                return self._highest_id
        archived = self._store.archived_ids()
        self.issued(archived[-1] if archived else 0, new=True)
        with self._ids_lock:
            return self._highest_id

    # -- the number of workers ---------------------------------------------------------
    def worker_count(self, default: int) -> int:
        """The number of workers to start with: the stored one, else ``default``."""
        stored = self._store.read_setting(MAX_RUNNING_JOBS)
        if stored is not None and stored.isdigit() and 1 <= int(stored) <= constants.MAX_WORKERS:
            return int(stored)
        if stored is not None:
            self._log.error("Ignoring the stored number of workers %r", stored)
        return default

    def start_workers(self, count: int) -> None:
        """Run ``count`` workers from now on."""
        self._workers = count
        self._pool.resize(count)

    def workers(self) -> int:
        """The number of workers asked for (some may still be leaving)."""
        return self._workers

    def set_max_running_jobs(self, count: int) -> bool:
        """Store the number of workers, then resize the pool: at once and durably.

        Fewer workers: the surplus ones leave after the job step they run.
        Raises ``OpPrereqError`` for a count outside 1..``MAX_WORKERS``.
        """
        if not 1 <= count <= constants.MAX_WORKERS:
            raise OpPrereqError(
                f"Invalid number of workers {count}: expected 1 to {constants.MAX_WORKERS}",
                ECODE_INVAL,
            )
        self._store.write_setting(MAX_RUNNING_JOBS, str(count))
        self.start_workers(count)
        self._log.info("Workers set to %d", count)
        return True


def rejected_message(rule: filters.FilterRule) -> str:
    return f"Job canceled by filter rule {rule.uuid}"


def _stored(ops: list[OpCode]) -> list[dict[str, Any]]:
    return [op.stored() for op in ops]
