"""Checking submitted jobs before anything is stored, and typing loaded ones.

``prepare_jobs`` turns every opcode of every job into its typed record
(through the opcode registry, which checks it completely), checks
dependencies, allocates ids for the jobs that passed, resolves relative
dependencies (``-1`` = the job submitted just before in the same call) and
appends the queue's own entry to each opcode's reason trail. Nothing
half-valid gets an id. ``load_opcodes`` types the opcodes of a job read
back from storage, once, when the queue takes it up again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobqueue.constants import FINALIZED
from jobqueue.errors import ECODE_INVAL, GenericError, OpPrereqError
from jobqueue.model import Job
from jobqueue.opcodes import REASON_SOURCE_DAEMON, OpCode, Registry

Prepared = tuple[int, list[OpCode]] | GenericError


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
    finished = []
    for op in ops:
        changes: dict[str, Any] = {"reason": [*op.stored().get("reason", ()), entry]}
        if op.depends:
            changes["depends"] = [
                [_dependency_id(job_id, index, ids, exists), [str(status) for status in statuses]]
                for job_id, statuses in op.depends
            ]
        finished.append(op.replaced(**changes))
    return finished


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
    """
    for op in job.ops:
        if op.status not in FINALIZED:
            op.opcode = registry.load(op.input)
