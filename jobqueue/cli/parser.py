"""The ``jobctl`` command line: the table of commands and their arguments.

Each command has a small function adding its arguments. ``build_parser``
builds only the sub-command being run when it knows it, since building all
all of them would cost start-up time for nothing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections import namedtuple
from collections.abc import Callable

from jobqueue import __version__
from jobqueue.cli.exitcodes import MEANINGS, ExitCode
from jobqueue.constants import COMMAND_STDIN_MAX, PRIO_NAMES, Status

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple, NoReturn

#: Global options taking a value, as they may appear before the command.
VALUE_OPTIONS = ("--socket", "--state-dir")
EPILOG = "Exit status: " + ", ".join(f"{int(code)} {text}" for code, text in MEANINGS.items())


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line and a pointer to ``--help``.

    argparse prints the whole usage block first, which buries the one line
    that says what is wrong. Sub-command parsers are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.fail(message, self.prog)

    def fail(self, message: str, prog: str) -> NoReturn:
        """Exit with USAGE after ``prog: message`` and where to find help."""
        self.exit(ExitCode.USAGE, f"{prog}: {message}\nTry '{prog} --help' for more information.\n")


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized without importing shutil (saves start-up time)."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            try:
                columns = os.get_terminal_size(sys.stdout.fileno()).columns
            except (AttributeError, OSError, ValueError):
                columns = 80
        super().__init__(prog, width=max(columns - 2, 40))


def _checked(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type from a parser raising ValueError; ``name`` shows in errors."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name
    return convert


def _lazy(module: str, name: str) -> Callable[[str], Any]:
    """An argparse type calling ``jobqueue.cli.<module>.<name>``, imported on use."""
    return _checked(
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


JOB_ID = _checked(_parse_job_id, "job id")
SECONDS = _checked(_parse_seconds, "seconds")
COUNT = _checked(_parse_count, "count")
PRIORITIES = list(PRIO_NAMES)


def add_global_options(parser: argparse.ArgumentParser, in_subcommand: bool) -> None:
    """Add ``--socket``, ``--state-dir`` and ``--debug``; before or after the command.

    In sub-commands their defaults are suppressed so they do not undo a value
    given before the command. Added directly rather than with ``parents=``,
    which would cost two more ArgumentParsers at every start.
    """
    default: Any = argparse.SUPPRESS if in_subcommand else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--socket",
        metavar="PATH",
        default=default,
        help="the daemon's socket (wins over --state-dir)",
    )
    group.add_argument(
        "--state-dir",
        metavar="DIR",
        default=default,
        help="the daemon's state directory (default: $JOBQUEUE_STATE_DIR, else the default"
        " for this user)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if in_subcommand else False,
        help="show a traceback on errors",
    )


DURATION = _lazy("timespec", "parse_duration")


def _job_options(parser: argparse.ArgumentParser) -> None:
    """When a job may start, how often it is retried, how long it may take."""
    group = parser.add_argument_group("job options")
    when = group.add_mutually_exclusive_group()
    when.add_argument(
        "--at",
        metavar="TIME",
        type=_lazy("cmd_controls", "parse_at"),
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
        type=_checked(float, "factor"),
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
            type=_lazy("opbuild", "parse_depends"),
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
    _children_option(group)


def _children_option(parser: Any) -> None:
    parser.add_argument(
        "--no-children",
        dest="children",
        action="store_false",
        help="do not wait for the jobs that the job(s) submitted, such as a fan-out's",
    )


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-headers", action="store_true", help="do not print column headers")
    parser.add_argument("--separator", metavar="S", help="join columns with S, unpadded")
    _output_format(parser, ("table", "json"))


def _output_format(parser: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    parser.add_argument(
        "--output",
        choices=formats,
        default=formats[0],
        help="output format; json gives ISO 8601 times (default: %(default)s)",
    )


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


def _add_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", help="the job file; - reads stdin")
    _submit_options(parser)


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
        type=_lazy("opbuild", "parse_env"),
        help=f"set an environment variable for {command}; repeatable",
    )
    parser.add_argument(
        "--env-from-caller",
        action="append",
        default=[],
        metavar="NAME",
        type=_lazy("opbuild", "parse_env_name"),
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


def _add_run(parser: argparse.ArgumentParser) -> None:
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


def _add_fanout(parser: argparse.ArgumentParser) -> None:
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


def _add_delay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("duration", metavar="SECONDS", type=SECONDS, help="how long to sleep")
    parser.add_argument(
        "--repeat",
        type=COUNT,
        default=0,
        metavar="N",
        help="sleep N times, logging each round (default 0: once, silently)",
    )
    _submit_options(parser)


def _add_retry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="ID", type=JOB_ID, help="the finished job to repeat")
    _submit_options(parser, many=False)


def _add_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="*", type=JOB_ID, help="only these jobs")
    parser.add_argument(
        "-o",
        dest="fields",
        metavar="FIELD,...",
        help="fields to show (default id,status,elapsed,summary); +FIELD,... adds to the default",
    )
    _output_options(parser)
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


def _add_list_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", metavar="FIELD", nargs="*", help="only these fields")
    _output_options(parser)


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="the jobs")
    _output_format(parser, ("text", "json"))


def _add_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="ID", type=JOB_ID, help="the job")
    _children_option(parser)
    _output_format(parser, ("text", "json"))


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="the jobs")
    _children_option(parser)
    _output_format(parser, ("text", "json"))


def _add_log(parser: argparse.ArgumentParser) -> None:
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


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="the jobs")


def _add_cancel(parser: argparse.ArgumentParser) -> None:
    _job_selection(parser, "cancel")
    parser.add_argument("--kill", action="store_true", help="also stop jobs that are running")
    parser.add_argument("--force", action="store_true", help="do not ask for confirmation")


def _add_change_priority(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=PRIORITIES, required=True, help="the new priority")
    _job_selection(parser, "change")


def _add_autoarchive(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "age",
        metavar="AGE|all",
        type=_lazy("timespec", "parse_age"),
        help="90s, 30m, 6h, 2d, 1w, plain seconds, or all",
    )
    _output_format(parser, ("text", "json"))


QUEUE_ACTIONS = ("info", "drain", "undrain", "pause", "continue", "set-workers")
FILTER_ACTIONS = ("add", "list", "info", "delete")
RULE_ACTIONS = ("ACCEPT", "PAUSE", "REJECT", "CONTINUE")


def _add_queue(parser: argparse.ArgumentParser) -> None:
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
    _output_format(parser, ("text", "json"))


def _add_filter(parser: argparse.ArgumentParser) -> None:
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


def _add_schedule(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", metavar="ID", nargs="+", type=JOB_ID, help="queued jobs")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--at", metavar="TIME", type=_lazy("cmd_controls", "parse_at"), help="start at TIME"
    )
    when.add_argument(
        "--in", dest="in_", metavar="DURATION", type=DURATION, help="start DURATION from now"
    )
    when.add_argument("--now", action="store_true", help="start as soon as a worker is free")


def _add_locks(parser: argparse.ArgumentParser) -> None:
    _output_options(parser)


# One sub-command: where it is implemented, its help, its arguments, and
# whether it only reads (then the read-only query socket is enough for it).
if TYPE_CHECKING:

    class Command(NamedTuple):
        handler: str
        help: str
        add_arguments: Callable[[argparse.ArgumentParser], None]
        description: str | None = None
        read_only: bool = False

else:
    Command = namedtuple(
        "Command",
        ("handler", "help", "add_arguments", "description", "read_only"),
        defaults=(None, False),
    )


COMMANDS: dict[str, Command] = {
    "submit": Command(
        "cmd_submit:cmd_submit",
        "submit jobs from a JSON file",
        _add_submit,
        "Submit a JSON list of opcodes as one job, or a list of such lists as several jobs"
        " in one request; print the job id(s), one per line.",
    ),
    "run": Command(
        "cmd_submit:cmd_run",
        "submit a job running one command",
        _add_run,
        "Submit a job running one command: jobctl run [options] -- CMD ARGS...",
    ),
    "fanout": Command(
        "cmd_submit:cmd_fanout",
        "submit a job running a command per item",
        _add_fanout,
        "Submit a job running CMD once per item, {item} replaced by the item:"
        " jobctl fanout --item a b [options] -- CMD {item}...",
    ),
    "delay": Command("cmd_submit:cmd_delay", "submit a job that sleeps", _add_delay),
    "retry": Command(
        "cmd_submit:cmd_retry",
        "submit a finished job again",
        _add_retry,
        "Submit a new job with the opcodes of a finished one, without its dependencies.",
    ),
    "list": Command("cmd_query:cmd_list", "list jobs", _add_list, read_only=True),
    "list-fields": Command(
        "cmd_query:cmd_list_fields", "describe the job fields", _add_list_fields, read_only=True
    ),
    "info": Command("cmd_query:cmd_info", "show everything about jobs", _add_info, read_only=True),
    "locks": Command(
        "cmd_query:cmd_locks",
        "show the locks, their owners and waiters",
        _add_locks,
        read_only=True,
    ),
    "watch": Command(
        "follow:cmd_watch",
        "print a job's log until it ends",
        _add_watch,
        "Print what a job waits for while it is pending, then its log as it comes until it"
        " ends; then wait for the jobs it submitted, unless --no-children.",
        read_only=True,
    ),
    "log": Command(
        "outputlog:cmd_log",
        "print a job's command output",
        _add_log,
        "Print the output of a job's commands as they wrote it: their standard output on"
        " standard output, their standard error on standard error. Works while the job runs"
        " and after it ended or was archived.",
        read_only=True,
    ),
    "wait": Command(
        "follow:cmd_wait",
        "wait until jobs end",
        _add_wait,
        "Wait until the jobs have ended, and the jobs they submitted too (a fan-out's),"
        " unless --no-children.",
        read_only=True,
    ),
    "cancel": Command("cmd_manage:cmd_cancel", "cancel jobs", _add_cancel),
    "change-priority": Command(
        "cmd_manage:cmd_change_priority", "change the priority of jobs", _add_change_priority
    ),
    "archive": Command("cmd_manage:cmd_archive", "archive finished jobs", _add_jobs),
    "autoarchive": Command(
        "cmd_manage:cmd_autoarchive", "archive finished jobs older than AGE", _add_autoarchive
    ),
    "queue": Command(
        "cmd_manage:cmd_queue",
        "show the queue; drain, pause or continue it; set the number of workers",
        _add_queue,
    ),
    "filter": Command(
        "cmd_controls:cmd_filter",
        "add, list, show or delete job filter rules",
        _add_filter,
        "Job filter rules decide which jobs run: ACCEPT, PAUSE, REJECT or RATE_LIMIT the jobs"
        " their predicates match (Ganeti's gnt-filter).",
    ),
    "schedule": Command(
        "cmd_controls:cmd_schedule",
        "change when queued jobs may start",
        _add_schedule,
        "Change when queued jobs may start: at a time, after a while, or now.",
    ),
}


def is_read_only(args: argparse.Namespace) -> bool:
    """Whether the parsed command only reads (``queue info`` does, ``queue drain`` not)."""
    if args.command in ("queue", "filter"):
        return bool(args.action in ("info", "list"))
    return bool(COMMANDS[args.command].read_only)


def find_command(argv: list[str]) -> str | None:
    """The command word of ``argv``: its first word that is no global option or value.

    None when ``-h``/``--help`` comes first: the main help lists every command.
    """
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in ("-h", "--help"):
            return None
        if word in VALUE_OPTIONS:
            index += 2
        elif word.startswith("-"):
            index += 1
        else:
            return word
    return None


def build_parser(command: str | None = None) -> Parser:
    """The ``jobctl`` parser.

    With a known ``command`` only that sub-command is registered, with its
    arguments (all that parsing its command line needs); otherwise every
    sub-command is registered with its arguments, for help and for errors.
    """
    parser = Parser(
        prog="jobctl",
        description="Submit, follow and manage the jobs of the job queue daemon.",
        epilog=EPILOG,
        allow_abbrev=False,
        formatter_class=_Formatter,
    )
    add_global_options(parser, in_subcommand=False)
    parser.add_argument("--version", action="version", version=f"jobctl {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        spec = COMMANDS[name]
        sub = subparsers.add_parser(
            name,
            help=spec.help,
            description=spec.description or spec.help,
            allow_abbrev=False,
            formatter_class=_Formatter,
        )
        add_global_options(sub, in_subcommand=True)
        sub.set_defaults(command=name)
        spec.add_arguments(sub)
    return parser


def parse(words: list[str]) -> argparse.Namespace:
    """Parse a jobctl command line; exit with a usage error for a bad one.

    Words no option takes are reported against the command they follow
    (argparse would blame ``jobctl`` itself and point to its help).
    """
    parser = build_parser(find_command(words))
    args, extras = parser.parse_known_args(words)
    if extras:
        parser.fail(f"unrecognized arguments: {' '.join(extras)}", f"jobctl {args.command}")
    return args
