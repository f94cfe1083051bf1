"""Argument types and options that several ``jobctl`` commands share.

The ``args_*`` modules add each command's arguments with these; ``parser``
assembles the commands. Nothing here imports ``typing`` (start-up time).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from jobqueue.constants import PRIO_NAMES

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def checked(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type from a parser raising ValueError; ``name`` shows in errors."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name
    return convert


def lazy(module: str, name: str) -> Callable[[str], Any]:
    """An argparse type calling ``jobqueue.cli.<module>.<name>``, imported on use."""
    return checked(
        lambda text: getattr(importlib.import_module(f"jobqueue.cli.{module}"), name)(text), name
    )


def _parse_job_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a job id (a whole number), got '{text}'")
    return int(text)


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a number of seconds (such as 30 or 0.5), got '{text}'")
    return value


def _parse_count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a whole number, got '{text}'")
    return int(text)


JOB_ID = checked(_parse_job_id, "job id")
SECONDS = checked(_parse_seconds, "seconds")
COUNT = checked(_parse_count, "count")
DURATION = lazy("timespec", "parse_duration")
AT_TIME = lazy("cmd_controls", "parse_at")
PRIORITIES = list(PRIO_NAMES)


def children_option(parser: Any) -> None:
    """``--no-children``, on a parser or an argument group."""
    parser.add_argument(
        "--no-children",
        dest="children",
        action="store_false",
        help="do not wait for the jobs that the job(s) submitted, such as a fan-out's",
    )


def output_options(parser: argparse.ArgumentParser) -> None:
    """``--no-headers``, ``--separator`` and ``--output table|json``, for tables."""
    parser.add_argument("--no-headers", action="store_true", help="do not print column headers")
    parser.add_argument("--separator", metavar="S", help="join columns with S, unpadded")
    output_format(parser, ("table", "json"))


def output_format(parser: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    """``--output``, one of ``formats``, the first the default."""
    parser.add_argument(
        "--output",
        choices=formats,
        default=formats[0],
        help="output format; json gives ISO 8601 times (default: %(default)s)",
    )
