"""Checking submitted jobs before anything is stored.

``prepare_jobs`` validates every opcode of every job (through the opcode
registry), checks priorities and dependencies, allocates ids for the jobs
that passed and resolves relative dependencies (``-1`` = the job submitted
just before in the same call). Nothing half-valid gets an id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobqueue import constants
from jobqueue.errors import ECODE_INVAL, GenericError, OpPrereqError
from jobqueue.opcodes import Registry

Prepared = tuple[int, list[dict[str, Any]]] | GenericError


def validate_job(ops: Any, registry: Registry, relative_ok: bool) -> list[dict[str, Any]]:
    """Validated opcode dicts of one job; raises ``GenericError`` subclasses."""
    if not isinstance(ops, list) or not ops:
        raise OpPrereqError("A job needs a non-empty list of opcodes", ECODE_INVAL)
    checked = [registry.validate(op) for op in ops]
    for op in checked:
        priority = op.get("priority", constants.PRIO_DEFAULT)
        if priority not in constants.PRIO_SUBMIT_VALID:
            raise OpPrereqError(
                f"Opcode {op['OP_ID']} has invalid priority {priority}, allowed are "
                f"{sorted(constants.PRIO_SUBMIT_VALID)}",
                ECODE_INVAL,
            )
        for dep_id, _ in op.get("depends") or []:
            if isinstance(dep_id, int) and dep_id < 0 and not relative_ok:
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
) -> list[Prepared]:
    """One entry per job: ``(id, opcodes)`` ready to store, or the error."""
    checked: list[list[dict[str, Any]] | GenericError] = []
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
            result.append((ids[index], _resolve(item, index, ids, exists)))
        except GenericError as err:
            result.append(err)
    return result


def _resolve(
    ops: list[dict[str, Any]], index: int, ids: dict[int, int], exists: Callable[[int], bool]
) -> list[dict[str, Any]]:
    """Replace relative dependency ids; check absolute ones exist."""
    resolved = []
    for op in ops:
        if not op.get("depends"):
            resolved.append(op)
            continue
        depends = []
        for dep_id, statuses in op["depends"]:
            depends.append([_dependency_id(dep_id, index, ids, exists), list(statuses)])
        resolved.append({**op, "depends": depends})
    return resolved


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
