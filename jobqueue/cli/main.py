"""``jobctl``: parse, dispatch, and turn every failure into one line and an exit code.

Command functions live in sibling modules imported only when their command
runs, and only the running command's arguments are built: scripts call
jobctl thousands of times, so start-up must stay cheap. ``--help`` loads
argparse and nothing of the LUXI client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from jobqueue import errors
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode, describe_error
from jobqueue.cli.parser import COMMANDS, build_parser, is_read_only, parse

Handler = Callable[[argparse.Namespace, Context], int]


def _handler(command: str) -> Handler:
    """Import the module implementing ``command``; return its function."""
    module_name, function = COMMANDS[command].handler.split(":")
    module = importlib.import_module(f"jobqueue.cli.{module_name}")
    handler: Handler = getattr(module, function)
    return handler


def _report(context: Context, debug: bool, code: int, *lines: str) -> int:
    """Print ``lines`` (after the traceback with ``--debug``); return ``code``."""
    if debug:
        import traceback

        traceback.print_exc()
    for line in lines:
        context.err(line)
    return code


def _run_handler(args: argparse.Namespace, context: Context) -> int:
    """Run the command; a read-only one the master socket refuses runs again on
    the query socket, which is enough for it (before any output: the refusal
    comes with the first answer)."""
    handler = _handler(args.command)
    try:
        return int(handler(args, context))
    except errors.AccessDenied:
        if not (is_read_only(args) and context.use_query_socket()):
            raise
    return int(handler(args, context))


def run(args: argparse.Namespace, context: Context) -> int:
    """Run the parsed command; turn every failure into a message and an exit code."""
    try:
        code = _run_handler(args, context)
        context.stdout.flush()  # here, so a closed pipe is handled like any error
        return code
    except CommandFailed as failure:
        return _report(context, args.debug, failure.code, failure.message)
    except errors.GenericError as err:
        code, message = describe_error(err, context.socket_path)
        hints = context.no_daemon_hints() if code == ExitCode.NO_DAEMON else []
        return _report(context, args.debug, code, message, *hints)
    except KeyboardInterrupt:
        return _report(context, args.debug, ExitCode.INTERRUPTED, "Interrupted")
    except BrokenPipeError:
        raise
    except OSError as err:
        return _report(context, args.debug, ExitCode.FAILURE, f"Error: {err}")
    finally:
        context.close()


def main(argv: Sequence[str] | None = None, *, context: Context | None = None) -> int:
    """The ``jobctl`` entry point: parse ``argv`` (default: sys.argv) and run it.

    ``context`` replaces the daemon connection and the streams (for tests).
    """
    words = list(sys.argv[1:] if argv is None else argv)
    if not words:  # a first try: show what there is, as a usage error
        build_parser().print_help(sys.stderr)
        return ExitCode.USAGE
    args = parse(words)
    if context is None:
        context = Context(args.socket, args.state_dir)
    try:
        return run(args, context)
    except BrokenPipeError:
        # The reader went away (``jobctl list | head``): stop quietly, and keep
        # the interpreter from failing once more when it flushes stdout at exit.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.FAILURE


if __name__ == "__main__":
    sys.exit(main())
