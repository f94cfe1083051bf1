"""The file store's disk calls and its atomic write of small files.

``Disk`` is every system call a write of the file store makes, so that
tests (``faults``, ``FaultyDisk``) can make single calls fail. ``SmallFiles``
replaces a whole small file (``serial``, ``version``, settings, filter
rules) atomically and durably through it; job files have their own write
path (``jobwriter``). ``storage_error`` turns an ``OSError`` into the
``StorageError`` the contract raises.

Thread safety: ``SmallFiles.write`` may be called from any thread; each
write gets a temp file of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os

from jobqueue import constants, safeio
from jobqueue.errors import StorageError
from jobqueue.storage import layout
from jobqueue.storage.durable import exchange_paths, sync_filesystem


class Disk:
    """The file-system calls the file store makes; tests replace single calls.

    With this class itself, job writes use the compiled helper when it was
    built (``jobwriter``); a subclass gets every step as a call here.
    """

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def write_at(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def datasync(self, fd: int) -> None:
        """``fdatasync``: the data, and the metadata needed to read it back."""
        os.fdatasync(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def rename_noreplace(self, src: str, dst: str) -> None:
        """Rename unless ``dst`` exists (``FileExistsError``); see ``safeio``."""
        safeio.rename_noreplace(src, dst)

    def exchange(self, path_a: str, path_b: str) -> None:
        """Exchange two names atomically (``renameat2`` ``RENAME_EXCHANGE``)."""
        exchange_paths(path_a, path_b)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync_filesystem(self, fd: int) -> None:
        """``syncfs``: all of the file system holding ``fd`` made durable."""
        sync_filesystem(fd)


class SmallFiles:
    """Atomic, durable replacement of small files through a ``Disk``.

    One per store: its counter keeps the temp names of concurrent writes apart.
    """

    def __init__(self, disk: Disk) -> None:
        self._disk = disk
        self._pid = os.getpid()
        self._temp_counter = itertools.count()

    def write(self, path: str, data: bytes, *, new: bool) -> None:
        """Atomically and durably replace ``path`` with ``data``.

        ``new`` means ``path`` does not exist yet. Raises ``StorageError``; on
        failure the temp file is removed and the previous version of ``path``
        is untouched, except when only the directory sync failed: a new
        ``path`` is then removed, a replaced one keeps the new version.
        """
        directory, name = os.path.split(path)
        temp = os.path.join(
            directory, layout.temp_file_name(name, self._pid, next(self._temp_counter))
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
            unlink_quietly(temp)
            raise storage_error(f"Cannot write {path}", err) from err
        try:
            self._disk.fsync_dir(directory)
        except OSError as err:
            if new:
                unlink_quietly(path)  # a name that is not durable must not stay visible
            raise storage_error(f"Cannot write {path}", err) from err


def storage_error(what: str, err: OSError) -> StorageError:
    """``StorageError`` "<what>: <strerror>", carrying the errno."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    return StorageError(f"{what}: {reason}", err.errno or 0)


#: The one-line files (``serial``, ``version``) are at most this long; more is damage.
SMALL_FILE_LIMIT = 64


def remove_or_warn(path: str, logger: logging.Logger) -> None:
    """Remove ``path``; a failure other than its being gone already is logged, not raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:  # e.g. a directory: left alone, and never loaded
        logger.warning("Cannot remove %s: %s", path, err.strerror)


def unlink_quietly(path: str) -> None:
    """Remove ``path``, ignoring any failure (it is gone or cannot be helped)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
