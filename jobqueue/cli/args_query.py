"""The arguments of the commands that only read: list, list-fields, info, locks,
watch, log and wait."""

from __future__ import annotations

import argparse

from jobqueue.cli.args_common import (
    COUNT,
    JOB_ID,
    children_option,
    output_format,
    output_options,
)
from jobqueue.constants import Status


def add_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="*", type=JOB_ID, help="only these jobs")
    parser.add_argument(
        "-o",
        dest="fields",
        metavar="FIELD,...",
        help="fields to show (default id,status,elapsed,summary); +FIELD,... adds to the default",
    )
    output_options(parser)
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        choices=[status.value for status in Status],
        help="only jobs in this status; repeatable",
    )
    for flag, which in (
        ("pending", "queued or waiting"),
        ("running", "running"),
        ("error", "failed"),
        ("finished", "finished"),
    ):
        parser.add_argument(f"--{flag}", action="store_true", help=f"only {which} jobs")
    parser.add_argument(
        "--archived", action="store_true", help="list archived jobs instead of live ones"
    )


def add_list_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", metavar="FIELD", nargs="*", help="only these fields")
    output_options(parser)


def add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="the jobs")
    output_format(parser, ("text", "json"))


def add_locks(parser: argparse.ArgumentParser) -> None:
    output_options(parser)


def add_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="ID", type=JOB_ID, help="the job")
    children_option(parser)
    output_format(parser, ("text", "json"))


def add_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="ID", type=JOB_ID, help="the job")
    parser.add_argument(
        "--tail",
        type=COUNT,
        metavar="N",
        help="only the last N lines (of each stream)",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing output as it comes, until the job ends",
    )
    streams = parser.add_mutually_exclusive_group()
    streams.add_argument("--stdout", action="store_true", help="only the command's standard output")
    streams.add_argument(
        "--stderr",
        action="store_true",
        help="only the command's standard error (printed on standard output)",
    )


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="the jobs")
    children_option(parser)
    output_format(parser, ("text", "json"))
