"""The file store's archive: finished jobs moved out of the queue, and their pruning.

Layout (names in ``layout``)::

    queue/archive/K/job-N       archived job N, K = N // 10000
    queue/archive/K/output-N/   its command output (``fileoutput``)

Archiving renames ``job-N`` into its sub-directory, created on demand,
without ever replacing an archived job (``Disk.rename_noreplace``), then
moves the job's output; the directories are synced after a batch. A crash
between the link and the unlink of the no-``renameat2`` fallback leaves one
file under both names; the store's load finishes that archiving.

Pruning deletes archived jobs older than a cutoff, then their output, then
empty sub-directories, but never those the daemon may archive into next
(those of live jobs and of the two newest id ranges), so an archiving in
another process never finds its directory gone.

Thread safety: the methods may be called from any thread. ``_lock`` orders
archiving against the removal of empty directories (a directory being
archived into is never removed).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from jobqueue import constants
from jobqueue.errors import StorageError
from jobqueue.storage import layout
from jobqueue.storage.base import PruneResult
from jobqueue.storage.filedisk import Disk, storage_error
from jobqueue.storage.fileoutput import FileOutputs

#: rmdir failures meaning "not empty (any more)" or "already gone": not errors.
_KEEP_ERRNOS = frozenset({errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT})


class FileArchive:
    """The archive of one queue directory; used by ``FileJobStore`` only.

    ``newest_id`` gives the highest id that may have been handed out by
    any process, or None when that cannot be known (pruning then protects
    only the sub-directories of live jobs).
    """

    def __init__(
        self,
        queue_dir: str,
        disk: Disk,
        outputs: FileOutputs,
        logger: logging.Logger,
        newest_id: Callable[[], int | None],
    ) -> None:
        self.queue_dir = queue_dir
        self.archive_dir = os.path.join(queue_dir, layout.ARCHIVE_DIR)
        self._disk = disk
        self._outputs = outputs
        self._log = logger
        self._newest_id = newest_id
        self._lock = threading.Lock()

    def path(self, job_id: int) -> str:
        """Where job ``job_id`` is (or would be) archived."""
        return os.path.join(
            self.archive_dir, layout.archive_subdir(job_id), layout.job_file_name(job_id)
        )

    # -- archiving -------------------------------------------------------------
    def archive(self, job_ids: Iterable[int]) -> tuple[list[int], StorageError | None]:
        """Rename each job, then its output, into its archive sub-directory; sync them.

        Stops at the first failed move of a job (see the contract).
        """
        moved: list[int] = []
        failure: StorageError | None = None
        touched: set[str] = set()
        with self._lock:
            for job_id in sorted(set(job_ids)):
                target = self.path(job_id)
                try:
                    if not self._archive_one(job_id, target, touched):
                        continue
                except OSError as err:
                    failure = storage_error(f"Cannot archive job {job_id}", err)
                    break
                touched.add(os.path.dirname(target))
                moved.append(job_id)
                output_parent = self._outputs.archive(job_id)
                if output_parent is not None:
                    touched.add(output_parent)
            for directory in [*sorted(touched), self.queue_dir] if touched else []:
                try:
                    self._disk.fsync_dir(directory)
                except OSError as err:
                    failure = failure or storage_error(f"Cannot sync {directory}", err)
        return moved, failure

    def _archive_one(self, job_id: int, target: str, touched: set[str]) -> bool:
        """Rename one live job to ``target``; False if it is not live. Raises OSError.

        An archived job is never replaced: if ``target`` exists and is not
        this very file, the job stays live (False) and the conflict is logged.
        """
        target_dir = os.path.dirname(target)
        if target_dir not in touched and not os.path.isdir(target_dir):
            os.makedirs(target_dir, mode=constants.DIR_MODE, exist_ok=True)
            self._disk.fsync_dir(self.archive_dir)
        source = os.path.join(self.queue_dir, layout.job_file_name(job_id))
        try:
            self._disk.rename_noreplace(source, target)
        except FileNotFoundError:
            return False
        except FileExistsError:
            if os.path.samestat(os.lstat(source), os.lstat(target)):
                os.unlink(source)  # an archiving interrupted between link and unlink
                return True
            self._log.error(
                "Job %d stays live: %s already holds an archived job of that id", job_id, target
            )
            return False
        return True

    # -- looking up --------------------------------------------------------------
    def holds(self, job_id: int) -> bool:
        """Whether job ``job_id`` is archived."""
        return os.path.exists(self.path(job_id))

    def ids(self) -> list[int]:
        """Every archived job's id, sorted. Raises OSError."""
        ids: list[int] = []
        for subdir in os.listdir(self.archive_dir):
            path = os.path.join(self.archive_dir, subdir)
            if os.path.isdir(path):
                found = (layout.job_id_of(name) for name in os.listdir(path))
                ids.extend(job_id for job_id in found if job_id is not None)
        return sorted(ids)

    def highest_id(self) -> int:
        """The highest archived id, 0 for none.

        Only the highest archive sub-directories holding a job are listed,
        not the whole archive: ids are archived where ``archive_subdir`` says.
        """
        try:
            subdirs = [n for n in os.listdir(self.archive_dir) if n.isascii() and n.isdigit()]
        except FileNotFoundError:
            return 0
        for subdir in sorted(subdirs, key=int, reverse=True):
            try:
                names = os.listdir(os.path.join(self.archive_dir, subdir))
            except OSError:  # not a directory, or unreadable: ``prune`` reports those
                continue
            ids = [job_id for job_id in map(layout.job_id_of, names) if job_id is not None]
            if ids:
                return max(ids)
        return 0

    # -- pruning ---------------------------------------------------------------
    def prune(self, max_age: float, now: float, budget: float | None = None) -> PruneResult:
        """Delete archived ``job-N`` files modified before ``now - max_age``, their output, then
        empty dirs.

        Directories the daemon may archive into next (those of live jobs and
        of the two newest id ranges) are kept even when empty, so a
        concurrent archiving in another process never finds its directory gone.
        """
        result = PruneResult()
        deadline = None if budget is None else time.monotonic() + budget
        try:
            names = sorted(os.listdir(self.archive_dir))
        except FileNotFoundError:
            return result
        except OSError as err:
            result.failures.append(f"cannot list {self.archive_dir}: {err.strerror}")
            return result
        protected = self._protected_subdirs()
        for name in names:
            path = os.path.join(self.archive_dir, name)
            if not name.isdigit() or not os.path.isdir(path) or os.path.islink(path):
                continue
            if deadline is not None and time.monotonic() > deadline:
                result.unfinished = True
                break
            try:
                _prune_directory(path, now - max_age, result)
                self._outputs.prune(path, now - max_age, result)
            except OSError as err:
                result.failures.append(f"cannot list {path}: {err.strerror}")
                continue
            if name not in protected:
                self._remove_empty_dir(path, result)
        return result

    def _protected_subdirs(self) -> set[str]:
        protected = {
            layout.archive_subdir(job_id)
            for job_id in map(layout.job_id_of, os.listdir(self.queue_dir))
            if job_id is not None
        }
        newest = self._newest_id()
        if newest is not None:
            subdir = int(layout.archive_subdir(newest))
            protected.update({str(subdir), str(subdir - 1)})
        return protected

    def _remove_empty_dir(self, path: str, result: PruneResult) -> None:
        with self._lock:
            try:
                os.rmdir(path)
            except OSError as err:
                if err.errno not in _KEEP_ERRNOS:
                    result.failures.append(f"cannot remove {path}: {err.strerror}")
                return
        result.directories += 1


def _prune_directory(path: str, cutoff: float, result: PruneResult) -> None:
    """Delete the ``job-N`` files in ``path`` last modified before ``cutoff``."""
    with os.scandir(path) as entries:
        for entry in entries:
            if layout.job_id_of(entry.name) is None:
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
            result.jobs += 1
