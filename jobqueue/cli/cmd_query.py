"""Commands that read: ``list``, ``list-fields``, ``info`` and ``locks``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from jobqueue.cli import formatting, listing, lookup, selection
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LOCK_FIELDS = ["name", "mode", "owner", "pending"]
LOCK_HEADERS = ["Name", "Mode", "Owner", "Pending"]


def parse_fields(spec: str | None) -> list[str]:
    """Fields named by ``-o``: ``a,b`` replaces the default, ``+a,b`` extends it."""
    if not spec:
        return list(listing.DEFAULT_FIELDS)
    names = [name.strip() for name in spec.removeprefix("+").split(",") if name.strip()]
    if spec.startswith("+"):
        return selection.unique(listing.DEFAULT_FIELDS + names)
    if not names:
        raise CommandFailed("No fields given to -o", ExitCode.USAGE)
    return selection.unique(names)


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


def print_json(context: Context, value: Any) -> None:
    import json

    context.out(json.dumps(value, indent=2))


def refuse_unknown(unknown: Sequence[str]) -> None:
    """Raise the UNKNOWN_FIELD failure for ``unknown`` field names, if any."""
    if unknown:
        raise CommandFailed(
            f"Unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
            " 'jobctl list-fields' shows the fields",
            ExitCode.UNKNOWN_FIELD,
        )


def _missing_ids(
    context: Context, job_ids: list[int], rows: list[listing.Row], filtered: bool
) -> list[int]:
    """The named ids without a row that do not exist (not merely filtered out)."""
    found = {listing.value(row, "id") for row in rows}
    absent = [job_id for job_id in job_ids if job_id not in found]
    if absent and filtered:
        statuses = lookup.job_statuses(context.client, absent)
        absent = [job_id for job_id in absent if statuses[job_id] is None]
    return absent


def _command_lines(context: Context, rows: list[listing.Row]) -> dict[int, list[str]]:
    """Summaries showing command lines, for the jobs with command opcodes."""
    summaries = {
        listing.value(row, "id"): listing.value(row, "summary")
        for row in rows
        if listing.needs_command_lines(row)
    }
    if not summaries:
        return {}
    # QueryJobs, not Query: the daemon matches a Query filter of N ids against
    # each of the N jobs, which costs seconds for a few thousand.
    found = {}
    for job_id, ops in context.client.query_jobs(list(summaries), ["id", "ops"]):
        entries = listing.command_summary(ops, summaries.get(job_id))
        if job_id is not None and entries is not None:
            found[int(job_id)] = entries
    return found


def cmd_list(args: argparse.Namespace, context: Context) -> int:
    """``jobctl list``: one row per job; exit 14 for an unknown field, 7 for an unknown id."""
    fields = parse_fields(args.fields)
    job_ids = selection.unique(args.job_ids)
    statuses = list_statuses(args)
    wanted = listing.daemon_fields(fields, bool(job_ids) or "summary" in fields)
    if job_ids:
        wanted = selection.unique([*wanted, "status"])  # an unknown id's row has no status
    answer = query_jobs(context, wanted, selection.job_filter(job_ids, statuses), args.archived)
    definitions, rows = listing.rows_of(answer)
    refuse_unknown(listing.unknown_fields(definitions))
    missing: list[int] = []
    if job_ids:
        rows = [row for row in rows if listing.value(row, "status") is not None]
        missing = _missing_ids(context, job_ids, rows, bool(statuses))
    now = time.time()
    if args.output == "json":
        print_json(context, listing.objects(fields, rows, now))
    else:
        summaries = _command_lines(context, rows) if "summary" in fields else {}
        terminal = context.is_terminal()
        lines = listing.table(
            fields,
            definitions,
            rows,
            now=now,
            summaries=summaries,
            headers=not args.no_headers,
            separator=args.separator,
            width=context.terminal_width() if terminal else None,
            coloured=terminal and context.colours(),
        )
        if lines:
            context.out("\n".join(lines))
    for job_id in missing:
        context.err(lookup.not_found(job_id))
    return lookup.exit_code(ExitCode.OK, missing)


def cmd_list_fields(args: argparse.Namespace, context: Context) -> int:
    """``jobctl list-fields [FIELD...]``: name, title and description of job fields."""
    names = selection.unique(args.names)
    asked = [name for name in names if name not in listing.CLIENT_FIELDS]
    fields = (
        context.client.query_fields("job", asked or None)["fields"] if asked or not names else []
    )
    by_name = {field["name"]: field for field in fields}
    by_name.update(listing.CLIENT_FIELDS)
    if names:
        fields = [by_name[name] for name in names]
    else:
        fields = sorted(by_name.values(), key=lambda field: field["name"])
    refuse_unknown([field["name"] for field in fields if field.get("kind") == "unknown"])
    if args.output == "json":
        print_json(context, fields)
    else:
        rows = [[field["name"], field.get("title", ""), field.get("doc", "")] for field in fields]
        headers = None if args.no_headers else ["Name", "Title", "Description"]
        for line in formatting.render_table(headers, rows, [False] * 3, args.separator):
            context.out(line)
    return ExitCode.OK


def fetch_jobs(context: Context, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The ``info`` fields of each job that exists, live or archived.

    QueryJobs rather than Query with an id filter, which the daemon matches
    against every job named (slow for many ids).
    """
    from jobqueue.cli import jobinfo

    fields = jobinfo.INFO_FIELDS
    rows = context.client.query_jobs(list(job_ids), fields) if job_ids else []
    found: dict[int, dict[str, Any]] = {}
    for row in rows:
        job = dict(zip(fields, row, strict=True))
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
        found = [jobs[job_id] for job_id in job_ids if job_id in jobs]
        print_json(
            context,
            [
                {name: formatting.json_value(name, value) for name, value in job.items()}
                for job in found
            ],
        )
    else:
        for job_id in job_ids:
            for line in jobinfo.job_lines(jobs[job_id]) if job_id in jobs else []:
                context.out(line)
    for job_id in missing:
        context.err(lookup.not_found(job_id))
    return lookup.exit_code(ExitCode.OK, missing)


def cmd_locks(args: argparse.Namespace, context: Context) -> int:
    """``jobctl locks``: every lock, its mode, owners and waiters."""
    answer = context.client.query("lock", LOCK_FIELDS, None)
    if args.output == "json":
        print_json(context, formatting.query_to_objects(answer))
        return ExitCode.OK
    rows = [formatting.format_lock_row(row) for row in answer["data"]]
    headers = None if args.no_headers else LOCK_HEADERS
    for line in formatting.render_table(headers, rows, [False] * 4, args.separator):
        context.out(line)
    return ExitCode.OK
