"""``jobqueue-cleaner``: the operators' cron job, safe to run while the daemon runs.

Each run first asks whether it is paused (``SetWatcherPause``, the
``watcher_pause`` setting; read from the store when the daemon is not
running): while paused it does nothing but write one line to the log.
Otherwise it does three things:

1. asks the daemon to archive finished jobs older than ``--job-age``
   (AutoArchiveJobs, repeated until no job is left unchecked); when the
   daemon is not running this step is skipped and is no failure;
2. deletes archived jobs last changed more than ``--archive-age`` ago: the
   daemon does it (PruneArchive, repeated until done), or, when it is not
   running, the cleaner opens the queue's store itself for maintenance (the
   files under the state directory, or etcd with ``--store etcd`` and the
   daemon's ``--etcd-*`` options);
3. appends one summary line to ``--log-file``.

The cleaner knows nothing of how jobs are kept: both steps go through the
daemon or through the store's contract (``jobqueue.storage``).

Exit status: 0, or 1 when a step really failed (the daemon refused or did
not answer, a job could not be deleted, the log could not be written), or 2
for invalid options, including a state directory that does not exist (a typo
in a cron entry must not pass silently).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from jobqueue import constants, errors
from jobqueue.cli.timespec import parse_age, parse_timespec
from jobqueue.paths import StatePaths
from jobqueue.storage.base import WATCHER_PAUSE, JobStore, PruneResult, pause_until
from jobqueue.storage.etcdoptions import STORE_ETCD, EtcdStoreSettings, add_etcd_arguments

LOG_NAME = "jobqueue-cleaner.log"
DEFAULT_JOB_AGE = "6h"
DEFAULT_ARCHIVE_AGE = "21d"
#: Seconds one PruneArchive call may take before the cleaner asks again.
PRUNE_TIMEOUT = 30


def paused_until(
    socket_path: str, open_queue_store: Callable[[], JobStore], now: float
) -> float | None:
    """Until when the cleaner is paused; None if it is not (or that cannot be told).

    Asks the daemon, or reads the store's setting when the daemon is not running.
    """
    from jobqueue.luxi.client import Client

    try:
        with Client(socket_path) as client:
            (until,) = client.query_config_values([WATCHER_PAUSE])
    except errors.NoMasterError:
        return _stored_pause(open_queue_store, now)
    except errors.GenericError:
        return None  # the steps below report a daemon that does not answer
    return float(until) if isinstance(until, (int, float)) and until > now else None


def _stored_pause(open_queue_store: Callable[[], JobStore], now: float) -> float | None:
    try:
        return pause_until(open_queue_store().read_setting(WATCHER_PAUSE), now)
    except errors.GenericError:
        return None


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


def prune_through_daemon(socket_path: str, age: float) -> PruneResult | None:
    """Have the daemon prune its archive; None if it is not running.

    Raises GenericError when the daemon refuses or does not answer.
    """
    from jobqueue.luxi.client import Client

    total = PruneResult()
    try:
        with Client(socket_path) as client:
            while True:
                answer = client.prune_archive(age, PRUNE_TIMEOUT)
                total.jobs += answer["jobs"]
                total.directories += answer["directories"]
                total.failures.extend(answer["failures"])
                if not answer["unfinished"]:
                    return total
    except errors.NoMasterError:
        return None


def open_store(queue_dir: str, etcd: EtcdStoreSettings | None) -> JobStore:
    """The queue's store opened for maintenance: etcd when ``etcd`` is given, else files.

    Raises GenericError when it cannot be opened.
    """
    if etcd is not None:
        from jobqueue.storage.etcd import EtcdJobStore

        return EtcdJobStore(etcd, owner=False)
    from jobqueue.storage.files import FileJobStore

    return FileJobStore(queue_dir, owner=False)


def prune_store(open_queue_store: Callable[[], JobStore], age: float, now: float) -> PruneResult:
    """Prune the archive of a queue whose daemon is not running, through its store."""
    try:
        store = open_queue_store()
    except errors.GenericError as err:
        return PruneResult(failures=[f"cannot open the job queue: {err}"])
    return store.prune_archive(age, now)


def prune_step(
    socket_path: str, open_queue_store: Callable[[], JobStore], age: float, now: float
) -> PruneResult:
    """Prune through the daemon, or the store when the daemon is not running."""
    try:
        pruned = prune_through_daemon(socket_path, age)
    except errors.GenericError as err:
        return PruneResult(failures=[f"pruning failed: {err}"])
    return pruned if pruned is not None else prune_store(open_queue_store, age, now)


def summary_line(archiving: str, pruned: PruneResult, failures: Sequence[str]) -> str:
    """The one line a run leaves in the log."""
    line = (
        f"{archiving}, pruned {pruned.jobs} archived jobs,"
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
    stamp = _local_time(now)
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
    add_etcd_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cleaner once; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        job_age = parse_age(args.job_age)
        archive_age = parse_timespec(args.archive_age)
        etcd = EtcdStoreSettings.from_args(args) if args.store == STORE_ETCD else None
    except ValueError as err:
        parser.error(str(err))
    paths = StatePaths.resolve(args.state_dir)
    if not os.path.isdir(paths.root):
        print(f"jobqueue-cleaner: no state directory at {paths.root}", file=sys.stderr)
        return 2
    socket_path = args.socket or paths.master_socket
    log_file = args.log_file or os.path.join(paths.log_dir, LOG_NAME)
    log_dir = None if args.log_file else paths.log_dir  # the state directory's own may be made

    def open_queue_store() -> JobStore:
        return open_store(paths.queue_dir, etcd)

    until = paused_until(socket_path, open_queue_store, time.time())
    if until is not None:
        line = f"paused until {_local_time(until)}; did nothing"
        return _log_or_complain(log_file, log_dir, line, [])
    archiving, failure = archive_step(socket_path, job_age)
    failures = [failure] if failure else []
    now = time.time()
    pruned = prune_step(socket_path, open_queue_store, archive_age, now)
    failures.extend(pruned.failures)
    line = summary_line(archiving, pruned, failures)
    return _log_or_complain(log_file, log_dir, line, failures)


def _log_or_complain(log_file: str, log_dir: str | None, line: str, failures: list[str]) -> int:
    """Append ``line`` to the log (making ``log_dir`` first, if given), print the failures.

    Returns the exit status: 1 if anything failed.
    """
    try:
        if log_dir is not None:
            os.makedirs(log_dir, mode=constants.DIR_MODE, exist_ok=True)
        append_log(log_file, line, time.time())
    except OSError as err:
        failures.append(f"cannot write {log_file}: {err.strerror}")
    for failure in failures:
        print(f"jobqueue-cleaner: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _local_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


if __name__ == "__main__":
    sys.exit(main())
