"""The job queue: the live jobs, their worker task, cancel, priority, recovery; the one writer.

``JobQueue`` owns the live, unfinished jobs in memory (``ActiveJob``) and
has the worker pool advance them one opcode per task (``jobstep.step``).
Every state change is written through the store and, once durable,
published to ``LiveJobs``, where queries and waiters read it; a submission
is durable before its id is returned. Read-only questions are answered by
``jobreader.JobReader``; ``daemon.py`` builds both and what they use.

It is what the LUXI server calls for changes (``luxi.methods.QueueApi``)
and delegates to its parts: ``submission.Intake`` (new jobs),
``jobchanges.JobChanges`` (cancel, priority),
``archiving.Archiver`` (the archive), ``settings.QueueSettings``
(queue-wide settings and reports), ``controls.Controls`` (what may run
when). It builds the parts that call back into it; ``daemon.py`` the archiver.

Who may do what: every job records its submitter (``model.Submitter``,
given by the server for each request); cancel, priority changes, archiving
and queue-wide changes are checked against it by ``ownership.Ownership``.

What may run when is decided before each opcode by ``admission.Admission``
(job filter rules, start times, retry delays) and applied by
``controls.Controls``: a held job is parked without a worker and woken when
that could change. Retries are arranged by the job step (``retries``).

Locking: ``_lock`` guards ``_active`` and the change of ``_accepting``
(read without it: it only ever turns False) and is held only for dictionary
operations; each job's own ``ActiveJob.lock`` guards its
record. Never take ``_lock`` while holding a job lock.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from jobqueue import constants
from jobqueue.admission import Admission
from jobqueue.archiving import Archiver
from jobqueue.constants import FINALIZED, Status
from jobqueue.controls import Controls
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import GenericError, JobNotLive, StorageError
from jobqueue.jobchanges import JobChanges
from jobqueue.jobstep import (
    ActiveJob,
    LogBacklog,
    Verdict,
    end_lost_opcodes_locked,
    fail_on_internal_error_locked,
    step,
)
from jobqueue.livejobs import DEFAULT_LIMITS, Limits, LiveJobs
from jobqueue.locking import LockAttemptTimeoutStrategy, LockManager
from jobqueue.metrics import Metrics
from jobqueue.model import Job, Submitter, Timestamp, now_stamp
from jobqueue.opcodes import Registry
from jobqueue.ownership import Ownership
from jobqueue.processor import Processor
from jobqueue.settings import QueueSettings
from jobqueue.storage.base import JobStore
from jobqueue.submission import Intake, JobSubmission, load_opcodes
from jobqueue.timers import Timers
from jobqueue.workerpool import DeferTask, WorkerPool

#: Seconds before a job whose write failed is tried again.
STORAGE_RETRY_DELAY = 1.0


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
        archiver: Archiver,
        ownership: Ownership,
        limits: Limits = DEFAULT_LIMITS,
        name: str | None = None,
        strategy_factory: Callable[[], LockAttemptTimeoutStrategy] = LockAttemptTimeoutStrategy,
        clock: Callable[[], float] = time.time,
        on_job_end: Callable[[Job], None] | None = None,
        logger: logging.Logger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``pool`` must run its tasks through ``run_task``; it may start with no workers.

        ``ownership`` says who may change which job.
        ``name`` is this daemon's name as the master (``QueryConfigValues``).
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
        self._archiver = archiver
        self._strategy_factory = strategy_factory
        self._ownership = ownership
        self._clock = clock
        self._on_job_end = on_job_end
        self._log = logger or logging.getLogger(__name__)
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()
        self._active: dict[int, ActiveJob] = {}
        self._accepting = True
        self._controls = Controls(
            self, admission, store, timers, pool, clock=clock, logger=self._log
        )
        self._intake = Intake(
            self,
            store,
            live,
            registry,
            rejected=self._controls.rejected,
            ownership=ownership,
            metrics=self.metrics,
            limits=limits,
            clock=clock,
            logger=self._log,
        )
        self._changes = JobChanges(self, ownership)
        self._settings = QueueSettings(
            store,
            live,
            pool,
            admission,
            self.metrics,
            ownership,
            limits=limits,
            name=name,
            accepting=self.accepting,
            max_running_jobs=self._controls.workers,
            clock=clock,
            logger=self._log,
        )

    # -- StepEnv --------------------------------------------------------------
    def write(self, job: Job, *, start: bool = False) -> None:
        """Replace the stored job durably, then publish it; ``StorageError`` publishes nothing.

        ``start``: an opcode starts once this write is done (``record_start``).
        A write that ends the job is announced to ``on_job_end`` after that.
        """
        with self.metrics.timed_write("start" if start else "replace"):  # metrics: write latency
            (self.store.record_start if start else self.store.replace_job)(job)
        self._publish(job)

    def _publish(self, job: Job) -> None:
        """Publish a stored version of ``job``; announce its end if this one is the first."""
        ends = job.is_finalized and self.live.status_of(job.id) not in FINALIZED
        self.live.publish([job])
        if ends and self._on_job_end is not None:
            self._on_job_end(job)

    def now(self) -> Timestamp:
        return now_stamp(self._clock)

    def accepting(self) -> bool:
        # Read without ``_lock``: a bool that only ever turns False, asked
        # before every opcode and lock attempt, where the contended lock
        # was 3 % of the daemon's interpreter time.
        return self._accepting

    def new_strategy(self) -> LockAttemptTimeoutStrategy:
        return self._strategy_factory()

    def step_aside(self) -> None:
        """The running opcode is over: its worker slot goes to the next job."""
        self.pool.step_aside()

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
        for job in jobs:  # typed before they are published: the copies share their inputs
            if not job.is_finalized:
                load_opcodes(job, self.registry)
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
            self.activate([job])
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
    def activate(self, jobs: list[Job]) -> None:
        """Have the workers run these jobs, loaded or just stored (``Intake``)."""
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

    def enqueue(self, job_ids: list[int]) -> None:
        """Have the workers look again at those of these jobs that are active."""
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
        except Exception as err:  # a bug: the job must still end, and say why
            self._log.exception("Job %s: internal error; the job fails", job_id)
            if not self._fail_on_internal_error(active, err):
                return
            verdict = Verdict.FINISHED
        finally:
            active.run_lock.release()
        if verdict == Verdict.WAITDEP and active.rerun:  # read after release: none is lost
            verdict = Verdict.DEFER
        if verdict == Verdict.FINISHED:
            self.finished(job_id)
        elif verdict == Verdict.DEFER:
            raise DeferTask(priority=active.job.priority)
        elif not held:
            self._admission.release(job_id)  # waiting for a dependency holds no slot

    def finished(self, job_id: int, *, ended: bool = True) -> None:
        """The job leaves the active jobs: it ended, or (``ended`` False) it was dropped."""
        with self._lock:
            active = self._active.pop(job_id, None)
        self._admission.release(job_id)
        if active is not None and ended:  # metrics: a job's end, counted once
            job = active.job
            self.metrics.job_finished(job.status, job.start_timestamp, job.end_timestamp)
        waiters = self.depmgr.notify(job_id)
        if waiters:
            self.enqueue(waiters)

    # -- for the controls and the job changes (jobqueue.controls, jobqueue.jobchanges) --
    def active_job(self, job_id: int) -> ActiveJob | None:
        with self._lock:
            return self._active.get(job_id)

    def active_jobs(self) -> list[ActiveJob]:
        with self._lock:
            return list(self._active.values())

    def change_locked(self, active: ActiveJob, change: Callable[[], None]) -> None:
        """Apply ``change`` and write it; on a failed write undo it and raise."""
        before = active.job.snapshot()
        change()
        try:
            self.write(active.job)
        except StorageError:
            active.job.restore(before)
            raise

    def not_active_message(self, job_id: int) -> str:
        if self.live.contains(job_id) or self.store.is_archived(job_id):
            return f"Job {job_id} has already finished"
        return f"Job {job_id} not found"

    def _fail_on_internal_error(self, active: ActiveJob, err: Exception) -> bool:
        """End the job in error after a bug broke its step; False if that was not written.

        A job whose end was published (written, then the bug struck) stays as
        it is; one that ended in memory only is written as it ended. A failed
        write, whatever it raised, goes the way of any
        (``_recover_from_failed_write``): the job is tried again later.
        """
        job_id = active.job.id
        with active.lock:
            if self.live.status_of(job_id) in FINALIZED:
                return True
            self.depmgr.remove_waiter(job_id)
            if not active.job.is_finalized:
                fail_on_internal_error_locked(active.job, err, self.now())
            active.unsaved = True
            failed: StorageError | None = None
            try:
                self.write(active.job)
            except StorageError as write_err:
                failed = write_err
            except Exception as write_err:  # the same bug again, likely
                self._log.exception("Job %s: cannot write its end after an internal error", job_id)
                failed = StorageError(f"{type(write_err).__name__}: {write_err}", errno.EIO)
            else:
                active.unsaved = False
        if failed is not None:
            self._recover_from_failed_write(active, failed)
            return False
        return True

    def _recover_from_failed_write(self, active: ActiveJob, err: StorageError) -> None:
        """Go back to what is stored and try the job again a little later.

        A write whose outcome is unknown (an etcd member lost mid-request, a
        rename whose directory sync failed) may have been stored after all:
        what is read back is published, so that a job whose end was stored
        shows that end. An opcode still running in the stored version ends
        in error; that end is written by the job's next step, before the job
        can count as finished.
        """
        job_id = active.job.id
        if isinstance(err, JobNotLive):
            self._drop_not_live(job_id, err)
            return
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
                self._publish(active.job)
            if end_lost_opcodes_locked(active.job, err.args[0], self.now()):
                active.unsaved = True
        self._timers.call_later(STORAGE_RETRY_DELAY, lambda: self.enqueue([job_id]))

    def _drop_not_live(self, job_id: int, err: JobNotLive) -> None:
        """The store no longer has the job live (removed by hand): forget it here too.

        Jobs waiting for it look again and find it archived, or lost.
        """
        self._log.error("%s; the job is dropped from the queue", err)
        self.live.drop([job_id])
        self.finished(job_id, ended=False)

    # -- submission (jobqueue.submission) ---------------------------------------
    def submit_job(
        self,
        ops: list[Any],
        *,
        drained_ok: bool = False,
        submitter: Submitter | None = None,
        options: Any = None,
    ) -> int:
        """Submit one job; its id once it is stored (``Intake.submit_job``)."""
        return self._intake.submit_job(
            ops, drained_ok=drained_ok, submitter=submitter, options=options
        )

    def submit_each(self, submissions: list[JobSubmission]) -> list[int | GenericError]:
        """Several callers' single jobs, submitted together (``Intake.submit_each``)."""
        return self._intake.submit_each(submissions)

    def submit_many_jobs(
        self,
        jobs: list[Any],
        *,
        drained_ok: bool = False,
        submitter: Submitter | None = None,
        options: Any = None,
    ) -> list[list[Any]]:
        """Submit several jobs (``Intake.submit_many_jobs``)."""
        return self._intake.submit_many_jobs(
            jobs, drained_ok=drained_ok, submitter=submitter, options=options
        )

    def submit_from_lu(
        self, jobs: list[list[dict[str, Any]]], parent: Job | None = None
    ) -> list[list[Any]]:
        """Jobs returned by an LU of ``parent`` (``Intake.submit_from_lu``)."""
        return self._intake.submit_from_lu(jobs, parent)

    # -- cancel and priority (jobqueue.jobchanges) -------------------------------
    def cancel_job(
        self, job_id: int, kill: bool = False, *, caller: Submitter | None = None
    ) -> list[Any]:
        """Cancel a queued or waiting job; with ``kill`` also a running one."""
        return self._changes.cancel_job(job_id, kill, caller=caller)

    def change_job_priority(
        self, job_id: int, priority: int, *, caller: Submitter | None = None
    ) -> list[Any]:
        """Change the priority of the job's queued and waiting opcodes."""
        return self._changes.change_job_priority(job_id, priority, caller=caller)

    # -- archive (jobqueue.archiving) --------------------------------------------
    def archive_job(self, job_id: int, *, caller: Submitter | None = None) -> bool:
        """Archive one finished live job (``Archiver.archive_job``)."""
        return self._archiver.archive_job(job_id, caller=caller)

    def auto_archive_jobs(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> list[int]:
        """Archive finished jobs older than ``age`` (``Archiver.auto_archive_jobs``)."""
        return self._archiver.auto_archive_jobs(age, timeout, caller=caller)

    def prune_archive(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> dict[str, Any]:
        """Delete archived jobs older than ``age`` (``Archiver.prune_archive``)."""
        return self._archiver.prune_archive(age, timeout, caller=caller)

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

    # -- queue-wide settings and reports (jobqueue.settings) ------------------------
    def set_drain_flag(self, flag: bool, *, caller: Submitter | None = None) -> bool:
        """Set or clear the drain flag (``QueueSettings.set_drain_flag``)."""
        return self._settings.set_drain_flag(flag, caller=caller)

    def set_watcher_pause(
        self, until: float | None, *, caller: Submitter | None = None
    ) -> float | None:
        """Pause the cron cleaner until ``until`` (``QueueSettings.set_watcher_pause``)."""
        return self._settings.set_watcher_pause(until, caller=caller)

    def query_config_values(self, fields: list[str]) -> list[Any]:
        """QueryConfigValues (``QueueSettings.query_config_values``)."""
        return self._settings.query_config_values(fields)

    def query_metrics(self) -> dict[str, Any]:
        """QueryMetrics (``QueueSettings.query_metrics``)."""
        return self._settings.query_metrics()
