"""What runs when: ``filter``, ``schedule``, ``queue pause|continue|set-workers``,
and the job options of the commands that submit (``--at``, ``--retries`` ...)."""

from __future__ import annotations

import argparse
import time

from jobqueue.cli import formatting
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The reason-trail source of the rule ``queue pause`` adds (and ``continue`` deletes).
PAUSE_SOURCE = "jobctl:queue-pause"
#: What ``queue pause`` holds: every job submitted after the rule (its watermark).
NEW_JOBS = [["jobid", [">", "id", "watermark"]]]
#: The reason-trail source of the rules ``filter add`` adds.
FILTER_SOURCE = "jobctl:filter"
FILTER_FIELDS = ["uuid", "priority", "watermark", "action", "predicates", "reason_trail"]
LIST_HEADERS = ["UUID", "Priority", "Watermark", "Action", "Predicates"]


def parse_at(text: str) -> float:
    """``--at``: a time as people write it, as seconds since the epoch."""
    from jobqueue.cli.timespec import parse_time

    return parse_time(text, time.time())


def start_time(args: argparse.Namespace) -> float | None:
    """The start time given by ``--at`` or ``--in``, if any."""
    if getattr(args, "at", None) is not None:
        return float(args.at)
    if getattr(args, "in_", None) is not None:
        return time.time() + float(args.in_)
    return None


def job_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The job options (``SubmitJob``'s second argument) the command line asks for."""
    options: dict[str, Any] = {}
    start = start_time(args)
    if start is not None:
        options["start_at"] = start
    retry = {
        "retry_delay": getattr(args, "retry_delay", None),
        "retry_backoff": getattr(args, "retry_backoff", None),
        "retry_max_delay": getattr(args, "retry_max_delay", None),
    }
    given = [key for key, value in retry.items() if value is not None]
    if getattr(args, "retries", None):
        options["retries"] = args.retries
        options.update({key: retry[key] for key in given})
    elif given:
        option = "--" + given[0].replace("_", "-")
        raise CommandFailed(f"{option} needs --retries", ExitCode.USAGE)
    if getattr(args, "job_timeout", None) is not None:
        options["timeout"] = args.job_timeout
    return options or None


# -- schedule ---------------------------------------------------------------------
def cmd_schedule(args: argparse.Namespace, context: Context) -> int:
    """``jobctl schedule ID... (--at TIME | --in DURATION | --now)``."""
    start = None if args.now else start_time(args)
    code = ExitCode.OK
    for job_id in args.job_ids:
        success, message = context.client.change_job_start_time(job_id, start)
        if success:
            when = "as soon as a worker is free" if start is None else formatting.format_time(start)
            context.out(f"Job {job_id} starts {'at ' if start else ''}{when}")
        else:
            context.err(str(message))
            code = ExitCode.FAILURE
    return code


# -- filter rules -----------------------------------------------------------------
def fetch_rules(context: Context) -> list[dict[str, Any]]:
    """Every filter rule, in evaluation order, as ``{field: value}``."""
    answer = context.client.query("filter", FILTER_FIELDS, None)
    return formatting.query_to_objects(answer)


def resolve_uuid(rules: list[dict[str, Any]], given: str) -> str:
    """The uuid of the one rule whose uuid starts with ``given``; CommandFailed if not one."""
    matches = [rule["uuid"] for rule in rules if str(rule["uuid"]).startswith(given.lower())]
    if len(matches) == 1:
        return str(matches[0])
    if not matches:
        raise CommandFailed(f"No filter rule {given}", ExitCode.NOT_FOUND)
    raise CommandFailed(f"{given} names {len(matches)} filter rules; give more of the uuid")


def _expression(kind: str, text: str) -> Any:
    """A predicate's expression: JSON, or a bare word for the common case."""
    import json

    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError as err:
            raise CommandFailed(f"Invalid --{kind} {text}: {err}", ExitCode.USAGE) from None
    if kind == "opcode":
        return ["==", "OP_ID", text]
    if kind == "reason":
        return ["==", "source", text]
    raise CommandFailed(f'--{kind} needs a JSON filter, such as \'[">", "id", 5]\'', ExitCode.USAGE)


def _trail(source: str, comment: str | None, default: str) -> list[Any]:
    return [[source, comment or default, time.time_ns()]]


def describe_action(action: Any) -> str:
    if isinstance(action, list) and len(action) == 2:
        return f"{action[0]} {action[1]}"
    return str(action)


def _add(args: argparse.Namespace, context: Context) -> int:
    if args.rule_action is None and args.rate_limit is None:
        raise CommandFailed("filter add needs --action or --rate-limit", ExitCode.USAGE)
    action: Any = args.rule_action or ["RATE_LIMIT", args.rate_limit]
    predicates = [
        [kind, _expression(kind, text)]
        for kind in ("jobid", "opcode", "reason")
        for text in getattr(args, kind)
    ]
    uuid = None
    if args.uuid:
        uuid = resolve_uuid(fetch_rules(context), args.uuid)
    trail = _trail(FILTER_SOURCE, args.comment, "added with jobctl filter add")
    context.out(context.client.replace_filter(uuid, args.priority, predicates, action, trail))
    return ExitCode.OK


def _list(args: argparse.Namespace, context: Context) -> int:
    rules = fetch_rules(context)
    if args.output == "json":
        from jobqueue.cli.cmd_query import print_json

        print_json(context, rules)
        return ExitCode.OK
    rows = [
        [
            str(rule["uuid"]),
            str(rule["priority"]),
            str(rule["watermark"]),
            describe_action(rule["action"]),
            formatting.compact_json(rule["predicates"]) if rule["predicates"] else "(every job)",
        ]
        for rule in rules
    ]
    headers = None if args.no_headers else LIST_HEADERS
    numeric = [False, True, True, False, False]
    for line in formatting.render_table(headers, rows, numeric, args.separator):
        context.out(line)
    return ExitCode.OK


def rule_lines(rule: dict[str, Any]) -> list[str]:
    """The report of one rule for ``filter info``."""
    lines = [
        f"Filter rule {rule['uuid']}",
        f"  Priority: {rule['priority']}",
        f"  Watermark: {rule['watermark']}",
        f"  Action: {describe_action(rule['action'])}",
        "  Predicates:" if rule["predicates"] else "  Predicates: none (every job)",
    ]
    lines.extend(
        f"    {kind}: {formatting.compact_json(expr)}" for kind, expr in rule["predicates"]
    )
    lines.append("  Reason trail:")
    for source, reason, stamp in rule["reason_trail"] or []:
        when = formatting.format_time(stamp / 1e9) if isinstance(stamp, int) else "?"
        lines.append(f"    {when} {source}: {reason}")
    return lines


def _info(args: argparse.Namespace, context: Context) -> int:
    rules = fetch_rules(context)
    chosen = [resolve_uuid(rules, given) for given in args.uuids] if args.uuids else None
    shown = [rule for rule in rules if chosen is None or rule["uuid"] in chosen]
    if args.output == "json":
        from jobqueue.cli.cmd_query import print_json

        print_json(context, shown)
        return ExitCode.OK
    for rule in shown:
        for line in rule_lines(rule):
            context.out(line)
    return ExitCode.OK


def _delete(args: argparse.Namespace, context: Context) -> int:
    if not args.uuids:
        raise CommandFailed("filter delete needs the uuids of the rules", ExitCode.USAGE)
    rules = fetch_rules(context)
    for uuid in [resolve_uuid(rules, given) for given in args.uuids]:
        context.client.delete_filter(uuid)
        context.out(f"Filter rule {uuid} deleted")
    return ExitCode.OK


def cmd_filter(args: argparse.Namespace, context: Context) -> int:
    """``jobctl filter add|list|info|delete``."""
    if args.uuids and args.action in ("add", "list"):
        raise CommandFailed(f"filter {args.action} takes no uuids", ExitCode.USAGE)
    actions = {"add": _add, "list": _list, "info": _info, "delete": _delete}
    return actions[args.action](args, context)


# -- the queue as a whole -------------------------------------------------------------
def pause_rules(rules: list[dict[str, Any]]) -> list[str]:
    """The uuids of the rules ``queue pause`` added."""
    return [
        str(rule["uuid"])
        for rule in rules
        if rule["action"] == "PAUSE"
        and any(entry[0] == PAUSE_SOURCE for entry in rule["reason_trail"] or [])
    ]


def queue_pause(args: argparse.Namespace, context: Context) -> int:
    """A PAUSE rule, first of all, for every job submitted from now on: a soft drain."""
    existing = pause_rules(fetch_rules(context))
    if existing:
        context.out(f"The queue is paused already (filter rule {existing[0]})")
        return ExitCode.OK
    trail = _trail(PAUSE_SOURCE, args.comment, "paused with jobctl queue pause")
    uuid = context.client.replace_filter(None, 0, NEW_JOBS, "PAUSE", trail)
    context.out(
        f"Queue paused (filter rule {uuid}): the jobs there are run on, new ones wait;"
        " 'jobctl queue continue' starts them"
    )
    return ExitCode.OK


def queue_continue(context: Context) -> int:
    existing = pause_rules(fetch_rules(context))
    for uuid in existing:
        context.client.delete_filter(uuid)
    if existing:
        context.out(f"Queue continues (filter rule {', '.join(existing)} deleted)")
    else:
        context.out("The queue was not paused")
    return ExitCode.OK


def queue_set_workers(args: argparse.Namespace, context: Context) -> int:
    if args.count is None:
        raise CommandFailed("queue set-workers needs the number of workers", ExitCode.USAGE)
    context.client.set_max_running_jobs(args.count)
    context.out(f"Workers: {args.count}")
    return ExitCode.OK
