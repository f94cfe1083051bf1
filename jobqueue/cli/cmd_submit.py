"""Commands that submit jobs: ``submit``, ``run``, ``fanout``, ``delay``, ``retry``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from jobqueue.cli import opbuild
from jobqueue.cli.context import Context
from jobqueue.cli.exitcodes import CommandFailed, ExitCode
from jobqueue.cli.follow import wait_and_report, watch_job
from jobqueue.constants import COMMAND_STDIN_MAX, FINALIZED, PRIO_NAMES

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _read_text(context: Context, path: str) -> str:
    """The contents of ``path`` (stdin for ``-``); CommandFailed if unreadable."""
    if path == "-":
        return context.stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else str(err)
        raise CommandFailed(f"Cannot read {path}: {reason}") from None


def _build(make: Callable[[], Any]) -> Any:
    """Call an opbuild function; its ValueError becomes a usage failure."""
    try:
        return make()
    except ValueError as err:
        raise CommandFailed(str(err), ExitCode.USAGE) from None


def _priority(args: argparse.Namespace) -> int | None:
    return PRIO_NAMES[args.priority] if args.priority else None


def submit_jobs(
    context: Context, args: argparse.Namespace, jobs: list[opbuild.Job], many: bool
) -> int:
    """Submit ``jobs`` with the generic and job options of ``args``; print the ids.

    One job goes with SubmitJob (its errors, such as a drained queue, end
    the command), several with one SubmitManyJobs call whose per-job
    failures are reported on stderr (exit 1). With ``--watch`` each job is
    followed afterwards, with ``--wait`` they are waited for as ``wait`` does.
    """
    from jobqueue.cli.cmd_controls import job_options

    depends = getattr(args, "depends", [])
    comment = getattr(args, "comment", None)
    jobs = [opbuild.apply_options(job, _priority(args), depends, comment) for job in jobs]
    options = job_options(args)
    code: int = ExitCode.OK
    if not many:
        job_ids = [context.client.submit_job(jobs[0], options)]
        context.out(str(job_ids[0]), flush=True)
    else:
        job_ids = []
        answers = context.client.submit_many_jobs(jobs, options)
        for index, (success, value) in enumerate(answers, 1):
            if success:
                job_ids.append(int(value))
                context.out(str(value), flush=True)
            else:
                context.err(f"Failed to submit job {index}: {value}")
                code = ExitCode.FAILURE
    if args.watch:
        for job_id in job_ids:
            code = max(code, watch_job(context, job_id, children=args.children))
    elif getattr(args, "wait", False) and job_ids:
        code = max(code, wait_and_report(context, job_ids, children=args.children))
    return code


def _working_directory(args: argparse.Namespace) -> str:
    """``--cwd`` made absolute here, else the caller's directory."""
    try:
        return os.path.abspath(args.cwd) if args.cwd is not None else os.getcwd()
    except OSError as err:
        raise CommandFailed(
            f"Cannot determine the current directory ({err.strerror}); give --cwd DIR"
        ) from None


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """``--caller-env``, ``--env-from-caller`` and ``--env``, in that order."""
    env: dict[str, str] = _build(
        lambda: opbuild.environment(args.env, args.env_from_caller, args.caller_env, os.environ)
    )
    return env


def _standard_input(context: Context) -> bytes:
    """The caller's standard input, at most ``COMMAND_STDIN_MAX`` bytes."""
    stream = getattr(context.stdin, "buffer", None)
    data = stream.read(COMMAND_STDIN_MAX + 1) if stream is not None else b""
    if stream is None:
        data = context.stdin.read(COMMAND_STDIN_MAX + 1).encode()
    if len(data) > COMMAND_STDIN_MAX:
        raise CommandFailed(
            f"Standard input is longer than {COMMAND_STDIN_MAX} bytes, the most --stdin passes;"
            " put it in a file and give the command its name"
        )
    return data


def cmd_submit(args: argparse.Namespace, context: Context) -> int:
    """``jobctl submit FILE|-``."""
    text = _read_text(context, args.file)
    try:
        jobs, many = opbuild.parse_jobs(text)
    except ValueError as err:
        raise CommandFailed(f"Invalid job file {args.file}: {err}") from None
    return submit_jobs(context, args, jobs, many)


def cmd_run(args: argparse.Namespace, context: Context) -> int:
    """``jobctl run [options] -- CMD ARGS...``."""
    cwd, env = _working_directory(args), _environment(args)
    stdin = _standard_input(context) if args.stdin else None
    opcode = _build(
        lambda: opbuild.run_opcode(
            args.argv, args.lock, args.shared_lock, args.timeout, env, cwd, stdin
        )
    )
    return submit_jobs(context, args, [[opcode]], many=False)


def cmd_fanout(args: argparse.Namespace, context: Context) -> int:
    """``jobctl fanout (--item X... | --items-file F) [options] -- CMD {item}...``."""
    items = args.item
    if args.items_file is not None:
        items = opbuild.parse_items(_read_text(context, args.items_file))
    opcode = _build(
        lambda: opbuild.fanout_opcode(
            args.argv,
            items,
            args.lock,
            args.then_run,
            shared_locks=args.shared_lock,
            timeout=args.timeout,
            env=_environment(args),
            cwd=_working_directory(args),
        )
    )
    return submit_jobs(context, args, [[opcode]], many=False)


def cmd_delay(args: argparse.Namespace, context: Context) -> int:
    """``jobctl delay SECONDS [--repeat N]``."""
    opcode = _build(lambda: opbuild.delay_opcode(args.duration, args.repeat))
    return submit_jobs(context, args, [[opcode]], many=False)


def cmd_retry(args: argparse.Namespace, context: Context) -> int:
    """``jobctl retry ID``: submit the opcodes of a finished job again."""
    job_id = args.job_id
    rows = context.client.query_jobs([job_id], ["ops", "status"])
    if not rows or rows[0][1] is None:
        raise CommandFailed(f"Job {job_id} not found", ExitCode.NOT_FOUND)
    ops, status = rows[0]
    if status not in FINALIZED:
        raise CommandFailed(
            f"Job {job_id} has not finished (status {status}); only finished jobs can be retried"
        )
    return submit_jobs(context, args, [opbuild.retry_job(ops, job_id)], many=False)
