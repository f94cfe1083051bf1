"""Commands that read: ``list``, ``list-fields``, ``info`` and ``locks``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobqueue.cli import formatting, selection
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_FIELDS = ["id", "status", "summary"]
LOCK_FIELDS = ["name", "mode", "owner", "pending"]
LOCK_HEADERS = ["Name", "Mode", "Owner", "Pending"]


def parse_fields(spec: str | None) -> list[str]:
    """Fields named by ``-o``: ``a,b`` replaces the default, ``+a,b`` extends it."""
    if not spec:
        return list(DEFAULT_FIELDS)
    names = [name.strip() for name in spec.removeprefix("+").split(",") if name.strip()]
    if spec.startswith("+"):
        return selection.unique(DEFAULT_FIELDS + names)
    if not names:
        raise CommandFailed("No fields given to -o", ExitCode.USAGE)
    return names


def list_statuses(args: argparse.Namespace) -> list[str]:
    """The statuses selected by ``--status`` and the shorthand flags, together."""
    statuses = list(args.status)
    for flag, members in (
        ("pending", selection.PENDING),
        ("running", selection.RUNNING),
        ("error", selection.ERROR),
        ("finished", selection.FINISHED),
    ):
        if getattr(args, flag):
            statuses.extend(members)
    return selection.unique(statuses)


def query_jobs(
    context: Context, fields: list[str], qfilter: selection.Filter, archived: bool
) -> dict[str, Any]:
    """``Query("job", ...)``; with ``archived`` the fourth argument asks for archived jobs too."""
    if archived:
        answer: dict[str, Any] = context.client.call("Query", "job", fields, qfilter, True)
        return answer
    return context.client.query("job", fields, qfilter)


def _print_json(context: Context, value: Any) -> None:
    import json

    context.out(json.dumps(value, indent=2))


def _warn_unknown(context: Context, unknown: Sequence[str]) -> int:
    """Warn about unknown fields; return the exit code that goes with them."""
    if not unknown:
        return ExitCode.OK
    context.err(f"Warning: Queried for unknown fields {', '.join(unknown)}")
    return ExitCode.UNKNOWN_FIELD


def cmd_list(args: argparse.Namespace, context: Context) -> int:
    """``jobctl list``: one row per job; exit 14 if a field was unknown."""
    fields = parse_fields(args.fields)
    qfilter = selection.job_filter(args.job_ids, list_statuses(args))
    answer = query_jobs(context, fields, qfilter, args.archived)
    lines, unknown = formatting.query_to_table(answer, args.separator, not args.no_headers)
    if args.output == "json":
        _print_json(context, formatting.query_to_objects(answer))
    elif lines:
        context.out("\n".join(lines))
    return _warn_unknown(context, unknown)


def cmd_list_fields(args: argparse.Namespace, context: Context) -> int:
    """``jobctl list-fields [FIELD...]``: name, title and description of job fields."""
    fields = context.client.query_fields("job", args.names or None)["fields"]
    unknown = [field["name"] for field in fields if field.get("kind") == formatting.KIND_UNKNOWN]
    if args.output == "json":
        _print_json(context, fields)
    else:
        rows = [[field["name"], field.get("title", ""), field.get("doc", "")] for field in fields]
        headers = None if args.no_headers else ["Name", "Title", "Description"]
        for line in formatting.render_table(headers, rows, [False] * 3, args.separator):
            context.out(line)
    return _warn_unknown(context, unknown)


def fetch_jobs(context: Context, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The ``info`` fields of each job that exists, live ones first, then archived."""
    from jobqueue.cli import jobinfo

    found: dict[int, dict[str, Any]] = {}
    for archived in (False, True):
        missing = [job_id for job_id in job_ids if job_id not in found]
        if not missing:
            break
        answer = query_jobs(context, jobinfo.INFO_FIELDS, selection.any_of("id", missing), archived)
        for job in formatting.query_to_objects(answer):
            if job.get("id") is not None and job.get("status") is not None:
                found[int(job["id"])] = job
    return found


def cmd_info(args: argparse.Namespace, context: Context) -> int:
    """``jobctl info ID...``; exit 7 if a job does not exist."""
    from jobqueue.cli import jobinfo

    job_ids = selection.unique(args.job_ids)
    jobs = fetch_jobs(context, job_ids)
    missing = [job_id for job_id in job_ids if job_id not in jobs]
    if args.output == "json":
        _print_json(context, [jobs[job_id] for job_id in job_ids if job_id in jobs])
    else:
        for job_id in job_ids:
            for line in jobinfo.job_lines(jobs[job_id]) if job_id in jobs else []:
                context.out(line)
    for job_id in missing:
        context.err(f"Job {job_id} not found")
    return ExitCode.NOT_FOUND if missing else ExitCode.OK


def cmd_locks(args: argparse.Namespace, context: Context) -> int:
    """``jobctl locks``: every lock, its mode, owners and waiters."""
    answer = context.client.query("lock", LOCK_FIELDS, None)
    rows = [formatting.format_lock_row(row) for row in answer["data"]]
    headers = None if args.no_headers else LOCK_HEADERS
    for line in formatting.render_table(headers, rows, [False] * 4, args.separator):
        context.out(line)
    return ExitCode.OK
