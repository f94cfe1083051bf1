"""Looking jobs up: their statuses, the ids that do not exist, the jobs they submitted.

One rule for ids named on the command line, in every command: an id the
daemon does not know (live or archived) is reported as ``Job N not found``
on stderr, one line each, the other ids are still handled, and the exit
status is ``ExitCode.NOT_FOUND`` (7).
"""

from __future__ import annotations

from collections.abc import Sequence

from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import ExitCode

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jobqueue.luxi.client import Client

#: The key of a result listing the jobs an opcode submitted (``ResultWithJobs``).
JOBS_KEY = "jobs"


def not_found(job_id: int) -> str:
    return f"Job {job_id} not found"


def job_statuses(client: Client, job_ids: Sequence[int]) -> dict[int, Any]:
    """The status of each job (None for an unknown one), from one QueryJobs call."""
    if not job_ids:
        return {}
    rows = client.query_jobs(list(job_ids), ["id", "status"])
    found = {int(row[0]): row[1] for row in rows if row and row[0] is not None}
    return {job_id: found.get(job_id) for job_id in job_ids}


def known_jobs(context: Context, job_ids: Sequence[int]) -> tuple[dict[int, Any], list[int]]:
    """Split ``job_ids`` into the known ones (with their status) and the unknown ones.

    Each unknown id is reported on stderr as it is found.
    """
    statuses = job_statuses(context.client, job_ids)
    missing = [job_id for job_id, status in statuses.items() if status is None]
    for job_id in missing:
        context.err(not_found(job_id))
    return {job_id: s for job_id, s in statuses.items() if s is not None}, missing


def exit_code(code: int, missing: Sequence[int]) -> int:
    """``code``, unless an id was not found: then NOT_FOUND."""
    return int(ExitCode.NOT_FOUND) if missing else code


def submitted_jobs(opresult: Any) -> list[int]:
    """The ids of the jobs a job's opcodes submitted, from its ``opresult``."""
    found: list[int] = []
    for result in opresult if isinstance(opresult, list) else []:
        entries = result.get(JOBS_KEY) if isinstance(result, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if _is_submitted(entry):
                found.append(entry[1])
    return found


def _is_submitted(entry: Any) -> bool:
    """Whether ``entry`` is ``[true, job id]``: a job submitted as asked."""
    return (
        isinstance(entry, list) and len(entry) == 2 and entry[0] is True and type(entry[1]) is int
    )


def children(client: Client, job_ids: Sequence[int]) -> dict[int, list[int]]:
    """The jobs each of ``job_ids`` submitted (from one QueryJobs call)."""
    if not job_ids:
        return {}
    rows = client.query_jobs(list(job_ids), ["id", "opresult"])
    return {int(row[0]): submitted_jobs(row[1]) for row in rows if row and row[0] is not None}
