"""The etcd store's command output: files on the disk of the daemon that ran the command.

A job's output may reach the daemon's ``--max-output-size`` (1 GiB by
default) while etcd's whole database has a 2 GiB quota, so output never goes
into etcd. Each daemon keeps the output of the commands it runs in a
directory of its own host (``<state>/output``), laid out by ``fileoutput``
as the file store lays out its own::

    output/N/I.stdout                stream "stdout" of opcode I of live job N
    output/N/I.stderr
    output/archive/K/output-N/...    the same once job N is archived (K = N // 10000)

Every reader through this handle (the daemon's own, master or standby)
reads this host's files: a job's output is found on the host whose daemon
ran it, and nowhere else.

etcd decides what stays. The job moves first (in etcd), its output after
it (``archive``), so a crash in between leaves the output in the live
place, where it is still read; ``settle``, called once the store has
loaded the queue as its owner, moves it then, and deletes the output of
jobs etcd no longer has. ``prune`` deletes the output of every job etcd no
longer has, live or archived, wherever this host keeps it: the etcd
archive was pruned (by this daemon, the cleaner or another master), or a
job ran here before another master archived and pruned it.

Thread safety: the methods may be called from any thread. ``_lock``
serialises archiving with the removal of empty archive directories, so an
archive sub-directory is never removed between its creation and the move
into it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable

from jobqueue import constants
from jobqueue.errors import StorageError
from jobqueue.storage import layout
from jobqueue.storage.base import PruneResult
from jobqueue.storage.fileoutput import FileOutputs, FileOutputStream, PlainDisk

#: Given some job ids, those etcd still has, live or archived (StorageError).
StillThere = Callable[[set[int]], set[int]]


class LocalOutputs:
    """Command output under ``root`` on this host; see the module docstring."""

    def __init__(self, root: str, logger: logging.Logger) -> None:
        self.root = root
        self._disk = PlainDisk()
        self._files = FileOutputs.in_directory(root, self._disk, logger)
        self._log = logger
        self._lock = threading.Lock()

    def live_dir(self, job_id: int) -> str:
        return self._files.live_dir(job_id)

    def archived_dir(self, job_id: int) -> str:
        return self._files.archived_dir(job_id)

    # -- writing and reading: as the file store does ---------------------------------
    def open(self, job_id: int, op_index: int, stream: str) -> FileOutputStream:
        return self._files.open(job_id, op_index, stream)

    def sizes(self, job_id: int) -> dict[tuple[int, str], int]:
        return self._files.sizes(job_id)

    def read(self, job_id: int, op_index: int, stream: str, offset: int, max_bytes: int) -> bytes:
        return self._files.read(job_id, op_index, stream, offset, max_bytes)

    # -- following the jobs in etcd ------------------------------------------------------
    def archive(self, job_ids: Iterable[int]) -> None:
        """Move the output of jobs just archived in etcd to the archive tree, then sync.

        Failures are logged, not raised: the output stays readable in the
        live place, and ``settle`` moves it at the next start.
        """
        touched: set[str] = set()
        with self._lock:
            for job_id in job_ids:
                if not os.path.isdir(self.live_dir(job_id)):
                    continue  # it ran on another host, or had no output
                target_dir = os.path.dirname(self.archived_dir(job_id))
                try:
                    touched.update(self._make_dirs(target_dir))
                except OSError as err:
                    self._log.warning(
                        "Cannot archive the output of job %d: %s: %s",
                        job_id,
                        target_dir,
                        err.strerror,
                    )
                    continue
                if self._files.archive(job_id) is not None:
                    touched.update((self.root, target_dir))
            for directory in sorted(touched):
                try:
                    self._disk.fsync_dir(directory)
                except OSError as err:
                    self._log.warning("Cannot sync %s: %s", directory, err.strerror)

    def _make_dirs(self, path: str) -> list[str]:
        """Create ``path`` and its missing parents under ``root``; the parents to sync."""
        if os.path.isdir(path):
            return []
        parent = os.path.dirname(path)
        created = self._make_dirs(parent) if parent != self.root else []
        try:
            os.mkdir(path, constants.DIR_MODE)
        except FileExistsError:
            return created
        return [*created, parent]

    def delete_live(self, job_ids: Iterable[int]) -> None:
        """Delete the output of discarded jobs, quietly (they never ran: there is none)."""
        for job_id in job_ids:
            shutil.rmtree(self.live_dir(job_id), ignore_errors=True)

    def settle(self, live: set[int], is_archived: Callable[[int], bool]) -> None:
        """After loading the queue as its owner: archive or delete what a crash left.

        ``live`` holds every job id under etcd's ``jobs/``; output in the live
        place of any other job is moved to the archive when etcd archived
        the job, and deleted when etcd no longer has it. A failure to ask
        etcd leaves the output where it is (logged).
        """
        leftovers = [job_id for job_id in self._live_ids() if job_id not in live]
        for job_id in leftovers:
            try:
                archived = is_archived(job_id)
            except StorageError as err:
                self._log.warning("Cannot settle the output of job %d: %s", job_id, err)
                return
            if archived:
                self.archive([job_id])
                self._log.info("Moved the output of archived job %d to the archive", job_id)
            else:
                self._log.info("Deleting the output of job %d, which no longer exists", job_id)
                shutil.rmtree(self.live_dir(job_id), ignore_errors=True)

    def prune(self, still_there: StillThere, result: PruneResult) -> None:
        """Delete the output of jobs etcd no longer has, then empty archive directories.

        This host's directories are listed before etcd is asked, so a job
        archived meanwhile is seen in etcd's archive and keeps its output.
        Failures go to ``result``.
        """
        found = self._listed()
        if not found:
            return
        try:
            kept = still_there(set(found))
        except StorageError as err:
            result.failures.append(f"cannot tell which jobs keep their output: {err}")
            return
        for job_id, paths in sorted(found.items()):
            if job_id in kept:
                continue
            for path in paths:
                try:
                    shutil.rmtree(path)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    result.failures.append(f"cannot delete {path}: {err.strerror}")
        self._remove_empty_archive_dirs(result)

    def _live_ids(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(int(name) for name in names if name.isdigit() and name == str(int(name)))

    def _listed(self) -> dict[int, list[str]]:
        """Every job with output here: its directories, live and archived."""
        found: dict[int, list[str]] = {}
        for job_id in self._live_ids():
            found.setdefault(job_id, []).append(self.live_dir(job_id))
        for subdir in self._archive_subdirs():
            try:
                names = os.listdir(subdir)
            except FileNotFoundError:
                continue
            for name in names:
                archived = layout.output_job_id(name)
                if archived is not None:
                    found.setdefault(archived, []).append(os.path.join(subdir, name))
        return found

    def _archive_subdirs(self) -> list[str]:
        try:
            names = sorted(os.listdir(self._files.archive_root))
        except FileNotFoundError:
            return []
        paths = (os.path.join(self._files.archive_root, name) for name in names if name.isdigit())
        return [path for path in paths if os.path.isdir(path) and not os.path.islink(path)]

    def _remove_empty_archive_dirs(self, result: PruneResult) -> None:
        with self._lock:
            for subdir in self._archive_subdirs():
                try:
                    os.rmdir(subdir)
                except OSError as err:
                    if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        result.failures.append(f"cannot remove {subdir}: {err.strerror}")
                    continue
                result.directories += 1
