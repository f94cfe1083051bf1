"""Start records: an opcode's start made durable with one device flush.

Before an opcode runs, the version of its job that says so must be durable,
or a crash could run it twice. Written like any other version (a spare
file synced, exchanged with ``job-N``, the directory synced), that costs two
device flushes one after the other, and with few workers that wait is what
bounds the queue (``doc/performance.rst``). A *start record* costs one: the
version is written in place into a *start file* (``.start-<n>``), whose
name is already durable, and ``fdatasync``ed. Nothing is renamed,
so the directory needs no sync.

The record is the job's newest version until the job's next write replaces
``job-N`` (its end, a log line, a cancel); once that is durable, the start
file is free for another start. Which of a job's file and a record is newer
is told by the *write serial* both carry (``base.WRITE_SERIAL_KEY``, one more
than the job's previous write). A record counts only if

* it is whole: its first line holds the length and CRC-32 of the version
  that follows, so a record torn by a crash in the middle of its write does
  not count (that start was never acknowledged: its opcode never ran);
* ``job-N`` is live and holds a lower write serial.

A record is padded with spaces to a multiple of ``BLOCK`` bytes and written
from offset 0; a file never shrinks (what follows the record is ignored), so
a record that fits leaves the file's size alone and ``fdatasync`` has no
metadata to write. A job whose version is larger than ``MAX_RECORD`` is
written as a replacement of its file instead.

``JobVersions`` is what the file store asks: the write serials of its live
jobs and, once it owns the queue, its pool of start files (``StartFiles``);
``read_records`` is how anyone, owner or not, finds the records a directory
holds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import threading
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

from jobqueue import constants, safeio
from jobqueue.errors import JobFileCorrupted
from jobqueue.model import Job
from jobqueue.storage import layout
from jobqueue.storage.base import decode_job, decode_job_and_serial
from jobqueue.storage.filedisk import remove_or_warn, storage_error

if TYPE_CHECKING:
    from jobqueue.storage.filedisk import Disk

#: A record is padded to a multiple of this (one page of most file systems).
BLOCK: Final = 4096
#: Versions larger than this are not written as start records.
MAX_RECORD: Final = 64 * 1024
#: Free start files kept at start; more are removed.
MAX_KEPT: Final = 256
_MAGIC: Final = b"jobqueue-start"
_HEADER = re.compile(rb"jobqueue-start ([0-9]{1,9}) ([0-9a-f]{8})\n")


def encode_record(version: bytes) -> bytes:
    """A record of ``version``: its header, the version, spaces up to a whole block."""
    header = b"%s %d %08x\n" % (_MAGIC, len(version), zlib.crc32(version))
    length = len(header) + len(version)
    return header + version + b" " * (-length % BLOCK)


def decode_record(data: bytes) -> bytes | None:
    """The version a start file's content holds; None if it holds no whole one."""
    match = _HEADER.match(data)
    if match is None:
        return None
    start, length = match.end(), int(match.group(1))
    version = data[start : start + length]
    if len(version) != length or zlib.crc32(version) != int(match.group(2), 16):
        return None
    return version


class Found(NamedTuple):
    """The start files of a directory: every name, and the whole records by name."""

    names: list[str]
    records: dict[str, bytes]


def read_records(directory: str) -> Found:
    """The start files of ``directory`` and the versions they hold.

    A name under which something else than a regular file is found (a link,
    a FIFO) is listed but holds no record; it is never opened blocking.
    """
    with os.scandir(directory) as entries:
        names = sorted(entry.name for entry in entries if layout.is_start_name(entry.name))
    records: dict[str, bytes] = {}
    for name in names:
        version = read_record(os.path.join(directory, name))
        if version is not None:
            records[name] = version
    return Found(names, records)


def read_record(path: str) -> bytes | None:
    """The version the start file ``path`` holds; None if it holds no whole one or is unreadable."""
    try:
        data, _ = safeio.read_regular_file(path, MAX_RECORD + BLOCK)
    except OSError:
        return None
    return decode_record(data)


class Record(NamedTuple):
    """A whole start record: the file that holds it, its write serial, the version."""

    name: str
    serial: int
    version: bytes


#: A record as a reader needs it: (write serial, version).
Newest = tuple[int, bytes]


def newer_of(job: Job, write_serial: int, record: Newest | None) -> tuple[Job, int]:
    """The job file's version and write serial, or the record's if that is newer."""
    if record is not None and record[0] > write_serial:
        return decode_job(record[1]), record[0]
    return job, write_serial


def newest_records(found: Found) -> dict[int, Record]:
    """Per job, the whole record with the highest write serial.

    A record whose version does not parse as a job counts for nothing (a
    whole record is only ever written with a job in it).
    """
    best: dict[int, Record] = {}
    for name, version in found.records.items():
        try:
            job, serial = decode_job_and_serial(version)
        except JobFileCorrupted:
            continue
        if job.id not in best or serial > best[job.id].serial:
            best[job.id] = Record(name, serial, version)
    return best


class StartFiles:
    """The owner's start files: which job's newest version each holds, and the writes.

    One writer per job at a time (the caller's rule); a start file is
    written only by the writer that took it. ``_lock`` guards every field.
    """

    def __init__(
        self,
        directory: str,
        disk: Disk,
        overwrite: Callable[[str, bytes], None],
        logger: logging.Logger,
    ) -> None:
        self._directory = directory
        self._disk = disk
        self._overwrite = overwrite
        self._log = logger
        self._lock = threading.Lock()
        self._free: list[str] = []
        self._held: dict[int, Record] = {}
        self._next_number = 0

    def adopt(self, names: list[str], held: dict[int, Record]) -> None:
        """Take over the start files found at start; ``held`` maps a job to its newest record.

        Anything but a regular file under a start file's name is removed, and
        so are files too large to hold a record and free files beyond ``MAX_KEPT``.
        """
        in_use = {record.name for record in held.values()}
        free: list[str] = []
        for name in names:
            path = os.path.join(self._directory, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if name in in_use:
                continue
            too_large = info.st_size > MAX_RECORD + BLOCK
            if len(free) >= MAX_KEPT or not stat.S_ISREG(info.st_mode) or too_large:
                remove_or_warn(path, self._log)
            else:
                free.append(name)
        with self._lock:
            self._free = free
            self._held = dict(held)
            numbers = (layout.start_number_of(name) for name in names)
            self._next_number = 1 + max((n for n in numbers if n is not None), default=-1)

    def write(self, job_id: int, serial: int, version: bytes) -> None:
        """Make ``version`` (write serial ``serial``) job ``job_id``'s durable newest version.

        Raises OSError; the job's previous newest version still counts then,
        and the failed record is erased (best effort) so that it cannot
        count after a crash.
        """
        name = self._take()
        try:
            self._overwrite(name, encode_record(version))
        except OSError:
            _erase(os.path.join(self._directory, name))
            with self._lock:
                self._free.append(name)
            raise
        with self._lock:
            previous = self._held.get(job_id)
            self._held[job_id] = Record(name, serial, version)
            if previous is not None:
                self._free.append(previous.name)

    def newest(self, job_id: int) -> tuple[int, bytes] | None:
        """The write serial and version of the job's record, None if it holds none."""
        with self._lock:
            held = self._held.get(job_id)
        return None if held is None else (held.serial, held.version)

    def release(self, job_id: int) -> None:
        """A newer version of the job is durable (or the job is gone): free its start file."""
        with self._lock:
            held = self._held.pop(job_id, None)
            if held is not None:
                self._free.append(held.name)

    def count(self) -> tuple[int, int]:
        """Start files free and held (for tests and logs)."""
        with self._lock:
            return len(self._free), len(self._held)

    def _take(self) -> str:
        """A free start file, else a new one made durable first."""
        with self._lock:
            if self._free:
                return self._free.pop()
            name = layout.start_file_name(self._next_number)
            self._next_number += 1
        self._make(name)
        return name

    def _make(self, name: str) -> None:
        """Create ``name`` one block long, and make its content and name durable; OSError.

        Its content is no record (spaces): it counts for nothing until written.
        """
        path = os.path.join(self._directory, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, constants.FILE_MODE)
            try:
                if self._disk.write_at(fd, b" " * BLOCK, 0) != BLOCK:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self._disk.datasync(fd)
            finally:
                os.close(fd)
            self._disk.fsync_dir(self._directory)
        except OSError:
            remove_or_warn(path, self._log)
            raise


def _erase(path: str) -> None:
    """Overwrite a record's first line, directly (not through ``Disk``: an undo)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.pwrite(fd, b" " * len(_MAGIC), 0)
        finally:
            os.close(fd)


class JobVersions:
    """Which stored version of each live job is the newest, for the file store.

    Keeps the write serial of every live job the store loaded or made and,
    once ``take_over`` was called (by the owner, at load or its first
    start), the start files. Before that, and in a store opened for
    maintenance, records are read from the directory when asked for.
    ``file_serial(job_id)`` reads the write serial in ``job-N`` (None if there
    is no such job to read). Each job's entry has one writer at a time (the
    store's rule); the dict itself is only read and set whole per key.
    """

    def __init__(
        self,
        directory: str,
        disk: Disk,
        logger: logging.Logger,
        file_serial: Callable[[int], int | None],
    ) -> None:
        self._directory = directory
        self._disk = disk
        self._log = logger
        self._file_serial = file_serial
        self._serials: dict[int, int] = {}
        self._starts: StartFiles | None = None

    def taken_over(self) -> bool:
        return self._starts is not None

    def take_over(self, overwrite: Callable[[str, bytes], None]) -> None:
        """Take over the start files, holding each record newer than its job's file.

        ``overwrite(name, data)``: how a start file is rewritten and synced
        (``JobFileWriter.overwrite``). ``StorageError`` if the directory
        cannot be listed.
        """
        found = self._read()
        held = {
            job_id: record
            for job_id, record in newest_records(found).items()
            if self._is_newer(record, job_id)
        }
        starts = StartFiles(self._directory, self._disk, overwrite, self._log)
        starts.adopt(found.names, held)
        if held:
            self._log.info("%d jobs had started since their files were written", len(held))
        self._starts = starts

    def record_lookup(self) -> Callable[[int], Newest | None]:
        """A job's newest record, from what is held, else from one reading of the directory."""
        if self._starts is not None:
            return self._starts.newest
        records = newest_records(self._read())
        stored = {job_id: (record.serial, record.version) for job_id, record in records.items()}
        return stored.get

    def newest_record(self, job_id: int) -> Newest | None:
        return self.record_lookup()(job_id)

    def loaded(self, job_id: int, serial: int) -> None:
        """The store loaded or made the job, whose newest version has ``serial``."""
        self._serials[job_id] = serial

    def next_serial(self, job_id: int) -> int:
        """The write serial of the job's next version (one more than the newest stored)."""
        current = self._serials.get(job_id)
        if current is None:  # a job the store neither loaded nor made: as stored
            record = self.newest_record(job_id)
            current = max(self._file_serial(job_id) or 0, 0 if record is None else record[0])
        self._serials[job_id] = current + 1
        return current + 1

    def write_start(self, job_id: int, serial: int, version: bytes) -> None:
        """Make ``version`` the job's durable newest version, as a start record; OSError."""
        if self._starts is None:
            raise RuntimeError("start records are written only once the start files are taken over")
        self._starts.write(job_id, serial, version)

    def replaced(self, job_id: int) -> None:
        """The job file now holds the job's newest version: its start file is free."""
        if self._starts is not None:
            self._starts.release(job_id)

    def forget(self, job_id: int | None) -> None:
        """The job is no longer live here (archived, discarded, not loadable)."""
        if job_id is not None:
            self._serials.pop(job_id, None)
            self.replaced(job_id)

    def _is_newer(self, record: Record, job_id: int) -> bool:
        """Whether ``record`` is newer than ``job-N`` (which must be there to read)."""
        on_file = self._file_serial(job_id)
        return on_file is not None and record.serial > on_file

    def _read(self) -> Found:
        try:
            return read_records(self._directory)
        except OSError as err:
            raise storage_error(f"Cannot list {self._directory}", err) from err
