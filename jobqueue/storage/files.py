"""The file store: one JSON file per job under a queue directory (``doc/storage.rst``).

Every job write is durable, directory included, before it returns, and a
crash leaves either the old or the new version: ``jobwriter`` writes a spare
file and exchanges it with ``job-N`` (or, where names cannot be exchanged,
renames a temp file over it), then fsyncs the directory. An opcode's start is
written as a start record instead (one flush, ``startrecords``), which is
the job's newest version until its file is replaced. Ids are reserved in blocks:
the ``serial`` file holds the highest id that may have been handed out,
written durably before any id of the block is returned, so an id is never
issued twice, even across crashes (ids skipped by a crash are never used).
A clean stop writes back the last id handed out, so ids stay dense.

The store owns the helpers of its other concerns, each knowing its part
of the layout (names in ``layout``): the archive and its pruning
(``filearchive``), the format version, the drain flag, named settings and
filter rules (``filesettings``), the write serials and start records of live
jobs (``startrecords``), command output in directories that follow their jobs
(``fileoutput``), the queue lock (``filelead``), and changes made by other
processes (``filefeed``, inotify), and the files of new jobs
(``filecreate``). The disk calls and the atomic write of
small files are in ``filedisk``. This is the only module that opens job
files.

Thread safety: writes of different jobs run in parallel; the caller
guarantees one writer per job. ``_lock`` guards the id counters.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from jobqueue import constants, safeio
from jobqueue.errors import JobFileCorrupted, JobQueueError, StorageError
from jobqueue.model import Job
from jobqueue.queuelock import QueueLock
from jobqueue.storage import layout
from jobqueue.storage.base import (
    ChangeFeed,
    JobStore,
    Leadership,
    OutputStream,
    PruneResult,
    decode_job_and_serial,
    encode_job,
)
from jobqueue.storage.filearchive import FileArchive
from jobqueue.storage.filecreate import NewJobFiles
from jobqueue.storage.filedisk import (
    SMALL_FILE_LIMIT,
    Disk,
    SmallFiles,
    storage_error,
)
from jobqueue.storage.filefeed import FileChangeFeed
from jobqueue.storage.filelead import FileLeadership
from jobqueue.storage.fileoutput import FileOutputs
from jobqueue.storage.filesettings import FileSettings
from jobqueue.storage.jobwriter import Choice, JobFileWriter
from jobqueue.storage.startrecords import MAX_RECORD, JobVersions, Newest, newer_of

#: The file store's public names; ``Disk`` is defined in ``filedisk``.
__all__ = ["Disk", "FileJobStore", "read_whole_version"]


class FileJobStore(JobStore):
    """Jobs as files under ``queue_dir``; see the module docstring.

    ``owner=False`` opens the directory of a running (or stopped) daemon
    for maintenance: nothing is created or cleaned up, the version is only
    checked, and no id may be allocated. The owner cleans up what a crash
    left when it loads the jobs, which it does once it holds the lock
    (``leadership``), never before. ``write_method`` forces the Python
    write path or the rename fallback (tests; see ``jobwriter.Choice``).
    ``spare_reserve``: empty spare files kept ready for new jobs (``spares``).
    ``sync_batches``: two or more new job files written together (concurrent
    submissions combined, ``filecreate``) are made durable by one sync of the
    file system (``syncfs``) where the kernel reports its errors, instead of
    a sync per file.
    """

    def __init__(
        self,
        queue_dir: str,
        *,
        disk: Disk | None = None,
        id_block: int = 1000,
        owner: bool = True,
        write_method: Choice = Choice.AUTO,
        spare_reserve: int = 0,
        sync_batches: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self.queue_dir = queue_dir
        self.archive_dir = os.path.join(queue_dir, layout.ARCHIVE_DIR)
        self.corrupt_dir = os.path.join(queue_dir, layout.CORRUPT_DIR)
        self._disk = disk or Disk()
        self._owner = owner
        self._id_block = id_block
        self._log = logger or logging.getLogger(__name__)
        self._small_files = SmallFiles(self._disk)
        self._write_method = write_method
        self._spare_reserve = spare_reserve
        self._sync_batches = sync_batches
        self._writer: JobFileWriter | None = None
        self._writer_lock = threading.Lock()  # guards the start of _writer and of _versions
        self._versions = JobVersions(queue_dir, self._disk, self._log, self._file_write_serial)
        self._new_files = NewJobFiles(queue_dir, self._owned_writer, self._versions)
        self._lock = threading.Lock()  # guards _last_id, _reserved
        self._leadership: FileLeadership | None = None
        self._outputs = FileOutputs(queue_dir, self.archive_dir, self._disk, self._log)
        self._archive = FileArchive(
            queue_dir, self._disk, self._outputs, self._log, self._newest_reserved_id
        )
        self._settings = FileSettings(queue_dir, self._disk, self._small_files, self._log)
        if owner:
            self._prepare_dirs()
        elif not os.path.isdir(queue_dir):
            raise JobQueueError(f"No job queue in {queue_dir}: no such directory")
        self._format = self._settings.read_format(owner)
        self._last_id = self._reserved = self._read_serial()

    # -- set-up --------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        for path in (self.queue_dir, self.archive_dir):
            os.makedirs(path, mode=constants.DIR_MODE, exist_ok=True)

    def _clean_temp_files(self) -> None:
        """Clean up what interrupted writes left: start the job-file writer, which removes
        temporary files and keeps spare files for reuse (``jobwriter``)."""
        self._owned_writer()

    def _start_writer(self) -> JobFileWriter:
        """The job-file writer; it removes temp files a crash left and reuses spares."""
        try:
            return JobFileWriter(
                self.queue_dir,
                self._disk,
                choice=self._write_method,
                allow_helper=type(self._disk) is Disk,
                spare_reserve=self._spare_reserve,
                sync_batches=self._sync_batches,
                logger=self._log,
            )
        except OSError as err:
            raise storage_error(f"Cannot prepare {self.queue_dir} for writing", err) from err

    def _read_serial(self) -> int:
        path = self._path(layout.SERIAL_FILE)
        try:
            text = safeio.read_regular_file(path, SMALL_FILE_LIMIT)[0].decode("ascii")
            return int(text.strip() or "0")
        except FileNotFoundError:
            return 0
        except OSError as err:
            raise JobQueueError(f"Cannot read the job serial in {path}: {err.strerror}") from err
        except ValueError as err:  # UnicodeDecodeError included
            raise JobQueueError(f"Cannot read the job serial in {path}: {err}") from err

    def _above_the_archive(self, serial: int) -> int:
        """``serial``, raised to the highest archived id if it is behind (a lost serial file)."""
        highest = self._archive.highest_id()
        if highest > serial:
            self._log.warning(
                "The job serial (%d) is behind the archive; continuing above job %d",
                serial,
                highest,
            )
        return max(serial, highest)

    def _path(self, name: str) -> str:
        return os.path.join(self.queue_dir, name)

    def _job_path(self, job_id: int) -> str:
        return self._path(layout.job_file_name(job_id))

    # -- ids -------------------------------------------------------------------
    def allocate_ids(self, count: int) -> list[int]:
        if not self._owner:
            raise JobQueueError("A store opened for maintenance allocates no ids")
        with self._lock:
            first = self._last_id + 1
            if self._last_id + count > self._reserved:
                reserved = self._last_id + count + self._id_block
                self._write_serial_locked(reserved)
                self._reserved = reserved
            self._last_id += count
            return list(range(first, first + count))

    def release_unused_ids(self) -> None:
        with self._lock:
            if self._owner and self._reserved > self._last_id:
                self._write_serial_locked(self._last_id)
                self._reserved = self._last_id
            self._owner = False  # nothing is allocated after this

    def _write_serial_locked(self, value: int) -> None:
        self._small_files.write(self._path(layout.SERIAL_FILE), f"{value}\n".encode(), new=False)

    def _newest_reserved_id(self) -> int | None:
        """The highest id any process may have handed out; None if the serial is unreadable."""
        try:
            return max(self._read_serial(), self._reserved)
        except JobQueueError:
            return None

    # -- live jobs -------------------------------------------------------------
    def load_jobs(self) -> Iterator[Job]:
        """Every live job; anything under a job's name that is not one goes to ``corrupt/``.

        The owner first removes what interrupted writes left and continues
        ids above the archive too. Moved aside, with a log line each: a name
        with a non-canonical id (``job-007``), anything but a regular file
        (no link is followed, no FIFO or device opened), a file owned by
        another user than the daemon's (or root), unparseable content, an id
        other than the name's. No id named by a job file, loaded or not, is
        allocated afterwards. A job file that is also in the archive (a
        crash in the middle of archiving it without ``renameat2``) is
        archived: its live name goes.
        """
        if self._owner:
            self._clean_temp_files()
            self._outputs.settle(
                lambda job_id: os.path.exists(self._job_path(job_id)), self._archive.holds
            )
            with self._lock:
                serial = max(self._reserved, self._read_serial())
                self._last_id = self._reserved = self._above_the_archive(serial)
        versions = self._owned_versions() if self._owner else self._versions
        newest_record = versions.record_lookup()
        highest = 0
        with os.scandir(self.queue_dir) as entries:
            found = [
                (entry.name, entry.is_file(follow_symlinks=False))
                for entry in entries
                if layout.looks_like_job(entry.name)
            ]
        for name, regular in found:
            job_id = layout.job_id_of(name)
            highest = max(highest, job_id or 0)  # even a corrupt job's id
            try:
                loaded = self._load_one(name, regular)
            except (OSError, JobFileCorrupted) as err:
                self._move_aside(name, err)
                loaded = None
            if loaded is None:
                self._versions.forget(job_id)
                continue
            job, write_serial = newer_of(*loaded, newest_record(loaded[0].id))
            if self._owner:
                self._versions.loaded(job.id, write_serial)
            yield job
        with self._lock:
            if highest > self._reserved:  # a serial file behind its jobs: never reuse an id
                self._write_serial_locked(highest)
                self._last_id = self._reserved = highest

    def _load_one(self, name: str, regular: bool) -> tuple[Job, int] | None:
        """The job in file ``name`` and its write serial; None if it was already archived.

        Raises what is wrong with the file.

        ``regular``: what the directory listing says; anything else is not opened.
        """
        file_id = layout.job_id_of(name)
        if file_id is None:
            raise JobFileCorrupted("not a job file name: its id has leading zeros or is 0")
        path = self._path(name)
        if not regular:
            raise JobFileCorrupted(f"not a regular file but {safeio.kind(os.lstat(path).st_mode)}")
        data, info = safeio.read_regular_file(path)  # the listing may be stale: checked again
        if info.st_uid not in (os.geteuid(), 0):
            raise JobFileCorrupted(f"owned by uid {info.st_uid}, not by the daemon's user")
        if info.st_nlink > 1 and self._finish_archiving(file_id, info):
            return None
        job, write_serial = decode_job_and_serial(data)
        if job.id != file_id:
            raise JobFileCorrupted(f"File holds job {job.id}")
        return job, write_serial

    # -- start records (``startrecords``) ------------------------------------------
    def _owned_versions(self) -> JobVersions:
        """The versions, with the start files taken over (at ``load_jobs`` or the first start).

        A queue of an older format is marked with the current one first: a
        daemon that knows no start records must not load it any more.
        """
        if not self._versions.taken_over():
            self._owned_writer()  # the same rule: only once the queue is this store's
            with self._writer_lock:
                if not self._versions.taken_over():
                    self._format = self._settings.mark_current_format(self._format)
                    self._versions.take_over(self._owned_writer().overwrite)
        return self._versions

    def _file_write_serial(self, job_id: int) -> int | None:
        """The write serial in ``job-N``; None if there is no such job to read."""
        try:
            return decode_job_and_serial(read_whole_version(self._job_path(job_id)))[1]
        except (OSError, JobFileCorrupted):
            return None

    def _finish_archiving(self, job_id: int, info: os.stat_result) -> bool:
        """Whether the live file is the archived one too; if so, drop its live name."""
        try:
            archived = os.lstat(self._archive.path(job_id))
        except OSError:
            return False
        if (archived.st_dev, archived.st_ino) != (info.st_dev, info.st_ino):
            return False
        os.unlink(self._job_path(job_id))
        self._disk.fsync_dir(self.queue_dir)
        self._log.info("Job %d was being archived at a crash; its archiving is complete", job_id)
        return True

    def _move_aside(self, name: str, reason: BaseException) -> None:
        """Move ``name`` into ``corrupt/`` under a free name there (``name``, ``name.1``, ...).

        The queue lock is held and ``corrupt/`` is private, so a name found
        free stays free. If the move fails, the file stays where it is, is
        not loaded, and is tried again at the next start.
        """
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        try:
            os.makedirs(self.corrupt_dir, mode=constants.DIR_MODE, exist_ok=True)
            target = os.path.join(self.corrupt_dir, name)
            for attempt in itertools.count(1):
                if not os.path.lexists(target):
                    break
                target = os.path.join(self.corrupt_dir, f"{name}.{attempt}")
            os.rename(self._path(name), target)
            self._disk.fsync_dir(self.queue_dir)
        except OSError as err:
            self._log.error(
                "Job file %s is corrupt (%s) and cannot be moved to %s (%s); not loaded",
                name,
                why,
                self.corrupt_dir,
                err.strerror,
            )
            return
        self._log.error("Job file %s is corrupt (%s); moved to %s", name, why, target)

    def create_jobs(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        return self._new_files.create(jobs)

    def replace_job(self, job: Job) -> None:
        self._replace(job.id, encode_job(job, self._versions.next_serial(job.id)))

    def _replace(self, job_id: int, data: bytes) -> None:
        """Replace ``job-N`` durably; its start record, now older, is freed."""
        name = layout.job_file_name(job_id)
        try:
            self._owned_writer().replace(name, data)
        except OSError as err:
            raise storage_error(f"Cannot write {self._path(name)}", err) from err
        self._versions.replaced(job_id)

    def record_start(self, job: Job) -> None:
        """Write the job's start as a start record (one flush; ``startrecords``).

        A version larger than ``MAX_RECORD`` replaces the job file instead.
        """
        serial = self._versions.next_serial(job.id)
        data = encode_job(job, serial)
        if len(data) > MAX_RECORD:
            self._replace(job.id, data)
            return
        try:
            self._owned_versions().write_start(job.id, serial, data)
        except OSError as err:
            raise storage_error(f"Cannot record the start of job {job.id}", err) from err

    def _owned_writer(self) -> JobFileWriter:
        """The job-file writer, started at ``load_jobs`` or the first job write.

        Not before: a store that does not hold the queue yet changes nothing.
        """
        writer = self._writer
        if writer is None:
            if not self._owner:
                raise JobQueueError("A store opened for maintenance writes no jobs")
            with self._writer_lock:
                if self._writer is None:
                    self._writer = self._start_writer()
                writer = self._writer
        return writer

    def write_method(self) -> str:
        """How job files are written here (logged when the writer starts)."""
        return self._owned_writer().method if self._owner else "none (maintenance)"

    def discard_jobs(self, job_ids: Sequence[int]) -> tuple[list[int], StorageError | None]:
        removed: list[int] = []
        for job_id in job_ids:
            try:
                os.unlink(self._job_path(job_id))
            except FileNotFoundError:
                pass
            except OSError as err:
                return removed, storage_error(f"Cannot remove job {job_id}", err)
            self._outputs.delete_live(job_id)
            self._versions.forget(job_id)
            removed.append(job_id)
        try:
            self._disk.fsync_dir(self.queue_dir)
        except OSError as err:
            return removed, storage_error(f"Cannot sync {self.queue_dir}", err)
        return removed, None

    def read_job(self, job_id: int) -> Job | None:
        """See the contract; a FIFO or link under the job's name is an error, never waited on.

        A live job's start record counts where it is newer than its file
        (looked up after the file was read).
        """
        return _newest(job_id, self._read_stored(job_id), self._versions.newest_record)

    def read_jobs(self, job_ids: Sequence[int]) -> list[Job | None]:
        """``read_job`` of each; the start records are looked up once, after every file.

        (A store opened for maintenance reads its start files for a lookup.)
        """
        stored = [self._read_stored(job_id) for job_id in job_ids]
        if not any(found is not None and found.live for found in stored):
            return [None if found is None else found.job for found in stored]
        newest_record = self._versions.record_lookup()
        return [
            _newest(job_id, found, newest_record)
            for job_id, found in zip(job_ids, stored, strict=True)
        ]

    def _read_stored(self, job_id: int) -> _Stored | None:
        """The job as its file holds it, live or archived; None if there is none."""
        for path in (self._job_path(job_id), self._archive.path(job_id)):
            try:
                data = read_whole_version(path)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENAMETOOLONG):  # a huge id: no such file
                    continue
                reason = err.strerror or os.strerror(err.errno or 0)
                raise StorageError(f"Cannot read job {job_id}: {reason}", err.errno or 0) from err
            job, write_serial = decode_job_and_serial(data)
            return _Stored(job, write_serial, live=path == self._job_path(job_id))
        return None

    # -- archive (``filearchive``) -----------------------------------------------
    def archive_jobs(self, job_ids: Iterable[int]) -> tuple[list[int], StorageError | None]:
        archived, failure = self._archive.archive(job_ids)
        for job_id in archived:
            self._versions.forget(job_id)
        return archived, failure

    def is_archived(self, job_id: int) -> bool:
        return self._archive.holds(job_id)

    def archived_ids(self) -> list[int]:
        return self._archive.ids()

    def prune_archive(self, max_age: float, now: float, budget: float | None = None) -> PruneResult:
        return self._archive.prune(max_age, now, budget)

    # -- settings and filter rules (``filesettings``) ----------------------------
    def is_drained(self) -> bool:
        return self._settings.is_drained()

    def set_drained(self, drained: bool) -> None:
        self._settings.set_drained(drained)

    def read_setting(self, name: str) -> str | None:
        return self._settings.read_setting(name)

    def write_setting(self, name: str, value: str | None) -> None:
        self._settings.write_setting(name, value)

    def load_filters(self) -> list[dict[str, Any]]:
        return self._settings.load_filters()

    def replace_filter(self, rule: dict[str, Any]) -> None:
        self._settings.replace_filter(rule)

    def delete_filter(self, uuid: str) -> bool:
        return self._settings.delete_filter(uuid)

    # -- command output ------------------------------------------------------------
    def open_output(self, job_id: int, op_index: int, stream: str) -> OutputStream:
        return self._outputs.open(job_id, op_index, stream)

    def output_sizes(self, job_id: int) -> dict[tuple[int, str], int]:
        return self._outputs.sizes(job_id)

    def read_output(
        self, job_id: int, op_index: int, stream: str, offset: int, max_bytes: int
    ) -> bytes:
        return self._outputs.read(job_id, op_index, stream, offset, max_bytes)

    # -- other processes' changes ------------------------------------------------
    def change_feed(self) -> ChangeFeed:
        return FileChangeFeed(self.queue_dir, logger=self._log)

    def leadership(self, name: str) -> Leadership:
        if self._leadership is None:
            self._leadership = FileLeadership(QueueLock(self._path(layout.LOCK_FILE)))
        return self._leadership

    def close(self) -> None:
        if self._leadership is not None:
            self._leadership.release()
        self._new_files.close()
        if self._writer is not None:
            self._writer.close()


def read_whole_version(path: str, attempts: int = 3) -> bytes:
    """The content of ``path`` as one whole version, though another process writes it.

    A replaced job file's old inode becomes a spare and is rewritten later
    (``jobwriter``), so a read that began on the old version must not be
    trusted if the name moved on meanwhile: it is trusted only if ``path``
    still names the same, unchanged inode after the read (identity, change
    time and size), else read again; the last attempt is returned as read.
    """
    data = b""
    for _ in range(attempts):
        data, before = safeio.read_regular_file(path)  # no link followed, no FIFO opened
        after = os.lstat(path)
        if (after.st_ino, after.st_ctime_ns, after.st_size) == (
            before.st_ino,
            before.st_ctime_ns,
            before.st_size,
        ):
            break
    return data


class _Stored(NamedTuple):
    """A job as its file holds it: the version, its write serial, whether it is live."""

    job: Job
    serial: int
    live: bool


def _newest(
    job_id: int, stored: _Stored | None, newest_record: Callable[[int], Newest | None]
) -> Job | None:
    """The stored job, or its start record where that is newer (live jobs only)."""
    if stored is None:
        return None
    if not stored.live:
        return stored.job
    return newer_of(stored.job, stored.serial, newest_record(job_id))[0]
