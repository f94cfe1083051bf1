"""The job queue: submission, cancel, priority, archive, recovery; the one writer of jobs.

``JobQueue`` owns the live, unfinished jobs in memory (``ActiveJob``) and
has the worker pool advance them one opcode per task (``jobstep.step``).
Every state change is written through the store and, once durable,
published to ``LiveJobs``, where queries and waiters read it; a submission
is durable before its id is returned. Read-only questions are answered by
``jobreader.JobReader``; ``daemon.py`` builds both and what they use.

Who may do what: every job records its submitter (``model.Submitter``,
given by the server for each request); cancel, priority changes, archiving
and queue-wide changes are checked against it by ``ownership.Ownership``.

What may run when is decided before each opcode by ``admission.Admission``
(job filter rules, start times, retry delays) and applied by
``controls.Controls``: a held job is parked without a worker and woken when
that could change. Retries are arranged by the job step (``retries``).

Locking: ``_lock`` guards ``_active``, ``_accepting`` and ``_slots_claimed``
and is held only for dictionary operations; each job's own ``ActiveJob.lock``
guards its record. Never take ``_lock`` while holding a job lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from jobqueue import __version__, constants
from jobqueue.admission import Admission
from jobqueue.constants import FINALIZED, Status
from jobqueue.controls import Controls
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import (
    ECODE_INVAL,
    GenericError,
    JobQueueDrainError,
    JobQueueError,
    JobQueueFull,
    NoSuchTask,
    OpPrereqError,
    StorageError,
)
from jobqueue.joboptions import JobOptions, options_by_id, parse_options
from jobqueue.jobstep import ActiveJob, LogBacklog, Verdict, end_lost_opcodes_locked, step
from jobqueue.livejobs import IndexEntry, LiveJobs
from jobqueue.locking import LockAttemptTimeoutStrategy, LockManager
from jobqueue.metrics import Metrics, QueueState
from jobqueue.model import Job, Submitter, Timestamp, now_stamp
from jobqueue.opcodes import OpCode, Registry
from jobqueue.ownership import Ownership
from jobqueue.processor import Processor
from jobqueue.storage.base import WATCHER_PAUSE, JobStore, format_pause, pause_until
from jobqueue.submission import load_opcodes, prepare_jobs
from jobqueue.timers import Timers
from jobqueue.workerpool import DeferTask, WorkerPool

#: Seconds before a job whose write failed is tried again.
STORAGE_RETRY_DELAY = 1.0
_ARCHIVE_BATCH = 1000


class JobQueue:
    """See the module docstring; ``daemon.py`` builds one per process."""

    def __init__(
        self,
        store: JobStore,
        live: LiveJobs,
        registry: Registry,
        locks: LockManager,
        processor: Processor,
        depmgr: DependencyManager,
        pool: WorkerPool,
        timers: Timers,
        *,
        admission: Admission,
        max_jobs: int = constants.DEFAULT_MAX_JOBS,
        name: str | None = None,
        strategy_factory: Callable[[], LockAttemptTimeoutStrategy] = LockAttemptTimeoutStrategy,
        ownership: Ownership | None = None,
        clock: Callable[[], float] = time.time,
        on_job_end: Callable[[Job], None] | None = None,
        logger: logging.Logger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``pool`` must run its tasks through ``run_task``; it may start with no workers.

        ``name`` is this daemon's name as the master (``QueryConfigValues``).
        ``ownership`` says who may change which job (default: root and the
        daemon's user as admins, no admin group).
        ``on_job_end`` is called once per job whose end this queue wrote, right
        after the write, with the job's lock held: it must not block (the
        finish hooks only queue the job).
        ``metrics`` is fed with submissions, starts, ends and write times.
        """
        self.store = store
        self.live = live
        self.registry = registry
        self.locks = locks
        self.processor = processor
        self.depmgr = depmgr
        self.pool = pool
        self._timers = timers
        self._admission = admission
        self._max_jobs = max_jobs
        self._name = name
        self._strategy_factory = strategy_factory
        self._ownership = ownership or Ownership(daemon_uid=os.geteuid())
        self._clock = clock
        self._on_job_end = on_job_end
        self._log = logger or logging.getLogger(__name__)
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()
        self._active: dict[int, ActiveJob] = {}
        self._accepting = True
        self._slots_claimed = 0  # jobs of submissions in progress, not yet stored
        self._controls = Controls(
            self, admission, store, timers, pool, clock=clock, logger=self._log
        )

    # -- StepEnv --------------------------------------------------------------
    def write(self, job: Job) -> None:
        """Replace the stored job durably, then publish it; ``StorageError`` publishes nothing.

        A write that ends the job is announced to ``on_job_end`` after that.
        """
        ends = job.is_finalized and self.live.status_of(job.id) not in FINALIZED
        with self.metrics.timed_write("replace"):  # metrics: durable-write latency
            self.store.replace_job(job)
        self.live.publish([job])
        if ends and self._on_job_end is not None:
            self._on_job_end(job)

    def now(self) -> Timestamp:
        return now_stamp(self._clock)

    def accepting(self) -> bool:
        with self._lock:
            return self._accepting

    def new_strategy(self) -> LockAttemptTimeoutStrategy:
        return self._strategy_factory()

    def job_started(self, job: Job) -> None:
        """A worker picked the job up for the first time (job lock held)."""
        self.metrics.job_started(job.received_timestamp, job.start_timestamp)  # metrics

    def log_unwritten(self, job_id: int, backlog: LogBacklog, resumed: bool) -> None:
        """Say that a job's log feedback could not be written, or that it now was."""
        if not resumed:
            self._log.error(
                "Cannot write job %s (%s); its new log entries wait in memory",
                job_id,
                backlog.failure,
            )
        elif backlog.dropped:
            self._log.warning(
                "Job %s written again with %d waiting log entries; %d more were dropped",
                job_id,
                backlog.entries,
                backlog.dropped,
            )
        else:
            self._log.info(
                "Job %s written again with %d waiting log entries", job_id, backlog.entries
            )

    # -- start and stop -------------------------------------------------------
    def start(self, recovery_message: str = constants.MSG_UNCLEAN_SHUTDOWN) -> None:
        """Load the queue and recover what a previous daemon left unfinished.

        Queued jobs are re-queued; waiting ones go back to queued; running
        and canceling ones end in error with ``recovery_message`` (an
        unclean shutdown, or a master that failed over): an opcode that had
        started never runs twice.
        """
        self._admission.load_rules()
        jobs = list(self.store.load_jobs())
        self.live.load(jobs)
        for job in jobs:
            self._controls.issued(job.id)
        unfinished = sorted((job for job in jobs if not job.is_finalized), key=lambda j: j.id)
        for job in unfinished:
            status = job.status
            if status == Status.RUNNING and self._controls.retry_cut_short(job, recovery_message):
                self._log.warning("Job %s was running when its daemon stopped; retrying", job.id)
            elif status in (Status.RUNNING, Status.CANCELING):
                job.finalize_pending(Status.ERROR, recovery_message, self.now())
                self.write(job)
                when = (
                    "at an unclean shutdown"
                    if recovery_message == constants.MSG_UNCLEAN_SHUTDOWN
                    else "when its master failed over"
                )
                self._log.warning("Job %s was %s %s; marked as error", job.id, status, when)
                continue
            if status == Status.WAITING:
                for op in job.ops:
                    if op.status == Status.WAITING:
                        op.status, op.result = Status.QUEUED, None
                self.write(job)
            load_opcodes(job, self.registry)
            self._activate([job])
        self._log.info(
            "Job queue loaded: %d live jobs, %d to run", self.live.count(), len(self._active)
        )

    def prepare_shutdown(self) -> None:
        """Refuse new jobs, pick no new tasks, send lock waiters back to queued."""
        with self._lock:
            self._accepting = False
            active = list(self._active)
        self.pool.set_active(False)
        for job_id in active:
            self.locks.interrupt(job_id)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no opcode runs; False if ``timeout`` passed first."""
        return self.pool.wait_no_running(timeout)

    def running_count(self) -> int:
        """How many jobs a worker is running now."""
        return self.pool.stats()["running"]

    def kill_running(self) -> None:
        """Ask every running opcode to stop now (a shutdown that took too long)."""
        with self._lock:
            actives = list(self._active.values())
        for active in actives:
            active.kill.set()

    def shutdown(self) -> None:
        """Stop the workers (after ``prepare_shutdown`` and ``wait_idle``)."""
        self.pool.terminate()

    # -- the worker task --------------------------------------------------------
    def _activate(self, jobs: list[Job]) -> None:
        actives = [ActiveJob(job) for job in jobs]
        with self._lock:
            for active in actives:
                self._active[active.job.id] = active
        for active in actives:
            if active.job.start_timestamp is not None:  # loaded: its time limit runs on
                with active.lock:
                    self._controls.arm_timeout_locked(active)
        self.pool.add_many_tasks(
            [job.id for job in jobs], [job.priority for job in jobs], [job.id for job in jobs]
        )

    def _enqueue(self, job_ids: list[int]) -> None:
        with self._lock:
            actives = [self._active[i] for i in job_ids if i in self._active]
        for active in actives:
            self.pool.add_task(active.job.id, active.job.priority, active.job.id)

    def run_task(self, job_id: int) -> None:
        """One pool task: advance the job by one opcode (one worker per job)."""
        with self._lock:
            active = self._active.get(job_id)
        if active is None:
            return
        if not active.run_lock.acquire(blocking=False):
            active.rerun = True  # the worker that has it will look again
            return
        held = False
        try:
            active.rerun = False
            self.pool.set_task_name(f"Job{job_id}")
            held = self._controls.hold_back(active)  # parked, like one waiting for a dependency
            verdict = Verdict.WAITDEP if held else step(active, self)
        except StorageError as err:
            self._recover_from_failed_write(active, err)
            return
        finally:
            active.run_lock.release()
        if verdict == Verdict.WAITDEP and active.rerun:  # read after release: none is lost
            verdict = Verdict.DEFER
        if verdict == Verdict.FINISHED:
            self._finished(job_id)
        elif verdict == Verdict.DEFER:
            raise DeferTask(priority=active.job.priority)
        elif not held:
            self._admission.release(job_id)  # waiting for a dependency holds no slot

    def _finished(self, job_id: int) -> None:
        with self._lock:
            active = self._active.pop(job_id, None)
        self._admission.release(job_id)
        if active is not None:  # metrics: a job's end, counted once
            job = active.job
            self.metrics.job_finished(job.status, job.start_timestamp, job.end_timestamp)
        waiters = self.depmgr.notify(job_id)
        if waiters:
            self._enqueue(waiters)

    # -- for the controls (jobqueue.controls) ------------------------------------------
    def active_job(self, job_id: int) -> ActiveJob | None:
        return self._get_active(job_id)

    def active_jobs(self) -> list[ActiveJob]:
        with self._lock:
            return list(self._active.values())

    def change_locked(self, active: ActiveJob, change: Callable[[], None]) -> None:
        self._change_locked(active, change)

    def enqueue(self, job_ids: list[int]) -> None:
        self._enqueue(job_ids)

    def not_active_message(self, job_id: int) -> str:
        return self._not_active_message(job_id)

    def _recover_from_failed_write(self, active: ActiveJob, err: StorageError) -> None:
        """Go back to what is on disk and try the job again a little later.

        An opcode that was running ends in error; that end is written by the
        job's next step, before the job can count as finished.
        """
        job_id = active.job.id
        self._log.error(
            "Cannot write job %s (%s); retrying in %.0fs", job_id, err, STORAGE_RETRY_DELAY
        )
        with active.lock:
            try:
                on_disk = self.store.read_job(job_id)
            except GenericError:
                on_disk = None
            if on_disk is not None:
                if active.backlog.entries:
                    self._log.error(
                        "Job %s: %d log entries never written are lost",
                        job_id,
                        active.backlog.entries,
                    )
                active.job.restore(on_disk.to_dict())
                active.unsaved = False
                active.backlog = LogBacklog()
            if end_lost_opcodes_locked(active.job, err.args[0], self.now()):
                active.unsaved = True
        self._timers.call_later(STORAGE_RETRY_DELAY, lambda: self._enqueue([job_id]))

    # -- submission -----------------------------------------------------------
    def submit_job(
        self,
        ops: list[Any],
        *,
        drained_ok: bool = False,
        submitter: Submitter | None = None,
        options: Any = None,
    ) -> int:
        """Submit one job; its id once it is on disk. Raises on any problem.

        ``submitter`` is recorded in the job (None: the daemon itself); only
        an admin may pass the drain flag (``drained_ok``). ``options`` are the
        job-level options (``joboptions``): start time, retries, limit.
        """
        parsed = parse_options(options, 1)
        (result,) = self._submit(
            [ops], drained_ok=drained_ok, submitter=submitter, relative_ok=False, options=parsed
        )
        if isinstance(result, GenericError):
            raise result
        return result

    def submit_many_jobs(
        self,
        jobs: list[Any],
        *,
        drained_ok: bool = False,
        submitter: Submitter | None = None,
        options: Any = None,
    ) -> list[list[Any]]:
        """Submit several jobs; ``[[true, id] | [false, reason], ...]`` in order.

        ``options``: one set of job-level controls for every job, or a list
        with one (or null) per job.
        """
        if not isinstance(jobs, list):
            raise OpPrereqError("SubmitManyJobs needs a list of jobs", ECODE_INVAL)
        parsed = parse_options(options, len(jobs))
        results = self._submit(
            jobs, drained_ok=drained_ok, submitter=submitter, relative_ok=True, options=parsed
        )
        return [[False, str(r)] if isinstance(r, GenericError) else [True, r] for r in results]

    def submit_from_lu(
        self, jobs: list[list[dict[str, Any]]], parent: Job | None = None
    ) -> list[list[Any]]:
        """Jobs returned by an LU of ``parent``: a drained or closing queue fails each job.

        They get ``parent``'s submitter, marked as submitted by that job.
        """
        submitter = None
        if parent is not None:
            owner = parent.submitter or Submitter.daemon()
            submitter = owner.for_child(parent.id)
        try:
            return self.submit_many_jobs(jobs, submitter=submitter)
        except JobQueueError as err:
            return [[False, str(err)] for _ in jobs]

    def _submit(
        self,
        jobs: list[Any],
        *,
        drained_ok: bool,
        submitter: Submitter | None,
        relative_ok: bool,
        options: list[JobOptions] | None = None,
    ) -> list[int | GenericError]:
        if drained_ok:
            self._ownership.check_queue(submitter, "submit jobs past the drain flag")
        with self._lock:
            accepting = self._accepting
        if not accepting:
            self.metrics.submissions(0, len(jobs), "shutting_down")
            raise JobQueueError(constants.MSG_SHUTTING_DOWN)
        if not drained_ok and self.store.is_drained():
            self.metrics.submissions(0, len(jobs), "drained")
            raise JobQueueDrainError(constants.MSG_DRAINED)
        prepared = prepare_jobs(
            jobs,
            self.registry,
            self._exists,
            relative_ok,
            self.store.allocate_ids,
            int(self._clock() * 1_000_000_000),
        )
        refused = self._controls.rejected(prepared)  # ids of this call that will not be stored
        controls = options_by_id(prepared, options)
        accepted: list[tuple[int, list[OpCode]]] = []
        results: list[int | GenericError] = []
        with self._lock:  # room is counted and claimed at once: concurrent calls share it
            room = self._max_jobs - self.live.count() - self._slots_claimed
            for item in prepared:
                if isinstance(item, GenericError):
                    results.append(item)
                    continue
                job_id, ops = item
                blocker = _refused_dependency([op.stored() for op in ops], refused)
                if job_id in refused:  # a filter rule rejects it
                    pass
                elif blocker is not None:
                    refused[job_id] = _dependency_refused(blocker)
                elif len(accepted) >= room:
                    refused[job_id] = JobQueueFull(f"The job queue is full ({self._max_jobs} jobs)")
                else:
                    accepted.append((job_id, ops))
                results.append(job_id)
            self._slots_claimed += len(accepted)
        now = self.now()
        recorded = submitter or Submitter.daemon()
        to_write = [Job.new(job_id, ops, now, recorded) for job_id, ops in accepted]
        for job in to_write:
            controls[job.id].apply(job)
        try:
            with self.metrics.timed_write("create", len(to_write)):  # metrics: write latency
                failures = self.store.create_jobs(to_write)
            for job, failure in zip(to_write, failures, strict=True):
                if failure is not None:
                    refused[job.id] = failure
            self.live.publish(job for job in to_write if job.id not in refused)  # live from here
        finally:
            with self._lock:
                self._slots_claimed -= len(to_write)
        self._withdraw_orphans(to_write, refused)
        self._activate([job for job in to_write if job.id not in refused])
        outcome = [refused.get(r, r) if isinstance(r, int) else r for r in results]
        stored = sum(1 for r in outcome if isinstance(r, int))
        self.metrics.submissions(stored, len(outcome) - stored)  # metrics: submissions
        return outcome

    def _withdraw_orphans(self, written: list[Job], refused: dict[int, GenericError]) -> None:
        """Remove written jobs whose dependency of the same call could not be stored.

        They were never acknowledged, so removing them loses nothing; if the
        removal fails they stay and fail when they run ("job lost").
        """
        orphans = []
        for job in written:  # dependencies only point backwards: one pass is transitive
            blocker = _refused_dependency([op.input for op in job.ops], refused)
            if job.id not in refused and blocker is not None:
                refused[job.id] = _dependency_refused(blocker)
                orphans.append(job.id)
        if orphans:
            removed, failure = self.store.discard_jobs(orphans)
            if failure is not None:
                self._log.error("Cannot withdraw jobs %s: %s", orphans, failure)
            self.live.drop(removed)
            for job_id in set(orphans) - set(removed):  # still stored: they stay, and run
                del refused[job_id]

    def _exists(self, job_id: int) -> bool:
        return self.live.contains(job_id) or self.store.is_archived(job_id)

    # -- cancel and priority ---------------------------------------------------
    def cancel_job(
        self, job_id: int, kill: bool = False, *, caller: Submitter | None = None
    ) -> list[Any]:
        """Cancel a queued or waiting job; with ``kill`` also a running one.

        ``AccessDenied`` unless ``caller`` may change the job (see ``ownership``).
        """
        active = self._get_active(job_id)
        if active is None:
            return [False, self._not_active_message(job_id)]
        with active.lock:
            status, job = active.job.status, active.job
            self._ownership.check_job(caller, job.submitter, job_id, "kill" if kill else "cancel")
            if status == Status.QUEUED:
                message = active.cancel_message or constants.MSG_CANCELED
                self._change_locked(
                    active,
                    lambda: job.finalize_pending(Status.CANCELED, message, self.now()),
                )
                reply = [True, f"Job {job_id} canceled"]
            elif status == Status.WAITING or (
                kill and status in (Status.RUNNING, Status.CANCELING)
            ):
                self._change_locked(active, lambda: _mark_canceling(job))
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
            self._finished(job_id)
        else:
            self.locks.interrupt(job_id)
            if self.depmgr.remove_waiter(job_id):
                self._enqueue([job_id])
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
        active = self._get_active(job_id)
        if active is None:
            return [False, self._not_active_message(job_id)]
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

            self._change_locked(active, change)
            active.strategy = None  # escalation restarts from the new priority
            new_priority = active.job.priority
        try:
            self.pool.change_task_priority(job_id, new_priority)
        except NoSuchTask:
            pass  # running or parked on a dependency; picked up at its next turn
        return [
            True,
            f"Priorities of pending opcodes for job {job_id} have been changed to {priority}",
        ]

    def _change_locked(self, active: ActiveJob, change: Callable[[], None]) -> None:
        """Apply ``change`` and write it; on a failed write undo it and raise."""
        before = active.job.snapshot()
        change()
        try:
            self.write(active.job)
        except StorageError:
            active.job.restore(before)
            raise

    def _get_active(self, job_id: int) -> ActiveJob | None:
        with self._lock:
            return self._active.get(job_id)

    def _not_active_message(self, job_id: int) -> str:
        if self._exists(job_id):
            return f"Job {job_id} has already finished"
        return f"Job {job_id} not found"

    # -- archive -------------------------------------------------------------
    def archive_job(self, job_id: int, *, caller: Submitter | None = None) -> bool:
        """Archive one finished live job; False if it is not that.

        A job counts as finished once its end is written, even while its
        worker is still wrapping up: nothing writes it after that.
        ``AccessDenied`` unless ``caller`` may change the job.
        """
        entry = self.live.entry(job_id)
        if entry is None or entry.status not in FINALIZED:
            return False
        self._ownership.check_job(caller, entry.submitter, job_id, "archive")
        return bool(self._archive([job_id]))

    def auto_archive_jobs(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> list[int]:
        """Archive finished jobs older than ``age`` seconds (-1: all) within ``timeout``.

        Returns ``[archived, left unchecked]``; call again while the second
        is > 0. Admins only (``AccessDenied``).
        """
        self._ownership.check_queue(caller, "archive other users' jobs")
        now, deadline = self._clock(), time.monotonic() + max(0.0, timeout)
        entries = self.live.entries()
        archived, checked, batch = 0, 0, []
        for entry in entries:
            if time.monotonic() > deadline:
                break
            checked += 1
            if _old_enough(entry, age, now):
                batch.append(entry.id)
            if len(batch) >= _ARCHIVE_BATCH:
                archived += len(self._archive(batch))
                batch = []
        archived += len(self._archive(batch)) if batch else 0
        return [archived, len(entries) - checked]

    def _archive(self, job_ids: list[int]) -> list[int]:
        """Move jobs to the archive and out of the live view; ``StorageError`` after a failure."""
        moved, failure = self.store.archive_jobs(job_ids)
        self.live.drop(moved)
        if failure is not None:
            raise failure
        return moved

    def prune_archive(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> dict[str, Any]:
        """Delete archived jobs older than ``age`` seconds, for about ``timeout`` seconds.

        ``{"jobs": deleted, "directories": removed, "unfinished": more to do,
        "failures": [messages]}``; call again while ``unfinished``. Admins only.
        """
        self._ownership.check_queue(caller, "prune the archive")
        result = self.store.prune_archive(max(0.0, age), self._clock(), max(0.0, timeout))
        return {
            "jobs": result.jobs,
            "directories": result.directories,
            "unfinished": result.unfinished,
            "failures": result.failures,
        }

    # -- what may run when -----------------------------------------------------------
    def change_job_start(
        self, job_id: int, start: float | None, *, caller: Submitter | None = None
    ) -> list[Any]:
        """Set when a queued job may start (seconds since the epoch; None: at once).

        ``AccessDenied`` unless ``caller`` may change the job.
        """
        entry = self.live.entry(job_id)
        if entry is not None:
            self._ownership.check_job(caller, entry.submitter, job_id, "reschedule")
        return self._controls.change_job_start(job_id, start)

    def replace_filter(
        self,
        uuid: str | None,
        priority: Any,
        predicates: Any,
        action: Any,
        reason: Any,
        *,
        caller: Submitter | None = None,
    ) -> str:
        """Add or replace a job filter rule; its uuid (see ``Controls.replace_filter``).

        Admins only (``AccessDenied``).
        """
        self._ownership.check_queue(caller, "change job filters")
        return self._controls.replace_filter(uuid, priority, predicates, action, reason)

    def delete_filter(self, uuid: str, *, caller: Submitter | None = None) -> bool:
        """Delete a job filter rule; ``OpPrereqError`` if there is none by that uuid.

        Admins only (``AccessDenied``).
        """
        self._ownership.check_queue(caller, "change job filters")
        return self._controls.delete_filter(uuid)

    # -- queue-wide settings ---------------------------------------------------
    def set_drain_flag(self, flag: bool, *, caller: Submitter | None = None) -> bool:
        """Set or clear the drain flag; admins only."""
        self._ownership.check_queue(caller, "drain or undrain the queue")
        self.store.set_drained(flag)
        return True

    def set_watcher_pause(
        self, until: float | None, *, caller: Submitter | None = None
    ) -> float | None:
        """Pause the cron cleaner until ``until`` (seconds since the epoch), or end a pause.

        Returns ``until``, as Ganeti does. Raises ``OpPrereqError`` for a time
        in the past (Ganeti: GenericError) and ``StorageError`` if the setting
        cannot be stored; ``AccessDenied`` unless ``caller`` is an admin.
        """
        self._ownership.check_queue(caller, "pause the cron cleaner")
        if until is not None and until < self._clock():
            raise OpPrereqError("Unable to set pause end time in the past", ECODE_INVAL)
        text = None if until is None else format_pause(until)
        self.store.write_setting(WATCHER_PAUSE, text)
        self._log.info(
            "Cron cleaner %s", "no longer paused" if text is None else f"paused until {text}"
        )
        return until

    def watcher_pause(self) -> float | None:
        """Until when the cron cleaner is paused; None if it is not."""
        return pause_until(self.store.read_setting(WATCHER_PAUSE), self._clock())

    def worker_count(self, default: int) -> int:
        """The number of workers to start with: the stored one, else ``default``."""
        return self._controls.worker_count(default)

    def start_workers(self, count: int) -> None:
        """Run ``count`` workers (at start, after ``start``)."""
        self._controls.start_workers(count)

    def set_max_running_jobs(self, count: int, *, caller: Submitter | None = None) -> bool:
        """Change the number of workers at once and durably (Ganeti's max running jobs).

        Admins only (``AccessDenied``).
        """
        self._ownership.check_queue(caller, "change the number of workers")
        return self._controls.set_max_running_jobs(count)

    def query_config_values(self, fields: list[str]) -> list[Any]:
        values: dict[str, Callable[[], Any]] = {
            "drain_flag": self.store.is_drained,
            "watcher_pause": self.watcher_pause,
            "version": lambda: __version__,
            "luxi_version": lambda: constants.LUXI_VERSION,
            "queue_format_version": lambda: constants.QUEUE_FORMAT_VERSION,
            "live_jobs": self.live.count,
            "max_jobs": lambda: self._max_jobs,
            "workers": lambda: self.pool.stats()["workers"],
            "max_running_jobs": self._controls.workers,
            "filters": lambda: len(self._admission.rules()),
            "held_jobs": self._admission.held,
            "accepting_jobs": self.accepting,
            "role": lambda: "master",
            "master": lambda: self._name,
        }
        unknown = [name for name in fields if name not in values]
        if unknown:
            raise OpPrereqError(f"Unknown config fields: {', '.join(unknown)}", ECODE_INVAL)
        return [values[name]() for name in fields]

    def query_metrics(self) -> dict[str, Any]:
        """The daemon's metrics and the queue's state now (``jobqueue.metrics``)."""
        stats = self.pool.stats()
        state = QueueState(
            role="master",
            jobs=self.live.tally(),
            workers=stats["workers"],
            busy_workers=stats["running"],
            drained=self.store.is_drained(),
            max_jobs=self._max_jobs,
            held=self.live.held_tally(),
            filter_rules=len(self._admission.rules()),
        )
        return self.metrics.export(state)


def _refused_dependency(ops: list[dict[str, Any]], refused: dict[int, GenericError]) -> int | None:
    """The first dependency of ``ops`` that is among the ``refused`` jobs, if any."""
    for op in ops:
        for dep_id, _ in op.get("depends") or []:
            if dep_id in refused:
                return int(dep_id)
    return None


def _dependency_refused(dep_id: int) -> OpPrereqError:
    return OpPrereqError(f"Dependency job {dep_id} of this submission was refused", ECODE_INVAL)


def _mark_canceling(job: Job) -> None:
    for op in job.ops:
        if op.status not in FINALIZED:
            op.status = Status.CANCELING


def _old_enough(entry: IndexEntry, age: float, now: float) -> bool:
    if entry.status not in FINALIZED:
        return False
    if age < 0:
        return True
    stamp = entry.end_timestamp or entry.start_timestamp or entry.received_timestamp
    return stamp is not None and now - stamp[0] > age
