"""The ``jobctl`` command line: the table of commands, and the parser built from it.

Each command's arguments are added by a function of an ``args_*`` module:
``args_submit`` (commands submitting jobs), ``args_query`` (commands that only
read), ``args_manage`` (cancelling, priorities, archiving) and
``args_controls`` (queue, filter rules, schedules), with ``args_common``
holding what they share. ``build_parser`` builds only the sub-command being
run when it knows it, and imports only the module adding its arguments, since
building all of them would cost start-up time for nothing.
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


# One sub-command: where it is implemented, its help, where its arguments are
# added, and whether it only reads (then the read-only query socket is enough
# for it). ``handler`` and ``arguments`` name a function as "module:function",
# of a module of jobqueue.cli, imported only when that command is built or run.
if TYPE_CHECKING:

    class Command(NamedTuple):
        handler: str
        help: str
        arguments: str
        description: str | None = None
        read_only: bool = False

else:
    Command = namedtuple(
        "Command",
        ("handler", "help", "arguments", "description", "read_only"),
        defaults=(None, False),
    )


COMMANDS: dict[str, Command] = {
    "submit": Command(
        "cmd_submit:cmd_submit",
        "submit jobs from a JSON file",
        "args_submit:add_submit",
        "Submit a JSON list of opcodes as one job, or a list of such lists as several jobs"
        " in one request; print the job id(s), one per line.",
    ),
    "run": Command(
        "cmd_submit:cmd_run",
        "submit a job running one command",
        "args_submit:add_run",
        "Submit a job running one command: jobctl run [options] -- CMD ARGS...",
    ),
    "fanout": Command(
        "cmd_submit:cmd_fanout",
        "submit a job running a command per item",
        "args_submit:add_fanout",
        "Submit a job running CMD once per item, {item} replaced by the item:"
        " jobctl fanout --item a b [options] -- CMD {item}...",
    ),
    "delay": Command("cmd_submit:cmd_delay", "submit a job that sleeps", "args_submit:add_delay"),
    "retry": Command(
        "cmd_submit:cmd_retry",
        "submit a finished job again",
        "args_submit:add_retry",
        "Submit a new job with the opcodes of a finished one, without its dependencies.",
    ),
    "list": Command("cmd_query:cmd_list", "list jobs", "args_query:add_list", read_only=True),
    "list-fields": Command(
        "cmd_query:cmd_list_fields",
        "describe the job fields",
        "args_query:add_list_fields",
        read_only=True,
    ),
    "info": Command(
        "cmd_query:cmd_info", "show everything about jobs", "args_query:add_info", read_only=True
    ),
    "locks": Command(
        "cmd_query:cmd_locks",
        "show the locks, their owners and waiters",
        "args_query:add_locks",
        read_only=True,
    ),
    "watch": Command(
        "follow:cmd_watch",
        "print a job's log until it ends",
        "args_query:add_watch",
        "Print what a job waits for while it is pending, then its log as it comes until it"
        " ends; then wait for the jobs it submitted, unless --no-children.",
        read_only=True,
    ),
    "log": Command(
        "outputlog:cmd_log",
        "print a job's command output",
        "args_query:add_log",
        "Print the output of a job's commands as they wrote it: their standard output on"
        " standard output, their standard error on standard error. Works while the job runs"
        " and after it ended or was archived.",
        read_only=True,
    ),
    "wait": Command(
        "follow:cmd_wait",
        "wait until jobs end",
        "args_query:add_wait",
        "Wait until the jobs have ended, and the jobs they submitted too (a fan-out's),"
        " unless --no-children.",
        read_only=True,
    ),
    "cancel": Command("cmd_manage:cmd_cancel", "cancel jobs", "args_manage:add_cancel"),
    "change-priority": Command(
        "cmd_manage:cmd_change_priority",
        "change the priority of jobs",
        "args_manage:add_change_priority",
    ),
    "archive": Command(
        "cmd_manage:cmd_archive", "archive finished jobs", "args_manage:add_archive"
    ),
    "autoarchive": Command(
        "cmd_manage:cmd_autoarchive",
        "archive finished jobs older than AGE",
        "args_manage:add_autoarchive",
    ),
    "queue": Command(
        "cmd_manage:cmd_queue",
        "show the queue; drain, pause or continue it; set the number of workers",
        "args_controls:add_queue",
    ),
    "filter": Command(
        "cmd_controls:cmd_filter",
        "add, list, show or delete job filter rules",
        "args_controls:add_filter",
        "Job filter rules decide which jobs run: ACCEPT, PAUSE, REJECT or RATE_LIMIT the jobs"
        " their predicates match (Ganeti's gnt-filter).",
    ),
    "schedule": Command(
        "cmd_controls:cmd_schedule",
        "change when queued jobs may start",
        "args_controls:add_schedule",
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
        _arguments_adder(spec)(sub)
    return parser


def _arguments_adder(spec: Command) -> Callable[[argparse.ArgumentParser], None]:
    """The function adding the arguments of the command ``spec``, imported now."""
    module_name, function = spec.arguments.split(":")
    module = importlib.import_module(f"jobqueue.cli.{module_name}")
    add: Callable[[argparse.ArgumentParser], None] = getattr(module, function)
    return add


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
