"""The arguments of the commands that manage jobs: cancel, change-priority,
archive and autoarchive."""

from __future__ import annotations

import argparse

from jobqueue.cli.args_common import JOB_ID, PRIORITIES, lazy, output_format


def _job_selection(parser: argparse.ArgumentParser, verb: str) -> None:
    """``ID...`` or one of ``--pending``, ``--queued``, ``--waiting``."""
    parser.add_argument("job_ids", metavar="ID", nargs="*", type=JOB_ID, help=f"jobs to {verb}")
    group = parser.add_mutually_exclusive_group()
    for flag, which in (
        ("--pending", "queued or waiting"),
        ("--queued", "queued"),
        ("--waiting", "waiting"),
    ):
        group.add_argument(flag, action="store_true", help=f"{verb} all {which} jobs")


def add_cancel(parser: argparse.ArgumentParser) -> None:
    _job_selection(parser, "cancel")
    parser.add_argument("--kill", action="store_true", help="also stop jobs that are running")
    parser.add_argument("--force", action="store_true", help="do not ask for confirmation")


def add_change_priority(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=PRIORITIES, required=True, help="the new priority")
    _job_selection(parser, "change")


def add_archive(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="the jobs")


def add_autoarchive(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "age",
        metavar="AGE|all",
        type=lazy("timespec", "parse_age"),
        help="90s, 30m, 6h, 2d, 1w, plain seconds, or all",
    )
    output_format(parser, ("text", "json"))
