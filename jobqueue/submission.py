"""Submission: checking submitted jobs, storing them, handing them to the queue.

``prepare_jobs`` turns every opcode of every job into its typed record
(through the opcode registry, which checks it completely), checks
dependencies, allocates ids for the jobs that passed, resolves relative
dependencies (``-1`` = the job submitted just before in the same call) and
appends the queue's own entry to each opcode's reason trail. Nothing
half-valid gets an id. ``load_opcodes`` types the opcodes of a job read
back from storage, once, when the queue takes it up again.

``Intake`` is the queue's side of a submission (SubmitJob, SubmitManyJobs,
the jobs an LU returns): it refuses all while the queue is drained or
shutting down, prepares the jobs, leaves out those a filter rule rejects
(``Controls.rejected``), those past the limits of live jobs, opcodes and
opcode bytes and those whose dependency of the same call is refused,
writes the rest durably, publishes them to ``LiveJobs`` and only then
hands them to the queue to run (``activate``): a job's id is returned
once it is stored. It is built by ``JobQueue`` for itself, as
``Controls`` is.

``Intake.submit_each`` takes the single-job submissions of several callers
at once (``JobSubmission``, one per SubmitJob call) and handles them as one
submission: each caller is checked on its own (its options, its right to
pass the drain flag), and every job that passes is prepared, written and
published with the others, so that many clients share one durable write.

Locking: ``Intake._lock`` guards ``_slots_claimed`` and ``_opcodes_claimed``
(the jobs and opcodes of submissions in progress, not yet stored), so that
concurrent submissions share the room under the limits; it is held for
counting only.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from jobqueue import constants
from jobqueue.constants import FINALIZED
from jobqueue.errors import (
    ECODE_INVAL,
    GenericError,
    JobQueueDrainError,
    JobQueueError,
    JobQueueFull,
    OpPrereqError,
    decode_error,
    encode_error,
)
from jobqueue.joboptions import JobOptions, options_by_id, parse_options
from jobqueue.livejobs import Limits, LiveJobs
from jobqueue.metrics import Metrics
from jobqueue.model import Job, Submitter, Timestamp
from jobqueue.opcodes import REASON_SOURCE_DAEMON, OpCode, Registry
from jobqueue.ownership import Ownership
from jobqueue.storage.base import JobStore

Prepared = tuple[int, list[OpCode]] | GenericError

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class JobSubmission:
    """One caller's single job, as ``Intake.submit_each`` takes it.

    ``ops`` as sent (checked by the intake); ``options`` the wire value of
    its job options, or None; ``drained_ok`` past the drain flag (admins only).
    """

    ops: Any
    submitter: Submitter | None
    drained_ok: bool = False
    options: Any = None


def validate_job(ops: Any, registry: Registry, relative_ok: bool) -> list[OpCode]:
    """Typed opcodes of one job; raises ``GenericError`` subclasses."""
    if not isinstance(ops, list) or not ops:
        raise OpPrereqError("A job needs a non-empty list of opcodes", ECODE_INVAL)
    checked = [registry.typed(op) for op in ops]
    for op in checked:
        for dependency in op.depends or ():
            if dependency.job_id < 0 and not relative_ok:
                raise OpPrereqError(
                    "Relative job dependencies are only allowed in SubmitManyJobs", ECODE_INVAL
                )
    return checked


def prepare_jobs(
    jobs: list[Any],
    registry: Registry,
    exists: Callable[[int], bool],
    relative_ok: bool,
    allocate_ids: Callable[[int], list[int]],
    timestamp_ns: int,
) -> list[Prepared]:
    """One entry per job: ``(id, opcodes)`` ready to store, or the error.

    ``timestamp_ns`` dates the reason-trail entry every opcode gets.
    """
    checked: list[list[OpCode] | GenericError] = []
    for ops in jobs:
        try:
            checked.append(validate_job(ops, registry, relative_ok))
        except GenericError as err:
            checked.append(err)
        except Exception as err:  # a bug, refusing this job alone (jobs of many callers)
            _log.exception("Checking a submitted job failed")
            checked.append(decode_error(encode_error(err)))
    valid = [index for index, item in enumerate(checked) if not isinstance(item, GenericError)]
    ids = dict(zip(valid, allocate_ids(len(valid)), strict=True)) if valid else {}
    result: list[Prepared] = []
    for index, item in enumerate(checked):
        if isinstance(item, GenericError):
            result.append(item)
            continue
        try:
            result.append((ids[index], _finish(item, index, ids, exists, timestamp_ns)))
        except GenericError as err:
            result.append(err)
    return result


def _finish(
    ops: list[OpCode],
    index: int,
    ids: dict[int, int],
    exists: Callable[[int], bool],
    timestamp_ns: int,
) -> list[OpCode]:
    """Replace relative dependency ids, check absolute ones exist; extend the trails."""
    entry = [REASON_SOURCE_DAEMON, f"submitted as job {ids[index]}", timestamp_ns]
    trails = _SharedTrails()
    finished = []
    for op in ops:
        reason = [*op.stored().get("reason", ()), entry]
        if op.FROZEN:
            reason, frozen = trails.share(reason, op.params_by_name()["reason"].type.freeze)
        else:  # older-style plugins' lists are their LUs' to change: one each
            frozen = reason
        changes: dict[str, Any] = {"reason": reason}
        if op.depends:
            changes["depends"] = [
                [_dependency_id(job_id, index, ids, exists), [str(status) for status in statuses]]
                for job_id, statuses in op.depends
            ]
        finished.append(op.replaced_sharing(changes, {"reason": frozen}))
    return finished


class _SharedTrails:
    """The reason trails of one job's typed opcodes, one of each: a job of many
    opcodes keeps one trail, not one per opcode, while it waits."""

    def __init__(self) -> None:
        self._by_content: dict[tuple[Any, ...], tuple[list[Any], Any]] = {}

    def share(self, trail: list[Any], freeze: Callable[[Any], Any]) -> tuple[list[Any], Any]:
        """The trail kept for those equal to ``trail`` (the first of them), and
        its record form (``freeze`` of it)."""
        key = tuple(map(tuple, trail))
        shared = self._by_content.get(key)
        if shared is None:
            shared = self._by_content[key] = (trail, freeze(trail))
        return shared


def _dependency_id(
    dep_id: Any, index: int, ids: dict[int, int], exists: Callable[[int], bool]
) -> int:
    number = int(dep_id)
    if number < 0:
        target = index + number
        if target < 0 or target not in ids:
            raise OpPrereqError(f"Unable to resolve relative job ID {number}", ECODE_INVAL)
        return ids[target]
    if not exists(number):
        raise OpPrereqError(f"Dependency job {number} does not exist", ECODE_INVAL)
    return number


def load_opcodes(job: Job, registry: Registry) -> None:
    """Type the unfinished opcodes of a job read back from storage.

    An opcode that no longer validates (its OP_ID unregistered, say) becomes
    an ``InvalidOpCode``: the job loads, and that opcode fails when it runs.
    A job read back is kept as it was when submitted: where a typed record's
    JSON form equals what was read, the record takes what was read as its
    form (its keys in the file's order, so the next write changes no byte
    of it, its ``OP_ID`` the class's string), and equal trails of the job
    share one list and one frozen tuple.
    """
    trails = _SharedTrails()
    for op in job.ops:
        if op.status in FINALIZED:
            continue
        record = registry.load(op.input)
        if isinstance(record, OpCode) and record.FROZEN and record.stored() == op.input:
            op.input["OP_ID"] = record.OP_ID  # the class's string, not one read per opcode
            frozen: dict[str, Any] = {}
            reason = op.input.get("reason")
            if reason:
                freeze = record.params_by_name()["reason"].type.freeze
                shared, frozen["reason"] = trails.share(reason, freeze)
                op.input["reason"] = shared  # equal to what it replaces: the key keeps its place
            record = record.with_form(op.input, frozen)
        op.opcode = record


class IntakeQueue(Protocol):
    """What the intake uses of the queue (``JobQueue`` provides it)."""

    def accepting(self) -> bool: ...
    def now(self) -> Timestamp: ...
    def activate(self, jobs: list[Job]) -> None: ...


class Intake:
    """See the module docstring; built by ``JobQueue`` for itself."""

    def __init__(
        self,
        queue: IntakeQueue,
        store: JobStore,
        live: LiveJobs,
        registry: Registry,
        *,
        rejected: Callable[[list[Prepared]], dict[int, GenericError]],
        ownership: Ownership,
        metrics: Metrics,
        limits: Limits,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger,
    ) -> None:
        """``rejected`` names the prepared jobs a filter rule refuses (``Controls.rejected``).

        ``limits`` bound the live jobs, their opcodes and the bytes of their
        opcodes' inputs; the last softly: jobs are measured once stored, so
        the submissions under way when it is reached go in.
        """
        self._queue = queue
        self._store = store
        self._live = live
        self._registry = registry
        self._rejected = rejected
        self._ownership = ownership
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        self._log = logger
        self._lock = threading.Lock()
        self._slots_claimed = 0  # jobs of submissions in progress, not yet stored
        self._opcodes_claimed = 0  # and their opcodes

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

    def submit_each(self, submissions: list[JobSubmission]) -> list[int | GenericError]:
        """Submit one job per caller, together; each job's id, or what refused it.

        Refusals are per caller: one caller's bad options or missing right
        refuse that caller's job only. Jobs never depend on each other here.
        """
        results: dict[int, int | GenericError] = {}
        admitted: list[int] = []
        jobs: list[Any] = []
        options: list[JobOptions] = []
        submitters: list[Submitter | None] = []
        drained: list[bool] = []  # read at most once, for the first caller it concerns
        for index, submission in enumerate(submissions):
            try:
                parsed = parse_options(submission.options, 1)
                self._check_open(submission.drained_ok, submission.submitter, 1, drained)
            except GenericError as err:
                results[index] = err
                continue
            except Exception as err:  # a bug: this caller's answer alone
                self._log.exception("Checking a submission failed")
                results[index] = decode_error(encode_error(err))
                continue
            admitted.append(index)
            jobs.append(submission.ops)
            options.append(parsed[0] if parsed else JobOptions())
            submitters.append(submission.submitter)
        if jobs:
            stored = self._store_new(
                jobs, relative_ok=False, options=options, submitters=submitters
            )
            results.update(zip(admitted, stored, strict=True))
        return [results[index] for index in range(len(submissions))]

    def _check_open(
        self, drained_ok: bool, submitter: Submitter | None, count: int, drained: list[bool]
    ) -> None:
        """Raise unless ``count`` jobs of ``submitter`` may be submitted now.

        ``drained`` caches the drain flag's state for a batch of callers
        (empty: not read yet).
        """
        if drained_ok:
            self._ownership.check_queue(submitter, "submit jobs past the drain flag")
        if not self._queue.accepting():
            self._metrics.submissions(0, count, "shutting_down")
            raise JobQueueError(constants.MSG_SHUTTING_DOWN)
        if drained_ok:
            return
        if not drained:
            drained.append(self._store.is_drained())
        if drained[0]:
            self._metrics.submissions(0, count, "drained")
            raise JobQueueDrainError(constants.MSG_DRAINED)

    def _submit(
        self,
        jobs: list[Any],
        *,
        drained_ok: bool,
        submitter: Submitter | None,
        relative_ok: bool,
        options: list[JobOptions] | None = None,
    ) -> list[int | GenericError]:
        self._check_open(drained_ok, submitter, len(jobs), [])
        return self._store_new(
            jobs, relative_ok=relative_ok, options=options, submitters=[submitter] * len(jobs)
        )

    def _store_new(
        self,
        jobs: list[Any],
        *,
        relative_ok: bool,
        options: list[JobOptions] | None,
        submitters: list[Submitter | None],
    ) -> list[int | GenericError]:
        """Prepare, admit, write, publish and activate ``jobs``; each one's id or refusal.

        ``submitters`` and ``options`` (if given) hold one entry per job.
        """
        prepared = prepare_jobs(
            jobs,
            self._registry,
            self._exists,
            relative_ok,
            self._store.allocate_ids,
            int(self._clock() * 1_000_000_000),
        )
        refused = self._rejected(prepared)  # ids of this call that will not be stored
        controls = options_by_id(prepared, options)
        recorded = {
            item[0]: submitter or Submitter.daemon()
            for item, submitter in zip(prepared, submitters, strict=True)
            if not isinstance(item, GenericError)
        }
        accepted: list[tuple[int, list[OpCode]]] = []
        results: list[int | GenericError] = []
        with self._lock:  # room is counted and claimed at once: concurrent calls share it
            room = self._limits.jobs - self._live.count() - self._slots_claimed
            opcode_room = self._limits.opcodes - self._live.opcode_count() - self._opcodes_claimed
            bytes_full = self._live.input_bytes() >= self._limits.opcode_bytes
            for item in prepared:
                if isinstance(item, GenericError):
                    results.append(item)
                    continue
                job_id, ops = item
                # Nothing refused yet (the usual case): no dependency can be.
                blocker = (
                    _refused_dependency([op.stored() for op in ops], refused) if refused else None
                )
                if job_id in refused:  # a filter rule rejects it
                    pass
                elif blocker is not None:
                    refused[job_id] = _dependency_refused(blocker)
                elif len(ops) > self._limits.opcodes:  # never takeable: no use trying again
                    refused[job_id] = OpPrereqError(
                        f"The job has {len(ops)} opcodes; the queue takes at most"
                        f" {self._limits.opcodes}",
                        ECODE_INVAL,
                    )
                elif len(accepted) >= room:
                    refused[job_id] = JobQueueFull(
                        f"The job queue is full ({self._limits.jobs} jobs)"
                    )
                elif len(ops) > opcode_room:
                    refused[job_id] = JobQueueFull(
                        f"The job queue is full ({self._limits.opcodes} opcodes)"
                    )
                elif bytes_full:
                    refused[job_id] = JobQueueFull(
                        f"The job queue is full ({self._limits.opcode_bytes} bytes of opcodes)"
                    )
                else:
                    accepted.append((job_id, ops))
                    opcode_room -= len(ops)
                results.append(job_id)
            claimed_opcodes = sum(len(ops) for _, ops in accepted)
            self._slots_claimed += len(accepted)
            self._opcodes_claimed += claimed_opcodes
        to_write: list[Job] = []
        try:  # from here on the claims are given back, whatever happens
            now = self._queue.now()
            to_write = [Job.new(job_id, ops, now, recorded[job_id]) for job_id, ops in accepted]
            for job in to_write:
                controls[job.id].apply(job)
            with self._metrics.timed_write("create", len(to_write)):  # metrics: write latency
                failures = self._store.create_jobs(to_write)
            for job, failure in zip(to_write, failures, strict=True):
                if failure is not None:
                    refused[job.id] = failure
            self._live.publish(job for job in to_write if job.id not in refused)  # live from here
        finally:
            with self._lock:
                self._slots_claimed -= len(accepted)
                self._opcodes_claimed -= claimed_opcodes
        self._withdraw_orphans(to_write, refused)
        self._queue.activate([job for job in to_write if job.id not in refused])
        outcome = [refused.get(r, r) if isinstance(r, int) else r for r in results]
        stored = sum(1 for r in outcome if isinstance(r, int))
        self._metrics.submissions(stored, len(outcome) - stored)  # metrics: submissions
        return outcome

    def _withdraw_orphans(self, written: list[Job], refused: dict[int, GenericError]) -> None:
        """Remove written jobs whose dependency of the same call could not be stored.

        They were never acknowledged, so removing them loses nothing; if the
        removal fails they stay and fail when they run ("job lost").
        """
        if not refused:  # no job refused: none lost a dependency
            return
        orphans = []
        for job in written:  # dependencies only point backwards: one pass is transitive
            blocker = _refused_dependency([op.input for op in job.ops], refused)
            if job.id not in refused and blocker is not None:
                refused[job.id] = _dependency_refused(blocker)
                orphans.append(job.id)
        if orphans:
            removed, failure = self._store.discard_jobs(orphans)
            if failure is not None:
                self._log.error("Cannot withdraw jobs %s: %s", orphans, failure)
            self._live.drop(removed)
            for job_id in set(orphans) - set(removed):  # still stored: they stay, and run
                del refused[job_id]

    def _exists(self, job_id: int) -> bool:
        return self._live.contains(job_id) or self._store.is_archived(job_id)


def _refused_dependency(ops: list[dict[str, Any]], refused: dict[int, GenericError]) -> int | None:
    """The first dependency of ``ops`` that is among the ``refused`` jobs, if any."""
    for op in ops:
        for dep_id, _ in op.get("depends") or []:
            if dep_id in refused:
                return int(dep_id)
    return None


def _dependency_refused(dep_id: int) -> OpPrereqError:
    return OpPrereqError(f"Dependency job {dep_id} of this submission was refused", ECODE_INVAL)
