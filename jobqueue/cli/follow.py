"""``watch`` and ``wait``: follow jobs until they end, and the jobs they submitted.

A job whose opcodes submitted jobs (a fan-out, any ``ResultWithJobs``) is
not done for its user until those are: both commands wait for them too,
and for the jobs those submitted, unless ``--no-children``. Following one
job of a single command, both exit with that command's status
(``exitcodes.command_exit_code``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from jobqueue import errors
from jobqueue.cli import formatting, lookup, waiting
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode, command_exit_code
from jobqueue.cli.selection import unique
from jobqueue.constants import FINALIZED, JOB_NOTCHANGED, Status

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

#: Pseudo-status of a job the daemon forgot while we were waiting for it.
LOST = "lost"
ENDED = FINALIZED | {LOST}
PENDING = (Status.QUEUED, Status.WAITING)
#: Seconds between looks at what a pending job waits for (its locks' holders
#: change without the job changing); a running job is only woken by changes.
PENDING_POLL = 2.0
RUNNING_POLL = 30.0


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


def failure_details(
    context: Context, job_ids: Sequence[int], statuses: dict[int, Any]
) -> tuple[dict[int, str], dict[int, int | None]]:
    """Why each of ``job_ids`` failed, and the exit status its command gives (if one)."""
    known = [job_id for job_id in job_ids if statuses.get(job_id) != LOST]
    fields = ["id", "status", "opstatus", "opresult"]
    rows = context.client.query_jobs(known, fields) if known else []
    details = {int(row[0]): row[1:] for row in rows if row and row[0] is not None}
    reasons: dict[int, str] = {}
    codes: dict[int, int | None] = {}
    for job_id in job_ids:
        row = details.get(job_id)
        if not row or row[0] is None:
            row = [statuses.get(job_id), None, None]
        reasons[job_id] = failure_reason(*row)
        codes[job_id] = command_exit_code(row[0], row[2])
    return reasons, codes


def failure_reasons(
    context: Context, job_ids: Sequence[int], statuses: dict[int, Any]
) -> dict[int, str]:
    """Why each of ``job_ids`` failed, from one QueryJobs call."""
    return failure_details(context, job_ids, statuses)[0]


def report_failures(
    context: Context, reasons: dict[int, str], parents: dict[int, int] | None = None
) -> None:
    """``Job N failed: REASON`` on stderr for each job, naming the job that submitted it."""
    for job_id, reason in reasons.items():
        parent = (parents or {}).get(job_id)
        origin = f" (submitted by job {parent})" if parent is not None else ""
        context.err(f"Job {job_id}{origin} failed: {reason}")


def _json_line(context: Context, value: dict[str, Any]) -> None:
    import json

    context.out(json.dumps(value), flush=True)


class StateLine:
    """What a pending job waits for, under its log.

    On a terminal one line, rewritten in place and erased before the next
    log line; elsewhere a timestamped line each time it changes.
    """

    def __init__(self, context: Context) -> None:
        self._context = context
        self._live = context.is_terminal()
        self._text: str | None = None

    def show(self, text: str) -> None:
        if text == self._text:
            return
        if self._live:
            width = self._context.terminal_width() - 1
            self._context.stdout.write(f"\r\x1b[K{formatting.shorten(text, width)}")
            self._context.stdout.flush()
        else:
            self._context.out(f"{formatting.format_time(time.time())} {text}", flush=True)
        self._text = text

    def clear(self) -> None:
        if self._live and self._text is not None:
            self._context.stdout.write("\r\x1b[K")
        self._text = None


def _split_change(job_id: int, answer: Any) -> tuple[list[Any], list[list[Any]]]:
    """The job info and the well-formed log entries of a WaitForJobChange answer."""
    if not (
        isinstance(answer, list)
        and len(answer) == 2
        and isinstance(answer[0], list)
        and answer[0]
        and isinstance(answer[1], list)
    ):
        raise errors.LuxiError(f"Unexpected WaitForJobChange answer for job {job_id}")
    entries = [e for e in answer[1] if isinstance(e, list) and len(e) == 4 and type(e[0]) is int]
    return answer[0], entries


def follow_job(
    context: Context,
    job_id: int,
    on_log: Callable[[list[Any]], None],
    on_status: Callable[[str], None],
) -> str:
    """Follow a job until it ends; return its final status (or LOST).

    ``on_status`` gets the status after every answer (and every few seconds
    while the job is pending); ``on_log`` each new log entry, once. Raises
    CommandFailed (NOT_FOUND) if the job does not exist.
    """
    client = context.client
    info: list[Any] | None = None
    serial: int | None = None
    status = ""
    while True:
        timeout = PENDING_POLL if status in PENDING else RUNNING_POLL
        try:
            answer = client.wait_for_job_change(job_id, ["status"], info, serial, timeout)
        except errors.JobLost:
            answer = None
        if not answer:
            if info is None and lookup.job_statuses(client, [job_id])[job_id] is None:
                raise CommandFailed(lookup.not_found(job_id), ExitCode.NOT_FOUND)
            return LOST
        if answer != JOB_NOTCHANGED:
            info, entries = _split_change(job_id, answer)
            for entry in entries:
                if serial is None or entry[0] > serial:
                    serial = entry[0]
                    on_log(entry)
            status = str(info[0])
            if status in FINALIZED:
                return status
        on_status(status)


class _Watch:
    """The output of ``watch`` for one job: text for people, or JSON lines."""

    def __init__(self, context: Context, job_id: int, as_json: bool) -> None:
        self.context = context
        self.job_id = job_id
        self.as_json = as_json
        self.state = StateLine(context)
        self._started = False
        self._last: tuple[str, list[Any]] | None = None  # the last status event

    def start(self) -> None:
        """The header, once the job is known to exist."""
        if self._started:
            return
        self._started = True
        if not self.as_json:
            header = f"Output from job {self.job_id} follows"
            self.context.out(header)
            self.context.out("-" * len(header), flush=True)

    def log(self, entry: list[Any]) -> None:
        self.start()
        serial, stamp, log_type, message = entry
        if self.as_json:
            time_text = formatting.iso_timestamp(stamp)
            event = {"time": time_text, "serial": serial, "type": log_type, "message": message}
            _json_line(self.context, {"job": self.job_id, "event": "log", **event})
            return
        self.state.clear()
        when = formatting.format_timestamp(stamp)
        self.context.out(f"{when} {formatting.format_log_message(message)}", flush=True)

    def status(self, status: str) -> None:
        """Show what the job waits for, if it is pending and held back by anything."""
        self.start()
        found = (
            waiting.reasons(self.context.client, self.job_id, status) if status in PENDING else []
        )
        if self.as_json:
            if (status, found) != self._last:
                event = {"event": "status", "status": status, "waiting_for": found}
                _json_line(self.context, {"job": self.job_id, **event})
            self._last = (status, found)
        elif found:
            self.state.show(waiting.state_line(status, found))
        else:
            self.state.clear()

    def end(self, status: str, reason: str | None, job_id: int | None = None) -> None:
        self.state.clear()
        if self.as_json:
            event = {"event": "end", "status": status, "error": reason}
            _json_line(self.context, {"job": self.job_id if job_id is None else job_id, **event})


def watch_job(
    context: Context, job_id: int, *, children: bool = True, as_json: bool = False
) -> int:
    """Print a job's log as it comes until the job ends; 0 if it succeeded, else 1.

    While the job is pending, what it waits for is shown. With ``children``
    the jobs it submitted are waited for afterwards, and count for the exit
    status. A job of one command that failed gives its command's exit
    status instead of 1. Nothing but the error is printed for a job that
    does not exist.
    """
    watch = _Watch(context, job_id, as_json)
    status = follow_job(context, job_id, watch.log, watch.status)
    watch.start()
    failed: dict[int, str] = {}
    codes: dict[int, int | None] = {}
    if status != Status.SUCCESS:
        failed, codes = failure_details(context, [job_id], {job_id: status})
    watch.end(status, failed.get(job_id))
    report_failures(context, failed)
    submitted = lookup.children(context.client, [job_id]).get(job_id, []) if children else []
    if submitted:
        children_failed = _wait_for_children(context, watch, job_id, submitted)
        return ExitCode.FAILURE if failed or children_failed else ExitCode.OK
    if not failed:
        return ExitCode.OK
    return codes.get(job_id) or ExitCode.FAILURE


def _wait_for_children(context: Context, watch: _Watch, job_id: int, submitted: list[int]) -> bool:
    """Wait for the jobs ``job_id`` submitted; True if any of them failed."""
    if watch.as_json:
        _json_line(context, {"job": job_id, "event": "children", "jobs": submitted})
    else:
        jobs = formatting.count_of(len(submitted), "job")
        ids = ", ".join(str(child) for child in submitted)
        context.out(f"Job {job_id} submitted {jobs} ({ids}); waiting for them", flush=True)
    result = wait_for_jobs(
        context, submitted, children=True, parents=dict.fromkeys(submitted, job_id)
    )
    reasons = result.failures(context)
    for child in result.order:
        if watch.as_json:
            watch.end(result.statuses[child], reasons.get(child), child)
    report_failures(context, reasons, result.parents)
    return bool(reasons)


def cmd_watch(args: argparse.Namespace, context: Context) -> int:
    """``jobctl watch ID``."""
    return watch_job(context, args.job_id, children=args.children, as_json=args.output == "json")


class Progress:
    """The one-line ``17/40 finished, 2 failed`` on a terminal; silent elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream if stream.isatty() else None

    def show(self, finished: int, failed: int, total: int, submitted: int = 0) -> None:
        if self._stream is not None:
            line = f"{finished}/{total} finished, {failed} failed"
            if submitted:
                line += f" ({submitted} submitted by the jobs)"
            self._stream.write(f"\r{line}\x1b[K")
            self._stream.flush()

    def done(self) -> None:
        if self._stream is not None:
            self._stream.write("\n")
            self._stream.flush()


class WaitResult:
    """The jobs waited for, in order (children after the ones named), and how they ended."""

    def __init__(self, job_ids: Sequence[int], parents: dict[int, int] | None = None) -> None:
        self.order = list(job_ids)
        self.statuses: dict[int, Any] = {}
        self.parents: dict[int, int] = dict(parents or {})

    def ended(self, job_id: int) -> bool:
        return self.statuses.get(job_id) in ENDED

    def failed(self) -> list[int]:
        return [job_id for job_id in self.order if self.statuses[job_id] != Status.SUCCESS]

    def failures(self, context: Context) -> dict[int, str]:
        return failure_reasons(context, self.failed(), self.statuses)

    def failure_details(self, context: Context) -> tuple[dict[int, str], dict[int, int | None]]:
        return failure_details(context, self.failed(), self.statuses)

    def exit_code(self, codes: dict[int, int | None]) -> int:
        """0 if all succeeded; a lone job of one command gives its status; else 1."""
        failed = self.failed()
        if not failed:
            return ExitCode.OK
        if len(self.order) == 1:
            return codes.get(failed[0]) or ExitCode.FAILURE
        return ExitCode.FAILURE


def _add_children(context: Context, result: WaitResult, looked_at: set[int]) -> bool:
    """Add the jobs submitted by ended jobs not looked at yet; True if any were new."""
    ended = [job_id for job_id in result.order if result.ended(job_id) and job_id not in looked_at]
    looked_at.update(ended)
    new: list[int] = []
    for parent, kids in lookup.children(context.client, ended).items():
        for child in kids:
            if child not in result.parents and child not in result.order:
                result.parents[child] = parent
                new.append(child)
    if not new:
        return False
    result.order.extend(new)
    found = lookup.job_statuses(context.client, new)
    result.statuses.update({job_id: found[job_id] or LOST for job_id in new})
    return True


def wait_for_jobs(
    context: Context,
    job_ids: Sequence[int],
    *,
    children: bool = True,
    parents: dict[int, int] | None = None,
) -> WaitResult:
    """Block until every job (and, with ``children``, every job they submitted) has ended.

    Waits on the lowest unfinished job, then re-reads the status of all the
    rest in one call, so jobs ending out of order are counted as they go.
    Raises CommandFailed (NOT_FOUND) if a named job does not exist.
    """
    client = context.client
    result = WaitResult(job_ids, parents)
    result.statuses = lookup.job_statuses(client, job_ids)
    missing = [job_id for job_id in job_ids if result.statuses[job_id] is None]
    for job_id in missing[:-1]:
        context.err(lookup.not_found(job_id))
    if missing:
        raise CommandFailed(lookup.not_found(missing[-1]), ExitCode.NOT_FOUND)
    progress = Progress(context.stderr)
    looked_at: set[int] = set()
    while True:
        if children and _add_children(context, result, looked_at):
            continue
        ended = [result.statuses[job_id] for job_id in result.order if result.ended(job_id)]
        failed = sum(status != Status.SUCCESS for status in ended)
        progress.show(len(ended), failed, len(result.order), len(result.order) - len(job_ids))
        pending = [job_id for job_id in result.order if not result.ended(job_id)]
        if not pending:
            break
        first, rest = pending[0], pending[1:]
        try:
            result.statuses[first] = client.wait_for_job(first)
        except errors.JobLost:
            result.statuses[first] = LOST
        if rest:  # a job the query no longer sees keeps its last status
            current = lookup.job_statuses(client, rest)
            result.statuses.update({job_id: current[job_id] for job_id in rest if current[job_id]})
    progress.done()
    return result


def wait_and_report(context: Context, job_ids: Sequence[int], *, children: bool) -> int:
    """Wait for jobs as ``wait`` does, report the failures; the exit status of ``wait``."""
    result = wait_for_jobs(context, job_ids, children=children)
    reasons, codes = result.failure_details(context)
    report_failures(context, reasons, result.parents)
    return result.exit_code(codes)


def cmd_wait(args: argparse.Namespace, context: Context) -> int:
    """``jobctl wait ID...``: 0 if all succeeded, else 1 with the reasons on stderr.

    For one job of a single command, that command's exit status instead of 1.
    """
    if args.output != "json":
        return wait_and_report(context, unique(args.job_ids), children=args.children)
    from jobqueue.cli.cmd_query import print_json

    result = wait_for_jobs(context, unique(args.job_ids), children=args.children)
    reasons, codes = result.failure_details(context)
    print_json(
        context,
        [
            {
                "id": job_id,
                "status": result.statuses[job_id],
                "submitted_by": result.parents.get(job_id),
                "error": reasons.get(job_id),
            }
            for job_id in result.order
        ],
    )
    report_failures(context, reasons, result.parents)
    return result.exit_code(codes)
