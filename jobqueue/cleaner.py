"""``jobqueue-cleaner``: the operators' cron job, safe to run while the daemon runs.

Each run does three things:

1. asks the daemon to archive finished jobs older than ``--job-age``
   (AutoArchiveJobs, repeated until no job is left unchecked); when the
   daemon is not running this step is skipped and is no failure;
2. deletes archived job files (``queue/archive/K/job-N``) last modified
   more than ``--archive-age`` ago, then the archive directories left empty;
3. appends one summary line to ``--log-file``.

Only ``job-N`` files are deleted, so nothing the daemon writes elsewhere is
touched. An archive directory is removed with ``rmdir``, which fails on a
directory that is not empty; directories the daemon may be about to archive
into (those of live jobs and the two newest) are never removed, so a
concurrent ArchiveJob cannot find its directory gone.

Exit status: 0, or 1 when a step really failed (the daemon refused or did
not answer, a file could not be deleted, the log could not be written), or 2
for invalid options, including a state directory that does not exist (a typo
in a cron entry must not pass silently).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
from collections.abc import Sequence

from jobqueue import constants, errors
from jobqueue.cli.timespec import parse_age, parse_timespec
from jobqueue.paths import StatePaths

LOG_NAME = "jobqueue-cleaner.log"
DEFAULT_JOB_AGE = "6h"
DEFAULT_ARCHIVE_AGE = "21d"
_JOB_FILE_RE = re.compile(rf"^{re.escape(constants.JOB_FILE_PREFIX)}([0-9]+)$")
#: rmdir failures meaning "not empty (any more)" or "already gone": not errors.
_KEEP_ERRNOS = frozenset({errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT})


class PruneResult:
    """What pruning the archive did."""

    def __init__(self) -> None:
        self.files = 0
        self.directories = 0
        self.failures: list[str] = []


def _subdir(job_id: int) -> int:
    return job_id // constants.JOBS_PER_ARCHIVE_DIR


def protected_subdirs(queue_dir: str) -> set[int]:
    """Archive directories the daemon may archive into next; never removed.

    Those of the live jobs, plus the directory of the highest id handed out
    (``serial``) and the one before it, which hold ids of jobs that may be
    submitted after this scan.
    """
    protected: set[int] = set()
    try:
        names = os.listdir(queue_dir)
    except FileNotFoundError:
        return protected
    for name in names:
        match = _JOB_FILE_RE.match(name)
        if match:
            protected.add(_subdir(int(match.group(1))))
    try:
        with open(os.path.join(queue_dir, constants.SERIAL_FILE), encoding="ascii") as handle:
            newest = _subdir(int(handle.read().strip() or 0))
    except (OSError, ValueError):
        return protected
    protected.update({newest, newest - 1})
    return protected


def _prune_directory(path: str, cutoff: float, result: PruneResult) -> None:
    """Delete the ``job-N`` files in ``path`` last modified before ``cutoff``."""
    with os.scandir(path) as entries:
        for entry in entries:
            if not _JOB_FILE_RE.match(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as err:
                result.failures.append(f"cannot delete {entry.path}: {err.strerror}")
                continue
            result.files += 1


def prune_archive(
    archive_dir: str, max_age: float, now: float, protected: set[int] | None = None
) -> PruneResult:
    """Delete archived job files older than ``max_age`` seconds, then empty directories.

    Directories whose number is in ``protected`` are kept even when empty.
    Failures are collected in the result, not raised.
    """
    result = PruneResult()
    protected = protected or set()
    cutoff = now - max_age
    try:
        names = sorted(os.listdir(archive_dir))
    except FileNotFoundError:
        return result
    except OSError as err:
        result.failures.append(f"cannot list {archive_dir}: {err.strerror}")
        return result
    for name in names:
        path = os.path.join(archive_dir, name)
        if not name.isdigit() or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            _prune_directory(path, cutoff, result)
        except OSError as err:
            result.failures.append(f"cannot list {path}: {err.strerror}")
            continue
        if int(name) in protected:
            continue
        try:
            os.rmdir(path)
        except OSError as err:
            if err.errno not in _KEEP_ERRNOS:
                result.failures.append(f"cannot remove {path}: {err.strerror}")
            continue
        result.directories += 1
    return result


def archive_old_jobs(socket_path: str, age: int) -> tuple[int, int] | None:
    """Have the daemon archive jobs older than ``age``; None if it is not running.

    Returns ``(archived, left unchecked)``. Raises GenericError when the
    daemon refuses or does not answer.
    """
    from jobqueue.cli.cmd_manage import auto_archive
    from jobqueue.luxi.client import Client

    try:
        with Client(socket_path) as client:
            return auto_archive(client, age)
    except errors.NoMasterError:
        return None


def archive_step(socket_path: str, age: int) -> tuple[str, str | None]:
    """Run the archiving step; return its part of the summary and its failure, if any."""
    try:
        archived = archive_old_jobs(socket_path, age)
    except errors.GenericError as err:
        return "archiving failed", f"archiving failed: {err}"
    if archived is None:
        return "daemon not running; skipped archiving", None
    count, left = archived
    return f"archived {count} jobs" + (f" ({left} left unchecked)" if left else ""), None


def summary_line(archiving: str, pruned: PruneResult, failures: Sequence[str]) -> str:
    """The one line a run leaves in the log."""
    line = (
        f"{archiving}, pruned {pruned.files} archived files,"
        f" removed {pruned.directories} empty directories"
    )
    if failures:
        line += "; errors: " + "; ".join(failures)
    return line


def append_log(path: str, line: str, now: float) -> None:
    """Append ``line`` with a local timestamp to the log file; OSError if that fails.

    Creates the file but no directory: a log file named in a missing
    directory is an error to report, not a path to build.
    """
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, constants.FILE_MODE)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(f"{stamp} {line}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``jobqueue-cleaner`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="jobqueue-cleaner",
        description="Archive old finished jobs and prune old archived job files.",
    )
    parser.add_argument("--state-dir", metavar="DIR", help="the daemon's state directory")
    parser.add_argument("--socket", metavar="PATH", help="the daemon's socket")
    parser.add_argument(
        "--job-age",
        metavar="AGE",
        default=DEFAULT_JOB_AGE,
        help=f"archive finished jobs older than AGE, or all (default {DEFAULT_JOB_AGE})",
    )
    parser.add_argument(
        "--archive-age",
        metavar="AGE",
        default=DEFAULT_ARCHIVE_AGE,
        help=f"delete archived jobs older than AGE (default {DEFAULT_ARCHIVE_AGE})",
    )
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        help=f"where the summary goes (default <state>/log/{LOG_NAME})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cleaner once; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        job_age = parse_age(args.job_age)
        archive_age = parse_timespec(args.archive_age)
    except ValueError as err:
        parser.error(str(err))
    paths = StatePaths.resolve(args.state_dir)
    if not os.path.isdir(paths.root):
        print(f"jobqueue-cleaner: no state directory at {paths.root}", file=sys.stderr)
        return 2
    archiving, failure = archive_step(args.socket or paths.master_socket, job_age)
    failures = [failure] if failure else []
    now = time.time()
    pruned = prune_archive(paths.archive_dir, archive_age, now, protected_subdirs(paths.queue_dir))
    failures.extend(pruned.failures)
    line = summary_line(archiving, pruned, failures)
    log_file = args.log_file or os.path.join(paths.log_dir, LOG_NAME)
    try:
        if not args.log_file:  # the state directory's own log/ may be made
            os.makedirs(paths.log_dir, mode=constants.DIR_MODE, exist_ok=True)
        append_log(log_file, line, now)
    except OSError as err:
        failures.append(f"cannot write {log_file}: {err.strerror}")
    for failure in failures:
        print(f"jobqueue-cleaner: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
