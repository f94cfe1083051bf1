"""The opcode processor: runs one opcode through its logical unit.

For one opcode it builds the LU, takes its locks level by level (the cluster
lock, then the resource locks, each set in sorted name order, at the opcode's
current priority and within the caller's time budget), tells the queue the
opcode started, runs it, and turns a ``ResultWithJobs`` into submitted jobs.
It reaches the queue only through the ``ExecCallbacks`` it is given.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from jobqueue import constants, plainjson
from jobqueue.errors import GenericError, OpExecError, OpResultUnstorable, ProgrammerError
from jobqueue.locking import CLUSTER_LOCK, LockManager
from jobqueue.lus.base import ExecCallbacks, LogicalUnit, LUContext, ResultWithJobs
from jobqueue.metrics import Metrics
from jobqueue.model import Submitter
from jobqueue.opcodes import REASON_SOURCE_OPCODE, InvalidOpCode, OpCode, Registry
from jobqueue.signals import JobCanceled, LockAcquireTimeout, QueueShutdown

if TYPE_CHECKING:
    from jobqueue.children import ProcessGroups
    from jobqueue.lus.base import OutputSink

JOBS_KEY = "jobs"


class Processor:
    """Runs opcodes; one instance serves every worker thread."""

    def __init__(
        self,
        registry: Registry,
        locks: LockManager,
        *,
        kill_grace: float = constants.DEFAULT_KILL_GRACE,
        processes: ProcessGroups | None = None,
        commands_run_as: str = "submitter",
        output: OutputSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        time_ns: Callable[[], int] = time.time_ns,
        logger: logging.Logger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._registry = registry
        self._locks = locks
        self._kill_grace = kill_grace
        self._processes = processes
        self._commands_run_as = commands_run_as
        self._output = output
        self._clock = clock
        self._time_ns = time_ns
        self._log = logger or logging.getLogger(__name__)
        self._metrics = metrics or Metrics()

    def exec_opcode(
        self,
        opcode: OpCode | InvalidOpCode,
        cbs: ExecCallbacks,
        *,
        owner: Hashable,
        job_id: int,
        lock_timeout: float | None,
        submitter: Submitter | None = None,
        op_index: int = 0,
    ) -> Any:
        """Run one opcode (number ``op_index`` of job ``job_id``) and return its result.

        Raises the opcode's own error for an ``InvalidOpCode`` (``OpCodeUnknown``
        for an OP_ID no longer registered), ``LockAcquireTimeout`` when the
        locks were not all acquired within ``lock_timeout`` seconds (None =
        wait as long as it takes), ``JobCanceled``/``QueueShutdown`` from
        ``cbs.check_cancel``, and ``GenericError`` subclasses for failures; any
        other exception of the LU is logged and raised as ``OpExecError``.
        Locks are always released.
        """
        if isinstance(opcode, InvalidOpCode):
            raise copy.copy(opcode.error)
        _, lu_class = self._registry.lookup(opcode.OP_ID)
        ctx = LUContext(
            job_id,
            cbs,
            self._kill_grace,
            self._processes,
            submitter=submitter,
            commands_run_as=self._commands_run_as,
            op_index=op_index,
            output=self._output,
        )
        lu: LogicalUnit[Any] = lu_class(opcode, ctx)
        try:
            lu.check_arguments()
            self._acquire_locks(lu, cbs, owner, lock_timeout)
            cbs.notify_start()
            result = lu.dry_run_result() if opcode.dry_run else lu.exec()
            return self._process_result(opcode, job_id, result, cbs)
        except (GenericError, JobCanceled, QueueShutdown, LockAcquireTimeout):
            raise
        except Exception as err:
            self._log.exception("Opcode %s of job %s failed", opcode.OP_ID, job_id)
            raise OpExecError(str(err) or type(err).__name__) from err
        finally:
            self._locks.release(owner)

    def _acquire_locks(
        self, lu: LogicalUnit[Any], cbs: ExecCallbacks, owner: Hashable, timeout: float | None
    ) -> None:
        """Cluster lock first, then resource locks in sorted order; all or none."""
        exclusive, shared = lu.locks()
        wanted = {name: False for name in shared} | {name: True for name in exclusive}
        if CLUSTER_LOCK in wanted:
            raise ProgrammerError(f"Resource lock name {CLUSTER_LOCK!r} is reserved")
        plan = [(CLUSTER_LOCK, lu.REQ_CLUSTER_EXCLUSIVE), *sorted(wanted.items())]
        deadline = None if timeout is None else self._clock() + timeout
        for name, exclusive_mode in plan:
            cbs.check_cancel()
            priority = cbs.current_priority()
            acquired = self._locks.acquire(
                owner, [name], shared=not exclusive_mode, timeout=0, priority=priority
            )
            if not acquired:
                cbs.notify_waiting()
                remaining = None if deadline is None else max(0.0, deadline - self._clock())
                waited = self._metrics.clock()  # metrics: a lock wait
                acquired = self._locks.acquire(
                    owner, [name], shared=not exclusive_mode, timeout=remaining, priority=priority
                )
                self._metrics.lock_waited(self._metrics.clock() - waited, acquired)
            if not acquired:
                self._locks.release(owner)
                cbs.check_cancel()  # an interrupted wait may mean "canceled"
                raise LockAcquireTimeout()

    def _process_result(self, opcode: OpCode, job_id: int, result: Any, cbs: ExecCallbacks) -> Any:
        """Submit the jobs of a ``ResultWithJobs``; other results pass through.

        Either must be plain JSON (the extra values of a ``ResultWithJobs``,
        checked before any child is submitted); ``OpResultUnstorable`` if not.
        """
        if not isinstance(result, ResultWithJobs):
            self._refuse_unstorable(opcode, job_id, result)
            return result
        if JOBS_KEY in result.extra:
            raise ProgrammerError(f"ResultWithJobs extra may not contain {JOBS_KEY!r}")
        self._refuse_unstorable(opcode, job_id, result.extra)
        parent = opcode.to_dict()
        entry = [REASON_SOURCE_OPCODE + opcode.OP_ID, f"submitted by job {job_id}", self._time_ns()]
        jobs = [[inherit(parent, child, entry) for child in job] for job in result.jobs]
        return {**result.extra, JOBS_KEY: cbs.submit_many_jobs(jobs)}

    def _refuse_unstorable(self, opcode: OpCode, job_id: int, result: Any) -> None:
        """Raise ``OpResultUnstorable`` unless ``result`` is plain JSON; log why."""
        problem = plainjson.problem(result, "result")
        if problem is not None:
            self._log.error(
                "Opcode %s of job %s returned what no job can store: %s",
                opcode.OP_ID,
                job_id,
                problem,
            )
            raise OpResultUnstorable(f"The opcode's result cannot be stored: {problem}")


def inherit(
    parent: Mapping[str, Any], child: Mapping[str, Any], entry: list[Any]
) -> dict[str, Any]:
    """A child opcode as submitted by ``parent``: debug level, priority, comment, reason.

    The child's reason trail is the parent's, then its own entries, then
    ``entry`` (naming the parent); a child whose own ``reason`` is not a list
    keeps it, for submission to refuse.
    """
    result = dict(child)
    if parent.get("debug_level") is not None:
        result["debug_level"] = parent["debug_level"]
    if result.get("priority") is None and parent.get("priority") is not None:
        result["priority"] = parent["priority"]
    if result.get("comment") is None:
        result["comment"] = f"Submitted by {parent.get('OP_ID')}"
    own = result.get("reason", [])
    if isinstance(own, list):
        result["reason"] = [*parent.get("reason", []), *own, list(entry)]
    return result
