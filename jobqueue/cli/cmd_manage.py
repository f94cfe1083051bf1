"""Commands that change jobs or the queue: ``cancel``, ``change-priority``,
``archive``, ``autoarchive`` and ``queue`` (its pause, continue and
set-workers are in ``cmd_controls``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from jobqueue.cli import formatting, lookup, selection
from jobqueue.cli.configvalues import config_values
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode
from jobqueue.constants import FINALIZED, PRIO_NAMES, Status

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jobqueue.luxi.client import Client

#: Seconds the daemon may spend in one AutoArchiveJobs call.
AUTOARCHIVE_TIMEOUT = 30
#: What ``queue info`` shows: (setting, label) in order.
QUEUE_INFO = (
    ("drain_flag", None),
    ("version", "Daemon version"),
    ("live_jobs", "Live jobs"),
    ("max_jobs", "Most live jobs allowed"),
    ("live_opcodes", "Live opcodes"),
    ("max_opcodes", "Most live opcodes allowed"),
    ("live_opcode_bytes", "Bytes of their inputs"),
    ("max_opcode_bytes", "Most input bytes allowed"),
    ("max_running_jobs", "Workers"),
    ("busy_workers", None),  # shown with the workers
    ("filters", "Filter rules"),
    ("held_jobs", None),
    ("role", "This daemon"),
    ("master", "Master"),
)


def _selected_statuses(args: argparse.Namespace) -> tuple[str, ...]:
    if args.pending:
        return selection.PENDING
    if args.queued:
        return selection.QUEUED
    if args.waiting:
        return selection.WAITING
    return ()


class Selection:
    """The jobs a command acts on: their ids and statuses, and the named ids not found.

    ``descriptions`` describes each job of a bulk selection, for the prompt.
    """

    def __init__(self, statuses: dict[int, Any], missing: list[int], descriptions: list[str]):
        self.statuses = statuses
        self.job_ids = list(statuses)
        self.missing = missing
        self.descriptions = descriptions


def select_jobs(args: argparse.Namespace, context: Context) -> Selection:
    """The jobs named by ``ID...`` (unknown ones reported) or by a status flag."""
    statuses = _selected_statuses(args)
    if args.job_ids and statuses:
        raise CommandFailed("Give either job ids or a status option, not both", ExitCode.USAGE)
    if args.job_ids:
        known, missing = lookup.known_jobs(context, selection.unique(args.job_ids))
        return Selection(known, missing, [])
    if not statuses:
        raise CommandFailed(
            "No jobs selected: give job ids or --pending, --queued or --waiting", ExitCode.USAGE
        )
    fields = ["id", "status", "summary"]
    answer = context.client.query("job", fields, selection.any_of("status", statuses))
    rows = [row for row in formatting.query_to_objects(answer) if row["id"] is not None]
    descriptions = [
        f"{row['id']} {formatting.format_value('summary', row['summary'])}" for row in rows
    ]
    return Selection({int(row["id"]): row["status"] for row in rows}, [], descriptions)


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


def _status(client: Client, job_id: int) -> Any:
    return lookup.job_statuses(client, [job_id])[job_id]


def cmd_cancel(args: argparse.Namespace, context: Context) -> int:
    """``jobctl cancel [--kill] (ID... | --pending | --queued | --waiting) [--force]``."""
    chosen = select_jobs(args, context)
    if not chosen.job_ids:
        if not chosen.missing:
            context.out("No jobs to cancel")
        return lookup.exit_code(ExitCode.OK, chosen.missing)
    question = f"Cancel {formatting.count_of(len(chosen.job_ids), 'job')}?"
    if (
        chosen.descriptions
        and not args.force
        and not confirm(context, question, chosen.descriptions)
    ):
        raise CommandFailed("Not canceling any job", ExitCode.DECLINED)
    client = context.client

    def cancel(job_id: int) -> list[Any]:
        success, message = client.cancel_job(job_id, args.kill)
        running = not success and not args.kill and _status(client, job_id) == Status.RUNNING
        if running:
            message = f"Job {job_id} is running; 'jobctl cancel --kill {job_id}' stops it"
        return [success, message]

    return lookup.exit_code(_apply_each(context, chosen.job_ids, cancel), chosen.missing)


def cmd_change_priority(args: argparse.Namespace, context: Context) -> int:
    """``jobctl change-priority --priority P (ID... | --pending | --queued | --waiting)``."""
    priority = PRIO_NAMES[args.priority]
    chosen = select_jobs(args, context)
    if not chosen.job_ids:
        if not chosen.missing:
            context.out("No jobs to change")
        return lookup.exit_code(ExitCode.OK, chosen.missing)
    client = context.client
    code = _apply_each(
        context, chosen.job_ids, lambda job_id: client.change_job_priority(job_id, priority)
    )
    return lookup.exit_code(code, chosen.missing)


def _is_live(client: Client, job_id: int) -> bool:
    """Whether ``job_id`` is in the live queue (not archived).

    A filter naming nothing but ids also finds archived jobs; wrapped in
    ``&`` it is evaluated over the live jobs only.
    """
    answer = client.query("job", ["id"], ["&", ["=", "id", job_id]])
    return any(row[0][0] == formatting.RS_NORMAL for row in answer["data"])


def _why_not_archived(client: Client, job_id: int, status: Any) -> str:
    """Why ArchiveJob refused a job, and what to do about it."""
    if status not in FINALIZED:
        return (
            f"Job {job_id} has not finished (status {status}), so it cannot be archived yet;"
            f" wait for it ('jobctl wait {job_id}') or stop it ('jobctl cancel --kill {job_id}')"
        )
    if not _is_live(client, job_id):
        return f"Job {job_id} is already archived"
    return f"Job {job_id} could not be archived (it is just ending); try again"


def cmd_archive(args: argparse.Namespace, context: Context) -> int:
    """``jobctl archive ID...``; exit 1 if a job could not be archived, 7 if unknown."""
    known, missing = lookup.known_jobs(context, selection.unique(args.job_ids))
    code = ExitCode.OK
    client = context.client
    for job_id, status in known.items():
        if status in FINALIZED and client.archive_job(job_id):
            continue
        context.err(_why_not_archived(client, job_id, status))
        code = ExitCode.FAILURE
    return lookup.exit_code(code, missing)


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


def _print_json(context: Context, value: Any) -> None:
    import json

    context.out(json.dumps(value, indent=2))


def cmd_autoarchive(args: argparse.Namespace, context: Context) -> int:
    """``jobctl autoarchive AGE|all``."""
    archived, left = auto_archive(context.client, args.age)
    if args.output == "json":
        _print_json(context, {"archived": archived, "unchecked": left})
    else:
        context.out(f"Archived {archived} jobs, {left} unchecked left")
    return ExitCode.OK


def cmd_queue(args: argparse.Namespace, context: Context) -> int:
    """``jobctl queue info|drain|undrain|pause|continue|set-workers N``."""
    from jobqueue.cli import cmd_controls

    client = context.client
    if args.count is not None and args.action != "set-workers":
        raise CommandFailed(f"queue {args.action} takes no number", ExitCode.USAGE)
    if args.action == "pause":
        return cmd_controls.queue_pause(args, context)
    if args.action == "continue":
        return cmd_controls.queue_continue(context)
    if args.action == "set-workers":
        return cmd_controls.queue_set_workers(args, context)
    if args.action != "info":
        client.set_drain_flag(args.action == "drain")
        return ExitCode.OK
    values = config_values(client, [name for name, _ in QUEUE_INFO])
    paused = cmd_controls.pause_rules(cmd_controls.fetch_rules(context))
    if args.output == "json":
        _print_json(context, {**values, "paused_by": paused})
        return ExitCode.OK
    context.out(f"The drain flag is {'set' if values['drain_flag'] else 'unset'}")
    context.out(f"Paused: yes (filter rule {paused[0]})" if paused else "Paused: no")
    for name, label in QUEUE_INFO:
        if label is not None and values[name] is not None:
            busy = values["busy_workers"] if name == "max_running_jobs" else None
            context.out(f"{label}: {values[name]}" + ("" if busy is None else f" ({busy} busy)"))
    held = values.get("held_jobs") or {}
    if any(held.values()):
        counts = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in held.items())
        context.out(f"Held jobs: {counts}")
    return ExitCode.OK
