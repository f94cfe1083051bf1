"""The arguments of the commands that control what runs when: queue, filter
and schedule."""

from __future__ import annotations

import argparse

from jobqueue.cli.args_common import AT_TIME, COUNT, DURATION, JOB_ID, output_format

QUEUE_ACTIONS = ("info", "drain", "undrain", "pause", "continue", "set-workers")
FILTER_ACTIONS = ("add", "list", "info", "delete")
RULE_ACTIONS = ("ACCEPT", "PAUSE", "REJECT", "CONTINUE")


def add_queue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=QUEUE_ACTIONS,
        help="info: show the queue; drain/undrain: refuse new jobs or not; pause/continue:"
        " start no new job or opcode, or again; set-workers N: run N jobs at once",
    )
    parser.add_argument("count", metavar="N", nargs="?", type=COUNT, help="for set-workers")
    parser.add_argument(
        "--comment", help="why the queue is paused (kept in the filter rule's reason trail)"
    )
    output_format(parser, ("text", "json"))


def add_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=FILTER_ACTIONS, help="what to do")
    parser.add_argument(
        "uuids", metavar="UUID", nargs="*", help="rules to show or delete (a unique prefix will do)"
    )
    group = parser.add_argument_group("rule options (add)")
    group.add_argument("--uuid", help="replace the rule with this uuid (a prefix will do)")
    group.add_argument(
        "--priority",
        type=COUNT,
        default=0,
        metavar="N",
        help="rules are evaluated lowest priority first (default 0)",
    )
    what = group.add_mutually_exclusive_group()
    what.add_argument("--action", dest="rule_action", choices=RULE_ACTIONS, help="the action")
    what.add_argument(
        "--rate-limit", type=COUNT, metavar="N", help="the action: at most N matching jobs at once"
    )
    for kind, example in (
        ("jobid", '\'[">", "id", "watermark"]\''),
        ("opcode", 'OP_COMMAND_RUN or \'["=~", "argv", "backup"]\''),
        ("reason", 'gnt:client:jobctl or \'["==", "reason", "nightly"]\''),
    ):
        group.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            metavar="EXPR",
            help=f"match jobs by {kind}, e.g. {example}; repeatable (all must match)",
        )
    group.add_argument("--comment", help="why the rule exists (kept in its reason trail)")
    parser.add_argument("--no-headers", action="store_true", help="list: no column headers")
    parser.add_argument("--separator", metavar="S", help="list: join columns with S, unpadded")
    parser.add_argument(
        "--output",
        choices=("table", "text", "json"),
        help="output format: list is a table, info text, by default; json for both",
    )


def add_schedule(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="queued jobs")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", metavar="TIME", type=AT_TIME, help="start at TIME")
    when.add_argument(
        "--in", dest="in_", metavar="DURATION", type=DURATION, help="start DURATION from now"
    )
    when.add_argument("--now", action="store_true", help="start as soon as a worker is free")
