"""Durable one-file-per-job storage, and an in-memory twin for unit tests.

Layout under the queue directory (see ``doc/storage.rst``)::

    job-N                 one live job, JSON
    archive/<N//10000>/   archived jobs
    corrupt/              files that could not be parsed, moved aside at load
    serial version drain lock

Every job write is: temp file in the same directory, write, fsync, rename over
the old file, and fsync of the directory when the name is new, so a crash
leaves either the old or the new version. Ids are reserved in blocks: the
``serial`` file holds the highest id that may have been handed out, written
durably before any id of the block is returned, so an id is never issued
twice, even across crashes (ids skipped by a crash are simply never used).

Thread safety: file writes of different jobs run in parallel; the caller
guarantees one writer per job. ``_lock`` guards the index and the serial.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import dataclasses
import errno
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from jobqueue import constants
from jobqueue.constants import FINALIZED, Status
from jobqueue.errors import JobFileCorrupted, JobQueueError, StorageError
from jobqueue.model import Job, Timestamp, default_summary

#: Threads writing one batch of job files in parallel: a single thread waits
#: for one journal commit per file, many share them (about 6x here).
_BATCH_WRITERS = 16
JOB_FILE_RE = re.compile(r"^job-([0-9]+)$")
Summarize = Callable[[dict[str, Any]], str]


@dataclasses.dataclass(slots=True)
class IndexEntry:
    """What listing a job needs, kept in memory for every live job."""

    id: int
    status: Status
    priority: int
    received_timestamp: Timestamp | None
    start_timestamp: Timestamp | None
    end_timestamp: Timestamp | None
    summary: list[str]

    @classmethod
    def of(cls, job: Job, summarize: Summarize) -> IndexEntry:
        return cls(
            id=job.id,
            status=job.status,
            priority=job.priority,
            received_timestamp=job.received_timestamp,
            start_timestamp=job.start_timestamp,
            end_timestamp=job.end_timestamp,
            summary=[summarize(op.input) for op in job.ops],
        )


def archive_subdir(job_id: int) -> str:
    """The archive sub-directory name that holds ``job_id``."""
    return str(job_id // constants.JOBS_PER_ARCHIVE_DIR)


def encode_job(job: Job) -> bytes:
    """The bytes of a job file."""
    return json.dumps(job.to_dict(), separators=(",", ":")).encode("utf-8") + b"\n"


def decode_job(data: bytes) -> Job:
    """Parse a job file; ``JobFileCorrupted`` for anything that is not a job."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise JobFileCorrupted(f"Not valid JSON: {err}") from err
    return Job.from_dict(raw)


class JobStore(abc.ABC):
    """What the queue needs from storage; one contract, two implementations."""

    def __init__(self, summarize: Summarize = default_summary) -> None:
        self._summarize = summarize
        self._lock = threading.Lock()  # guards _index and the id counters
        self._index: dict[int, IndexEntry] = {}

    # -- ids -----------------------------------------------------------------
    @abc.abstractmethod
    def allocate_ids(self, count: int) -> list[int]:
        """Hand out ``count`` new, never-before-issued ids, in increasing order."""

    # -- jobs ----------------------------------------------------------------
    @abc.abstractmethod
    def _write(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        """Make ``jobs`` durable; one result per job (None = written)."""

    @abc.abstractmethod
    def _read(self, job_id: int) -> Job | None:
        """Read a live or archived job, None if neither exists."""

    @abc.abstractmethod
    def _move_to_archive(self, job_ids: Sequence[int], moved: list[int]) -> None:
        """Move live jobs into the archive, appending each id to ``moved`` once it moved."""

    @abc.abstractmethod
    def _scan(self) -> Iterator[Job]:
        """Yield every parseable live job once (moving bad files aside)."""

    @abc.abstractmethod
    def archived_ids(self) -> list[int]:
        """Ids of all archived jobs, sorted."""

    @abc.abstractmethod
    def is_drained(self) -> bool:
        """Whether the drain flag is set."""

    @abc.abstractmethod
    def set_drained(self, drained: bool) -> None:
        """Set or clear the drain flag durably."""

    def load(self) -> list[Job]:
        """Build the index from storage; return the live jobs not yet finished."""
        unfinished: list[Job] = []
        index: dict[int, IndexEntry] = {}
        for job in self._scan():
            index[job.id] = IndexEntry.of(job, self._summarize)
            if job.status not in FINALIZED:
                unfinished.append(job)
        with self._lock:
            self._index = index
        unfinished.sort(key=lambda job: job.id)
        return unfinished

    def write_job(self, job: Job) -> None:
        """Write one job durably; ``StorageError`` leaves the old version intact."""
        failure = self.write_jobs([job])[0]
        if failure is not None:
            raise failure

    def write_jobs(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        """Write several jobs, each durably; one result per job, None = written."""
        results = self._write(jobs)
        entries = [
            IndexEntry.of(job, self._summarize)
            for job, failure in zip(jobs, results, strict=True)
            if failure is None
        ]
        with self._lock:
            for entry in entries:
                self._index[entry.id] = entry
        return results

    def read_job(self, job_id: int) -> Job | None:
        """Read a job from the live queue or the archive; None if it does not exist."""
        return self._read(job_id)

    def exists(self, job_id: int) -> bool:
        """Whether the job is live or archived (without reading it)."""
        return self.index_entry(job_id) is not None or self._is_archived(job_id)

    @abc.abstractmethod
    def _is_archived(self, job_id: int) -> bool:
        """Whether an archived copy of the job exists."""

    def archive_jobs(self, job_ids: Iterable[int]) -> list[int]:
        """Move live jobs to the archive; return those moved (others were not live).

        Raises ``StorageError`` when a move or a directory sync fails; the
        index then still follows the files: a job is live or archived, never both.
        """
        moved: list[int] = []
        try:
            self._move_to_archive(sorted(set(job_ids)), moved)
        finally:
            with self._lock:
                for job_id in moved:
                    self._index.pop(job_id, None)
        return moved

    def discard_jobs(self, job_ids: Sequence[int]) -> None:
        """Delete live jobs that were written but never acknowledged to anyone.

        Raises ``StorageError`` if they cannot be removed durably; the index
        keeps whatever is still on disk.
        """
        removed: list[int] = []
        try:
            self._remove(job_ids, removed)
        finally:
            with self._lock:
                for job_id in removed:
                    self._index.pop(job_id, None)

    @abc.abstractmethod
    def _remove(self, job_ids: Sequence[int], removed: list[int]) -> None:
        """Delete live job files, appending each id to ``removed`` once it is gone."""

    def archive_job(self, job_id: int) -> bool:
        """Archive one live job; False if it is not in the live queue."""
        return bool(self.archive_jobs([job_id]))

    def index_entry(self, job_id: int) -> IndexEntry | None:
        with self._lock:
            return self._index.get(job_id)

    def index_entries(self, job_ids: Iterable[int] | None = None) -> list[IndexEntry]:
        """Index entries sorted by id: all live jobs, or those of ``job_ids`` that are live."""
        with self._lock:
            if job_ids is None:
                return sorted(self._index.values(), key=lambda entry: entry.id)
            return [self._index[i] for i in job_ids if i in self._index]

    def live_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._index)

    def live_count(self) -> int:
        with self._lock:
            return len(self._index)


class Disk:
    """The file-system calls the file store makes; tests replace single calls."""

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileJobStore(JobStore):
    """Jobs as files under ``queue_dir``; see the module docstring."""

    def __init__(
        self,
        queue_dir: str,
        *,
        summarize: Summarize = default_summary,
        disk: Disk | None = None,
        id_block: int = 1000,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(summarize)
        self.queue_dir = queue_dir
        self.archive_dir = os.path.join(queue_dir, constants.ARCHIVE_DIR)
        self.corrupt_dir = os.path.join(queue_dir, constants.CORRUPT_DIR)
        self._disk = disk or Disk()
        self._batch_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._id_block = id_block
        self._log = logger or logging.getLogger(__name__)
        self._temp_counter = itertools.count()
        self._prepare_dirs()
        self._check_version()
        self._clean_temp_files()
        self._last_id = self._reserved = self._read_serial()

    # -- set-up --------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        for path in (self.queue_dir, self.archive_dir):
            os.makedirs(path, mode=constants.DIR_MODE, exist_ok=True)

    def _check_version(self) -> None:
        path = os.path.join(self.queue_dir, constants.VERSION_FILE)
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            self.write_file(path, f"{constants.QUEUE_FORMAT_VERSION}\n".encode(), new=True)
            return
        except (OSError, UnicodeDecodeError) as err:
            raise JobQueueError(f"Cannot read the queue format version in {path}: {err}") from err
        if text != str(constants.QUEUE_FORMAT_VERSION):
            raise JobQueueError(
                f"Queue format version {text!r} in {path} is not supported (this jobqueue "
                f"reads version {constants.QUEUE_FORMAT_VERSION}); refusing to start"
            )

    def _clean_temp_files(self) -> None:
        for name in os.listdir(self.queue_dir):
            if name.endswith(constants.TEMP_SUFFIX):
                self._log.info("Removing temporary file %s left by a crash", name)
                os.unlink(os.path.join(self.queue_dir, name))

    def _read_serial(self) -> int:
        path = os.path.join(self.queue_dir, constants.SERIAL_FILE)
        try:
            with open(path, encoding="ascii") as handle:
                return int(handle.read().strip() or "0")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            raise JobQueueError(f"Cannot read the job serial in {path}: {err}") from err

    # -- low-level writes ----------------------------------------------------
    def write_file(self, path: str, data: bytes, *, new: bool) -> None:
        """Atomically replace ``path`` with ``data``; fsync the directory if ``new``.

        ``new`` means ``path`` does not exist yet. Raises ``StorageError``; on
        failure the temp file is removed and the previous version of ``path``
        is untouched (a new ``path`` whose directory sync failed is removed).
        """
        directory, name = os.path.split(path)
        temp = os.path.join(
            directory, f".{name}.{os.getpid()}.{next(self._temp_counter)}{constants.TEMP_SUFFIX}"
        )
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, constants.FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[self._disk.write(fd, view.tobytes()) :]
                self._disk.fsync(fd)
            finally:
                os.close(fd)
            self._disk.replace(temp, path)
        except OSError as err:
            _unlink_quietly(temp)
            raise _storage_error(f"Cannot write {path}", err) from err
        if new:
            try:
                self._disk.fsync_dir(directory)
            except OSError as err:
                _unlink_quietly(path)  # a name that is not durable must not stay visible
                raise _storage_error(f"Cannot write {path}", err) from err

    def _job_path(self, job_id: int) -> str:
        return os.path.join(self.queue_dir, f"{constants.JOB_FILE_PREFIX}{job_id}")

    def _archived_path(self, job_id: int) -> str:
        return os.path.join(
            self.archive_dir, archive_subdir(job_id), f"{constants.JOB_FILE_PREFIX}{job_id}"
        )

    # -- JobStore ------------------------------------------------------------
    def allocate_ids(self, count: int) -> list[int]:
        with self._lock:
            first = self._last_id + 1
            if self._last_id + count > self._reserved:
                reserved = self._last_id + count + self._id_block
                path = os.path.join(self.queue_dir, constants.SERIAL_FILE)
                self.write_file(path, f"{reserved}\n".encode(), new=False)
                self._reserved = reserved
            self._last_id += count
            return list(range(first, first + count))

    def _write(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        new = {job.id for job in jobs if self.index_entry(job.id) is None}
        if len(jobs) > 1:  # parallel fsyncs share the file system's journal commits
            results = list(self._batch_writers().map(self._write_one, jobs))
        else:
            results = [self._write_one(job) for job in jobs]
        new_paths = [
            self._job_path(job.id)
            for job, failure in zip(jobs, results, strict=True)
            if failure is None and job.id in new
        ]
        if new_paths:
            try:
                self._disk.fsync_dir(self.queue_dir)
            except OSError as err:
                failure = _storage_error(f"Cannot sync {self.queue_dir}", err)
                for path in new_paths:  # not durable, so never acknowledge them
                    _unlink_quietly(path)
                unsynced = set(new_paths)
                results = [
                    failure if self._job_path(job.id) in unsynced else res
                    for job, res in zip(jobs, results, strict=True)
                ]
        return results

    def _remove(self, job_ids: Sequence[int], removed: list[int]) -> None:
        for job_id in job_ids:
            try:
                os.unlink(self._job_path(job_id))
            except FileNotFoundError:
                pass
            except OSError as err:
                raise _storage_error(f"Cannot remove job {job_id}", err) from err
            removed.append(job_id)
        try:
            self._disk.fsync_dir(self.queue_dir)
        except OSError as err:
            raise _storage_error(f"Cannot sync {self.queue_dir}", err) from err

    def _write_one(self, job: Job) -> StorageError | None:
        try:
            self.write_file(self._job_path(job.id), encode_job(job), new=False)
        except StorageError as err:
            return err
        return None

    def _batch_writers(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that write the files of one batch in parallel (started on first use)."""
        with self._lock:
            if self._batch_pool is None:
                self._batch_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_BATCH_WRITERS, thread_name_prefix="job-writer"
                )
            return self._batch_pool

    def _read(self, job_id: int) -> Job | None:
        for path in (self._job_path(job_id), self._archived_path(job_id)):
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENAMETOOLONG):  # a huge id: no such file
                    continue
                raise
            return decode_job(data)
        return None

    def _is_archived(self, job_id: int) -> bool:
        return os.path.exists(self._archived_path(job_id))

    def _move_to_archive(self, job_ids: Sequence[int], moved: list[int]) -> None:
        """Rename each job into its archive sub-directory, then sync the directories.

        Stops at the first failed move; raises ``StorageError`` for it or for
        a failed sync, after the moves already done are in ``moved``.
        """
        failure: StorageError | None = None
        touched: set[str] = set()
        for job_id in job_ids:
            target = self._archived_path(job_id)
            try:
                if not self._archive_one(job_id, target, touched):
                    continue
            except OSError as err:
                failure = _storage_error(f"Cannot archive job {job_id}", err)
                break
            touched.add(os.path.dirname(target))
            moved.append(job_id)
        for directory in [*sorted(touched), self.queue_dir] if touched else []:
            try:
                self._disk.fsync_dir(directory)
            except OSError as err:
                failure = failure or _storage_error(f"Cannot sync {directory}", err)
        if failure is not None:
            raise failure

    def _archive_one(self, job_id: int, target: str, touched: set[str]) -> bool:
        """Rename one live job to ``target``; False if it is not live. Raises OSError."""
        target_dir = os.path.dirname(target)
        if target_dir not in touched and not os.path.isdir(target_dir):
            os.makedirs(target_dir, mode=constants.DIR_MODE, exist_ok=True)
            self._disk.fsync_dir(self.archive_dir)
        try:
            self._disk.replace(self._job_path(job_id), target)
        except FileNotFoundError:
            return False
        return True

    def _scan(self) -> Iterator[Job]:
        highest = 0
        for name in os.listdir(self.queue_dir):
            match = JOB_FILE_RE.match(name)
            if not match:
                continue
            path = os.path.join(self.queue_dir, name)
            try:
                with open(path, "rb") as handle:
                    job = decode_job(handle.read())
                if job.id != int(match.group(1)):
                    raise JobFileCorrupted(f"File holds job {job.id}")
            except (OSError, JobFileCorrupted) as err:
                self._move_aside(name, err)
                continue
            highest = max(highest, job.id)
            yield job
        if highest > self._reserved:  # a serial file behind its jobs: never reuse an id
            with self._lock:
                self._last_id = self._reserved = highest
                self.write_file(
                    os.path.join(self.queue_dir, constants.SERIAL_FILE),
                    f"{highest}\n".encode(),
                    new=False,
                )

    def _move_aside(self, name: str, reason: BaseException) -> None:
        os.makedirs(self.corrupt_dir, mode=constants.DIR_MODE, exist_ok=True)
        os.replace(os.path.join(self.queue_dir, name), os.path.join(self.corrupt_dir, name))
        self._disk.fsync_dir(self.queue_dir)
        self._log.error("Job file %s is corrupt (%s); moved to %s", name, reason, self.corrupt_dir)

    def archived_ids(self) -> list[int]:
        ids: list[int] = []
        for subdir in os.listdir(self.archive_dir):
            path = os.path.join(self.archive_dir, subdir)
            if os.path.isdir(path):
                ids.extend(int(m.group(1)) for m in map(JOB_FILE_RE.match, os.listdir(path)) if m)
        return sorted(ids)

    def is_drained(self) -> bool:
        return os.path.exists(os.path.join(self.queue_dir, constants.DRAIN_FILE))

    def set_drained(self, drained: bool) -> None:
        """Create or remove the drain file durably; ``StorageError`` leaves it as it was."""
        path = os.path.join(self.queue_dir, constants.DRAIN_FILE)
        exists = os.path.exists(path)
        if drained and not exists:
            self.write_file(path, b"", new=True)
        elif not drained and exists:
            try:
                os.unlink(path)
                self._disk.fsync_dir(self.queue_dir)
            except OSError as err:
                with contextlib.suppress(OSError):  # not durably gone: show it again
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, constants.FILE_MODE))
                raise _storage_error(f"Cannot remove {path}", err) from err


class MemoryJobStore(JobStore):
    """The same contract held in memory; for unit tests of other modules.

    Jobs are stored serialised, so a caller's later changes to a ``Job``
    object never leak into the store without a write, as with files.
    """

    def __init__(self, summarize: Summarize = default_summary) -> None:
        super().__init__(summarize)
        self._live: dict[int, bytes] = {}
        self._archive: dict[int, bytes] = {}
        self._last_id = 0
        self._drained = False

    def allocate_ids(self, count: int) -> list[int]:
        with self._lock:
            first = self._last_id + 1
            self._last_id += count
            return list(range(first, first + count))

    def _write(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        for job in jobs:
            self._live[job.id] = encode_job(job)
        return [None] * len(jobs)

    def _read(self, job_id: int) -> Job | None:
        data = self._live.get(job_id) or self._archive.get(job_id)
        return None if data is None else decode_job(data)

    def _is_archived(self, job_id: int) -> bool:
        return job_id in self._archive

    def _remove(self, job_ids: Sequence[int], removed: list[int]) -> None:
        for job_id in job_ids:
            self._live.pop(job_id, None)
            removed.append(job_id)

    def _move_to_archive(self, job_ids: Sequence[int], moved: list[int]) -> None:
        for job_id in job_ids:
            if job_id in self._live:
                self._archive[job_id] = self._live.pop(job_id)
                moved.append(job_id)

    def _scan(self) -> Iterator[Job]:
        for data in list(self._live.values()):
            yield decode_job(data)

    def archived_ids(self) -> list[int]:
        return sorted(self._archive)

    def is_drained(self) -> bool:
        return self._drained

    def set_drained(self, drained: bool) -> None:
        self._drained = drained


def _storage_error(what: str, err: OSError) -> StorageError:
    """``StorageError`` "<what>: <strerror>", carrying the errno."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    return StorageError(f"{what}: {reason}", err.errno or 0)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
