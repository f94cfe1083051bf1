"""The arguments of the commands that submit jobs: submit, run, fanout, delay, retry.

Their shared groups too: the job options (when a job may start, its
retries, its timeout), the submit options (priority, dependencies, waiting)
and the command options of run and fanout (locks, environment, directory).
"""

from __future__ import annotations

import argparse

from jobqueue.cli.args_common import (
    AT_TIME,
    COUNT,
    DURATION,
    JOB_ID,
    PRIORITIES,
    SECONDS,
    checked,
    children_option,
    lazy,
)
from jobqueue.constants import COMMAND_STDIN_MAX


def _job_options(parser: argparse.ArgumentParser) -> None:
    """When a job may start, how often it is retried, how long it may take."""
    group = parser.add_argument_group("job options")
    when = group.add_mutually_exclusive_group()
    when.add_argument(
        "--at",
        metavar="TIME",
        type=AT_TIME,
        help="start no earlier than TIME: HH:MM[:SS], YYYY-MM-DD HH:MM, ISO 8601 or @SECONDS",
    )
    when.add_argument(
        "--in",
        dest="in_",
        metavar="DURATION",
        type=DURATION,
        help="start no earlier than DURATION from now (90s, 30m, 1.5h, 2d)",
    )
    group.add_argument(
        "--retries", type=COUNT, metavar="N", help="run a failed job again up to N times"
    )
    group.add_argument(
        "--retry-delay",
        type=DURATION,
        metavar="DURATION",
        help="wait this long before the first retry (default 0)",
    )
    group.add_argument(
        "--retry-backoff",
        type=checked(float, "factor"),
        metavar="FACTOR",
        help="multiply the delay by FACTOR (at least 1) at each further retry",
    )
    group.add_argument(
        "--retry-max-delay", type=DURATION, metavar="DURATION", help="never wait longer"
    )
    group.add_argument(
        "--job-timeout",
        type=DURATION,
        metavar="DURATION",
        help="cancel the job (killing its command) this long after it first started",
    )


def _submit_options(parser: argparse.ArgumentParser, many: bool = True) -> None:
    """Options of every command that submits jobs."""
    _job_options(parser)
    group = parser.add_argument_group("submit options")
    group.add_argument("--priority", choices=PRIORITIES, help="priority of the new job(s)")
    if many:
        group.add_argument(
            "--depends",
            metavar="ID[:STATUS,...]",
            action="append",
            default=[],
            type=lazy("opbuild", "parse_depends"),
            help="run only after job ID has ended, with one of the STATUSes (success, error,"
            " canceled; none = any); repeatable; write --depends=-1 for a relative id",
        )
        group.add_argument("--comment", help="a comment stored with every opcode")
    group.add_argument("--watch", action="store_true", help="follow the job(s) until they end")
    group.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job(s) end, as 'wait' does; a job of one command gives its exit"
        " status",
    )
    children_option(group)


def _command_options(parser: argparse.ArgumentParser, *, per_item: bool) -> None:
    """Locks, timeout, directory and environment, shared by run and fanout."""
    lock = "TEMPLATE" if per_item else "NAME"
    each = " per item, e.g. host:{item}" if per_item else " to hold"
    parser.add_argument(
        "--lock",
        action="append",
        default=[],
        metavar=lock,
        help=f"exclusive lock{each}; repeatable",
    )
    parser.add_argument(
        "--shared-lock",
        action="append",
        default=[],
        metavar=lock,
        help=f"shared lock{each}; repeatable",
    )
    command = "each command" if per_item else "the command"
    parser.add_argument(
        "--timeout", type=SECONDS, metavar="S", help=f"stop {command} after S seconds"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        type=lazy("opbuild", "parse_env"),
        help=f"set an environment variable for {command}; repeatable",
    )
    parser.add_argument(
        "--env-from-caller",
        action="append",
        default=[],
        metavar="NAME",
        type=lazy("opbuild", "parse_env_name"),
        help=f"pass this variable of your environment to {command}; repeatable",
    )
    parser.add_argument(
        "--caller-env",
        action="store_true",
        help=f"pass your whole environment to {command} (anyone who may read the job sees it)",
    )
    parser.add_argument(
        "--cwd",
        metavar="DIR",
        help=f"working directory of {command} (default: the current directory)",
    )


def add_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", help="the job file; - reads stdin")
    _submit_options(parser)


def add_run(parser: argparse.ArgumentParser) -> None:
    _command_options(parser, per_item=False)
    parser.add_argument(
        "--stdin",
        action="store_true",
        help=f"pass your standard input to the command (at most {COMMAND_STDIN_MAX // 1024}"
        " KiB); else it reads /dev/null",
    )
    parser.add_argument(
        "argv", metavar="CMD", nargs="+", help="the command and its arguments, after --"
    )
    _submit_options(parser)


def add_fanout(parser: argparse.ArgumentParser) -> None:
    items = parser.add_mutually_exclusive_group(required=True)
    items.add_argument(
        "--item", action="extend", nargs="+", metavar="X", help="the items; repeatable"
    )
    items.add_argument(
        "--items-file", metavar="F", help="read the items from F, one per line (- = stdin)"
    )
    _command_options(parser, per_item=True)
    parser.add_argument(
        "--then-run", metavar="CMD", help="command (one shell-quoted string) to run after all items"
    )
    parser.add_argument(
        "argv", metavar="CMD", nargs="+", help="the command, with {item} for the item, after --"
    )
    _submit_options(parser)


def add_delay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("duration", metavar="SECONDS", type=SECONDS, help="how long to sleep")
    parser.add_argument(
        "--repeat",
        type=COUNT,
        default=0,
        metavar="N",
        help="sleep N times, logging each round (default 0: once, silently)",
    )
    _submit_options(parser)


def add_retry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="ID", type=JOB_ID, help="the finished job to repeat")
    _submit_options(parser, many=False)
