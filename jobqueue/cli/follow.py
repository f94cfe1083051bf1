"""``watch`` and ``wait``: follow jobs until they end, and say why they failed."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from jobqueue import errors
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode
from jobqueue.cli.formatting import format_log_message, merge_timestamp
from jobqueue.cli.selection import unique
from jobqueue.constants import FINALIZED, Status

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from jobqueue.luxi.client import Client

#: Pseudo-status of a job the daemon forgot while we were waiting for it.
LOST = "lost"


def failure_reason(status: Any, opstatus: Any, opresult: Any) -> str:
    """Why a job that did not succeed failed, from its status and per-opcode results."""
    if status in (Status.CANCELED, Status.CANCELING):
        return "Job was canceled"
    if status == LOST:
        return "Job lost"
    statuses = opstatus if isinstance(opstatus, list) else []
    results = opresult if isinstance(opresult, list) else []
    for index, op_status in enumerate(statuses):
        if op_status != Status.ERROR:
            continue
        result = results[index] if index < len(results) else None
        message = str(errors.decode_error(result)) if errors.is_encoded_error(result) else result
        if Status.SUCCESS in statuses[:index]:
            return f"partial failure (opcode {index}): {message}"
        return str(message)
    return f"Job ended with status {status}"


def job_statuses(client: Client, job_ids: Sequence[int]) -> dict[int, Any]:
    """The status of each job (None for an unknown one), from one QueryJobs call."""
    rows = client.query_jobs(list(job_ids), ["id", "status"])
    found = {int(row[0]): row[1] for row in rows if row and row[0] is not None}
    return {job_id: found.get(job_id) for job_id in job_ids}


def report_failures(context: Context, job_ids: Sequence[int], statuses: dict[int, Any]) -> None:
    """Print ``Job N failed: <reason>`` on stderr for each job in ``job_ids``."""
    known = [job_id for job_id in job_ids if statuses.get(job_id) != LOST]
    fields = ["id", "status", "opstatus", "opresult"]
    rows = context.client.query_jobs(known, fields) if known else []
    details = {int(row[0]): row[1:] for row in rows if row and row[0] is not None}
    for job_id in job_ids:
        row = details.get(job_id)
        if not row or row[0] is None:
            row = [statuses.get(job_id), None, None]
        context.err(f"Job {job_id} failed: {failure_reason(*row)}")


def watch_job(context: Context, job_id: int) -> int:
    """Print a job's log as it comes until the job ends; 0 if it succeeded, else 1.

    The ``Output from job N follows`` header comes with the first answer, so
    nothing but the error is printed for a job that does not exist.
    """
    header_shown = False

    def show_header() -> None:
        nonlocal header_shown
        if not header_shown:
            header = f"Output from job {job_id} follows"
            context.out(header)
            context.out("-" * len(header), flush=True)
            header_shown = True

    def on_log(entry: list[Any]) -> None:
        show_header()
        _, stamp, _, message = entry
        text = format_log_message(message)
        context.out(f"{time.ctime(merge_timestamp(stamp))} {text}", flush=True)

    try:
        status: Any = context.client.wait_for_job(job_id, on_log=on_log)
    except errors.JobLost:
        if job_statuses(context.client, [job_id])[job_id] is None:
            raise CommandFailed(f"Job {job_id} not found", ExitCode.NOT_FOUND) from None
        status = LOST
    show_header()
    if status == Status.SUCCESS:
        return ExitCode.OK
    report_failures(context, [job_id], {job_id: status})
    return ExitCode.FAILURE


def cmd_watch(args: argparse.Namespace, context: Context) -> int:
    """``jobctl watch ID``."""
    return watch_job(context, args.job_id)


class Progress:
    """The one-line ``17/40 finished, 2 failed`` on a terminal; silent elsewhere."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self._stream = stream if stream.isatty() else None
        self._total = total

    def show(self, finished: int, failed: int) -> None:
        if self._stream is not None:
            self._stream.write(f"\r{finished}/{self._total} finished, {failed} failed")
            self._stream.flush()

    def done(self) -> None:
        if self._stream is not None:
            self._stream.write("\n")
            self._stream.flush()


def wait_for_jobs(context: Context, job_ids: Sequence[int]) -> dict[int, Any]:
    """Block until every job has ended; return the final status of each.

    Waits on the lowest unfinished job, then re-reads the status of all the
    rest in one call, so jobs ending out of order are counted as they go.
    Raises CommandFailed (NOT_FOUND) if a job does not exist.
    """
    client = context.client
    statuses = job_statuses(client, job_ids)
    missing = [job_id for job_id in job_ids if statuses[job_id] is None]
    for job_id in missing[:-1]:
        context.err(f"Job {job_id} not found")
    if missing:
        raise CommandFailed(f"Job {missing[-1]} not found", ExitCode.NOT_FOUND)
    progress = Progress(context.stderr, len(job_ids))
    while True:
        ended = [status for status in statuses.values() if status in FINALIZED or status == LOST]
        progress.show(len(ended), sum(status != Status.SUCCESS for status in ended))
        pending = [job_id for job_id in job_ids if statuses[job_id] not in FINALIZED | {LOST}]
        if not pending:
            break
        first, rest = pending[0], pending[1:]
        try:
            statuses[first] = client.wait_for_job(first)
        except errors.JobLost:
            statuses[first] = LOST
        if rest:  # a job the query no longer sees keeps its last status
            current = job_statuses(client, rest)
            statuses.update({job_id: current[job_id] for job_id in rest if current[job_id]})
    progress.done()
    return statuses


def cmd_wait(args: argparse.Namespace, context: Context) -> int:
    """``jobctl wait ID...``: 0 if all succeeded, else 1 with the reasons on stderr."""
    job_ids = unique(args.job_ids)
    statuses = wait_for_jobs(context, job_ids)
    failed = [job_id for job_id in job_ids if statuses[job_id] != Status.SUCCESS]
    if not failed:
        return ExitCode.OK
    report_failures(context, failed, statuses)
    return ExitCode.FAILURE
