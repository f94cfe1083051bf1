"""Commands that change jobs or the queue: ``cancel``, ``change-priority``,
``archive``, ``autoarchive`` and ``queue``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from jobqueue.cli import formatting, selection
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode
from jobqueue.constants import PRIO_NAMES

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jobqueue.luxi.client import Client

#: Seconds the daemon may spend in one AutoArchiveJobs call.
AUTOARCHIVE_TIMEOUT = 30


def _selected_statuses(args: argparse.Namespace) -> tuple[str, ...]:
    if args.pending:
        return selection.PENDING
    if args.queued:
        return selection.QUEUED
    if args.waiting:
        return selection.WAITING
    return ()


def select_jobs(args: argparse.Namespace, context: Context) -> tuple[list[int], list[str]]:
    """The jobs named by ``ID...`` or a status flag; the second list holds a
    description of each for a bulk selection (empty for explicit ids)."""
    statuses = _selected_statuses(args)
    if args.job_ids and statuses:
        raise CommandFailed("Give either job ids or a status option, not both", ExitCode.USAGE)
    if args.job_ids:
        return selection.unique(args.job_ids), []
    if not statuses:
        raise CommandFailed(
            "No jobs selected: give job ids or --pending, --queued or --waiting", ExitCode.USAGE
        )
    answer = context.client.query("job", ["id", "summary"], selection.any_of("status", statuses))
    rows = formatting.query_to_objects(answer)
    job_ids = [int(row["id"]) for row in rows if row["id"] is not None]
    descriptions = [
        f"{row['id']} {formatting.format_value('summary', row['summary'])}" for row in rows
    ]
    return job_ids, descriptions


def confirm(context: Context, question: str, details: list[str]) -> bool:
    """Show ``details`` and ask ``question`` on stderr; True only for y or yes."""
    for line in details:
        context.err(f"  {line}")
    context.stderr.write(f"{question} [y/N] ")
    context.stderr.flush()
    answer = context.stdin.readline()
    if not answer.endswith("\n"):
        context.err("")
    return answer.strip().lower() in ("y", "yes")


def _apply_each(context: Context, job_ids: list[int], action: Callable[[int], Any]) -> int:
    """Call ``action`` per job; it returns ``[success, message]``; exit 1 if any failed."""
    code = ExitCode.OK
    for job_id in job_ids:
        success, message = action(job_id)
        if success:
            context.out(str(message))
        else:
            context.err(str(message))
            code = ExitCode.FAILURE
    return code


def cmd_cancel(args: argparse.Namespace, context: Context) -> int:
    """``jobctl cancel [--kill] (ID... | --pending | --queued | --waiting) [--force]``."""
    job_ids, descriptions = select_jobs(args, context)
    if not job_ids:
        context.out("No jobs to cancel")
        return ExitCode.OK
    question = f"Cancel {len(job_ids)} jobs?"
    if descriptions and not args.force and not confirm(context, question, descriptions):
        raise CommandFailed("Not canceling any job", ExitCode.DECLINED)
    return _apply_each(
        context, job_ids, lambda job_id: context.client.cancel_job(job_id, args.kill)
    )


def cmd_change_priority(args: argparse.Namespace, context: Context) -> int:
    """``jobctl change-priority --priority P (ID... | --pending | --queued | --waiting)``."""
    priority = PRIO_NAMES[args.priority]
    job_ids, _ = select_jobs(args, context)
    if not job_ids:
        context.out("No jobs to change")
        return ExitCode.OK
    client = context.client
    return _apply_each(
        context, job_ids, lambda job_id: client.change_job_priority(job_id, priority)
    )


def cmd_archive(args: argparse.Namespace, context: Context) -> int:
    """``jobctl archive ID...``; exit 1 if a job could not be archived."""
    code = ExitCode.OK
    for job_id in selection.unique(args.job_ids):
        if not context.client.archive_job(job_id):
            context.err(f"Failed to archive job with ID '{job_id}'")
            code = ExitCode.FAILURE
    return code


def auto_archive(client: Client, age: int, timeout: float = AUTOARCHIVE_TIMEOUT) -> tuple[int, int]:
    """Call AutoArchiveJobs until no job is left unchecked; return (archived, left).

    Stops early, with ``left`` > 0, when a call archives nothing and checks
    no more jobs than the one before (the daemon is not making progress).
    """
    total, previous_left = 0, None
    while True:
        archived, left = client.auto_archive_jobs(age, timeout)
        total += archived
        stalled = previous_left is not None and archived == 0 and left >= previous_left
        if left <= 0 or stalled:
            return total, max(left, 0)
        previous_left = left


def cmd_autoarchive(args: argparse.Namespace, context: Context) -> int:
    """``jobctl autoarchive AGE|all``."""
    archived, left = auto_archive(context.client, args.age)
    context.out(f"Archived {archived} jobs, {left} unchecked left")
    return ExitCode.OK


def cmd_queue(args: argparse.Namespace, context: Context) -> int:
    """``jobctl queue info|drain|undrain``."""
    client = context.client
    if args.action == "info":
        drained, version = client.query_config_values(["drain_flag", "version"])
        context.out(f"The drain flag is {'set' if drained else 'unset'}")
        if version is not None:
            context.out(f"Daemon version: {version}")
    else:
        client.set_drain_flag(args.action == "drain")
    return ExitCode.OK
