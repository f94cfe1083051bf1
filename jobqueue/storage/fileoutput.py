"""The file store's command output: a directory of stream files per job.

Layout (names in ``layout``)::

    queue/output/N/I.stdout        stream "stdout" of opcode I of live job N
    queue/output/N/I.stderr
    queue/archive/K/output-N/...   the same once job N is archived (K = N // 10000)

Directories are created ``0700``, files ``0600``. A stream file is opened
with ``O_APPEND`` and written with plain ``write`` calls, so readers see
each chunk at once; ``close`` fsyncs the file and the directories whose
entries it created, so a finished job's output survives a power loss.

The job moves first, its output after it (``archive``): an archived
``output-N`` without its ``job-N`` beside it is therefore always left over
from a pruning (or a crash) and may go once it is old. A crash between the
two moves leaves the output under ``queue/output/``, where it is still read
and from where ``settle`` moves it at the next start. Readers look in the
live place first, then in the archive, so a move never hides a stream.

Nothing here follows a symbolic link or opens anything but a regular
file, so a damaged or hostile state directory cannot make a read block or
a write land elsewhere.

Thread safety: the methods may be called from any thread; the store's one
writer per job guarantees one ``FileOutputStream`` per stream.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable
from typing import Protocol

from jobqueue import constants
from jobqueue.errors import StorageError
from jobqueue.storage import layout
from jobqueue.storage.base import OUTPUT_STREAMS, OutputStream, PruneResult
from jobqueue.storage.filedisk import storage_error

_STREAM_FILE = re.compile(r"([0-9]+)\.(" + "|".join(OUTPUT_STREAMS) + ")")


class FsyncDisk(Protocol):
    """The two sync calls the output files need (the store's ``Disk`` has them)."""

    def fsync(self, fd: int) -> None: ...
    def fsync_dir(self, path: str) -> None: ...


def stream_file_name(op_index: int, stream: str) -> str:
    """``I.stdout`` or ``I.stderr``; ValueError for another stream name."""
    if stream not in OUTPUT_STREAMS or op_index < 0:
        raise ValueError(f"No output stream {stream!r} of opcode {op_index}")
    return f"{op_index}.{stream}"


class FileOutputStream(OutputStream):
    """One stream file opened for appending; see the module docstring."""

    def __init__(self, path: str, new_dirs: list[str], disk: FsyncDisk) -> None:
        self._path = path
        self._disk = disk
        #: Directories whose new entries ``close`` must make durable.
        self._sync_dirs = [os.path.dirname(path), *new_dirs]
        try:
            self._fd: int | None = os.open(
                path,
                os.O_WRONLY
                | os.O_APPEND
                | os.O_CREAT
                | os.O_NOFOLLOW
                | os.O_NONBLOCK
                | os.O_CLOEXEC,
                constants.FILE_MODE,
            )
        except OSError as err:
            raise storage_error(f"Cannot open {path}", err) from err
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            self._fd = None
            raise StorageError(f"Cannot open {path}: not a regular file", errno.EINVAL)

    def append(self, data: bytes) -> None:
        if self._fd is None:
            raise StorageError(f"{self._path} is closed", errno.EBADF)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            raise storage_error(f"Cannot write {self._path}", err) from err

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self._disk.fsync(fd)
            for directory in self._sync_dirs:
                self._disk.fsync_dir(directory)
        except OSError as err:
            raise storage_error(f"Cannot sync {self._path}", err) from err
        finally:
            os.close(fd)


class PlainDisk:
    """The sync calls themselves, for output kept outside a file store (``etcdoutput``)."""

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileOutputs:
    """The output directories of one queue directory (``FileJobStore``), or of a
    directory of output alone (``in_directory``, for the etcd store)."""

    def __init__(
        self, queue_dir: str, archive_dir: str, disk: FsyncDisk, logger: logging.Logger
    ) -> None:
        self.live_root = os.path.join(queue_dir, layout.OUTPUT_DIR)
        self.archive_root = archive_dir
        self._disk = disk
        self._log = logger

    @classmethod
    def in_directory(cls, root: str, disk: FsyncDisk, logger: logging.Logger) -> FileOutputs:
        """Output alone under ``root``: ``root/N/`` live, ``root/archive/K/output-N/`` archived."""
        outputs = cls(root, os.path.join(root, layout.ARCHIVE_DIR), disk, logger)
        outputs.live_root = root
        return outputs

    def live_dir(self, job_id: int) -> str:
        return os.path.join(self.live_root, str(job_id))

    def archived_dir(self, job_id: int) -> str:
        return os.path.join(
            self.archive_root, layout.archive_subdir(job_id), layout.output_dir_name(job_id)
        )

    # -- writing -------------------------------------------------------------------
    def open(self, job_id: int, op_index: int, stream: str) -> FileOutputStream:
        """A stream of a live job, its directories created as needed; StorageError."""
        name = stream_file_name(op_index, stream)
        directory = self.live_dir(job_id)
        new_dirs: list[str] = []
        try:
            for path in (self.live_root, directory):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, constants.DIR_MODE)
                    new_dirs.append(os.path.dirname(path))
        except OSError as err:
            raise storage_error(f"Cannot create {directory}", err) from err
        return FileOutputStream(os.path.join(directory, name), new_dirs, self._disk)

    # -- reading -------------------------------------------------------------------
    def sizes(self, job_id: int) -> dict[tuple[int, str], int]:
        for directory in (self.live_dir(job_id), self.archived_dir(job_id)):
            try:
                return _sizes_in(directory)
            except FileNotFoundError:  # not there, or moved while we looked
                continue
            except OSError as err:
                raise storage_error(f"Cannot read the output of job {job_id}", err) from err
        return {}

    def read(self, job_id: int, op_index: int, stream: str, offset: int, max_bytes: int) -> bytes:
        name = stream_file_name(op_index, stream)
        if offset < 0 or max_bytes < 0:
            raise ValueError(f"Invalid range {offset}+{max_bytes}")
        for directory in (self.live_dir(job_id), self.archived_dir(job_id)):
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(os.path.join(directory, name), flags)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise storage_error(f"Cannot read the output of job {job_id}", err) from err
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                return _pread_all(fd, offset, max_bytes)
            except OSError as err:
                raise storage_error(f"Cannot read the output of job {job_id}", err) from err
            finally:
                os.close(fd)
        return b""

    # -- following the job ---------------------------------------------------------------
    def archive(self, job_id: int) -> str | None:
        """Move a just-archived job's output next to it; the directory to sync, if any.

        The archive sub-directory exists (the job was just moved into it).
        A failure is logged, not raised: the output stays readable where it
        is, and ``settle`` moves it at the next start.
        """
        try:
            os.rename(self.live_dir(job_id), self.archived_dir(job_id))
        except FileNotFoundError:
            return None
        except OSError as err:
            self._log.warning("Cannot archive the output of job %d: %s", job_id, err.strerror)
            return None
        return self.live_root

    def delete_live(self, job_id: int) -> None:
        """Delete a discarded job's output, quietly (it never ran: there is none)."""
        shutil.rmtree(self.live_dir(job_id), ignore_errors=True)

    def settle(self, is_live: Callable[[int], bool], is_archived: Callable[[int], bool]) -> None:
        """At start: move leftovers of interrupted archiving, delete those of gone jobs."""
        try:
            names = os.listdir(self.live_root)
        except FileNotFoundError:
            return
        for name in names:
            if not name.isdigit() or is_live(int(name)):
                continue
            job_id = int(name)
            if is_archived(job_id) and self.archive(job_id) is not None:
                self._log.info("Moved the output of archived job %d to the archive", job_id)
            elif not is_archived(job_id):
                self._log.info("Deleting the output of job %d, which no longer exists", job_id)
                shutil.rmtree(self.live_dir(job_id), ignore_errors=True)

    def prune(self, subdir: str, cutoff: float, result: PruneResult) -> None:
        """Delete, in one archive sub-directory, output whose job is gone and that is old.

        Called after the old jobs of ``subdir`` were deleted, so it deletes
        their output; ``cutoff`` spares the output of a job whose archiving
        is under way (its job file is moved first).
        """
        with os.scandir(subdir) as entries:
            outputs = [entry for entry in entries if layout.output_job_id(entry.name) is not None]
        for entry in outputs:
            job_id = layout.output_job_id(entry.name)
            assert job_id is not None
            try:
                if os.path.exists(os.path.join(subdir, layout.job_file_name(job_id))):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                shutil.rmtree(entry.path)
            except FileNotFoundError:
                continue
            except OSError as err:
                result.failures.append(f"cannot delete {entry.path}: {err.strerror}")


def _sizes_in(directory: str) -> dict[tuple[int, str], int]:
    """Sizes of the stream files in ``directory``; FileNotFoundError if any vanished."""
    sizes: dict[tuple[int, str], int] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _STREAM_FILE.fullmatch(entry.name)
            if match is not None and entry.is_file(follow_symlinks=False):
                sizes[int(match.group(1)), match.group(2)] = entry.stat().st_size
    return sizes


def _pread_all(fd: int, offset: int, max_bytes: int) -> bytes:
    """Read up to ``max_bytes`` at ``offset``, short only at the end of the file."""
    chunks: list[bytes] = []
    while max_bytes > 0:
        chunk = os.pread(fd, max_bytes, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        max_bytes -= len(chunk)
    return b"".join(chunks)
