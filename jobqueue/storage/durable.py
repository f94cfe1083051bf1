"""One durable file write, and directory fsyncs shared by concurrent writers.

A ``Directory`` writes whole files into one directory: open (or create) a
file, write it from offset 0, cut it to length, fsync it, exchange it with
its target name or rename it over that name, then wait for a directory
fsync that began after the rename. Concurrent writers share directory
fsyncs (a group commit): whoever finds no fsync running starts one for
everybody who renamed before it; the others wait for its outcome. It also
overwrites a file in place (from offset 0, then ``fdatasync``), the write of
a start record (``startrecords``).

Two implementations with one interface:

* ``_fastwrite.Directory``, a C helper built by ``setup.py`` when a compiler
  and the Python headers are there: the whole write, group commit included,
  runs in one release of the interpreter lock (``_fastwrite.c``);
* ``PythonDirectory``, its pure-Python twin, which makes every file-system
  call through a ``Disk`` (so tests can fail or record single steps) and
  uses ``renameat2`` through ctypes for the exchange.

``jobwriter`` picks one; nothing else uses this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib
import importlib.util
import itertools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from jobqueue.storage.filedisk import Disk

#: (failed step, errno) of a write: "open", "write", "fsync", "rename" or "fsync_dir".
Failure = tuple[str, int]
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class Directory(Protocol):
    """Durable writes into one directory (see the module docstring)."""

    def write_file(
        self,
        name: str,
        target: str,
        data: bytes,
        file_mode: int,
        exchange: bool,
        create: bool,
        sync_dir: bool,
        /,
    ) -> Failure | None:
        """Write ``name``, move it to ``target``, share a directory sync; None or the failure."""

    def sync(self) -> None:
        """Return once a directory fsync begun after this call succeeded; OSError."""

    def exchange(self, name_a: str, name_b: str, /) -> None:
        """Exchange two names atomically; OSError."""

    def overwrite(self, name: str, data: bytes, /) -> Failure | None:
        """Write the existing ``name`` from offset 0 and fdatasync it; None or the failure."""

    def create_many(
        self, entries: list[tuple[str, str, bytes, bool]], file_mode: int, /
    ) -> list[Failure | None]:
        """(name, target, data, create) each: written unsynced, one syncfs, then renamed.

        None or the failure for each entry: "open", "write", "syncfs" (every
        written entry) or "rename". The caller syncs the directory afterwards.
        """


def compiled_directory(dir_fd: int) -> Directory | None:
    """A ``_fastwrite.Directory`` on ``dir_fd``; None if the helper was not built.

    None too for a helper built from older sources than this module's (one
    without every method of ``Directory``, left by an earlier build): the
    writer then uses the Python twin, and logs so.
    """
    try:
        module: Any = importlib.import_module("jobqueue.storage._fastwrite")
    except ImportError:
        return None
    if not all(hasattr(module.Directory, name) for name in _DIRECTORY_METHODS):
        return None
    directory: Directory = module.Directory(dir_fd)
    return directory


_DIRECTORY_METHODS = ("write_file", "sync", "exchange", "overwrite", "create_many")


def helper_built() -> bool:
    """Whether the compiled helper can be imported."""
    return importlib.util.find_spec("jobqueue.storage._fastwrite") is not None


def _load_libc_function(name: str, argtypes: list[Any]) -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_libc_function(
    "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
)
_SYNCFS = _load_libc_function("syncfs", [ctypes.c_int])
#: The first Linux whose ``syncfs`` reports the write-back errors it meets.
_SYNCFS_REPORTS_ERRORS = (5, 8)


def exchange_paths(path_a: str, path_b: str) -> None:
    """Exchange two paths atomically (``renameat2`` ``RENAME_EXCHANGE``); raises OSError."""
    if _RENAMEAT2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not in this C library")
    result = _RENAMEAT2(
        _AT_FDCWD, os.fsencode(path_a), _AT_FDCWD, os.fsencode(path_b), _RENAME_EXCHANGE
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path_a, None, path_b)


def sync_filesystem(fd: int) -> None:
    """``syncfs``: everything written to the file system of ``fd`` is durable; OSError.

    Linux documents it as giving the guarantees of an ``fsync`` of every file
    of that file system (see ``filesystem_sync_refusal`` for the kernels).
    """
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not in this C library")
    if _SYNCFS(fd) != 0:  # ctypes lets other threads run meanwhile
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def filesystem_sync_refusal(release: str | None = None) -> str | None:
    """None if ``sync_filesystem`` can stand for an fsync of each file here, else why not.

    Before Linux 5.8 ``syncfs`` returned 0 even when writing a file back
    failed, so a failed write could not be told from a durable one.
    ``release`` is the kernel's (``os.uname().release`` by default).
    """
    if _SYNCFS is None:
        return "syncfs is not in this C library"
    release = os.uname().release if release is None else release
    numbers = []
    for part in release.split("-")[0].split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        numbers.append(int(digits) if digits else 0)
    if tuple(numbers) < _SYNCFS_REPORTS_ERRORS:
        return f"Linux {release} does not report write-back errors through syncfs"
    return None


def write_whole(
    disk: Disk, path: str, data: bytes, file_mode: int, create: bool, *, sync: bool
) -> tuple[str, OSError] | None:
    """Write ``data`` as the whole content of ``path`` through ``disk``, then close it.

    ``create`` makes a new file (it must not exist); otherwise the existing
    file is written from offset 0 and cut to length. ``sync`` fsyncs it
    before closing. Returns None, or the failed step ("open", "write" or
    "fsync") and its error.
    """
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_CREAT | os.O_EXCL if create else 0
    try:
        fd = os.open(path, flags, file_mode)
    except OSError as err:
        return "open", err
    step = "write"
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[disk.write(fd, view.tobytes()) :]
            if not create:
                os.ftruncate(fd, len(data))
            if sync:
                step = "fsync"
                disk.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        return step, err
    return None


class PythonDirectory:
    """The Python twin of ``_fastwrite.Directory``: every call through ``disk``.

    ``dir_fd``: a descriptor of the directory, kept open by the caller, on
    which ``create_many`` syncs the file system; without one, the directory
    is opened here and kept open. (``syncfs`` reports a write-back error
    only to descriptors opened before another caller was told of it.)

    ``_done`` (and its lock) guards the group-commit counters: tickets are
    handed out after each rename; ``_synced`` is the highest ticket known
    durable, ``_failed`` the highest that a failed fsync covered.
    """

    def __init__(self, disk: Disk, path: str, dir_fd: int | None = None) -> None:
        self.disk = disk
        self.path = path
        if dir_fd is None:
            dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            weakref.finalize(self, os.close, dir_fd)
        self._dir_fd = dir_fd
        self._done = threading.Condition(threading.Lock())
        self._requested = self._synced = self._failed = 0
        self._failed_errno = 0
        self._syncing = False

    def write_file(
        self,
        name: str,
        target: str,
        data: bytes,
        file_mode: int,
        exchange: bool,
        create: bool,
        sync_dir: bool,
        /,
    ) -> Failure | None:
        path, target_path = os.path.join(self.path, name), os.path.join(self.path, target)
        failure = write_whole(self.disk, path, data, file_mode, create, sync=True)
        if failure is not None:
            return failure[0], errno_of(failure[1])
        step = "rename"
        try:
            if exchange:
                self.disk.exchange(path, target_path)
            else:
                self.disk.replace(path, target_path)
            if sync_dir:
                step = "fsync_dir"
                self.sync()
        except OSError as err:
            return step, errno_of(err)
        return None

    def sync(self) -> None:
        with self._done:
            self._requested += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._failed >= ticket:
                    raise OSError(self._failed_errno, os.strerror(self._failed_errno))
                if self._syncing:
                    self._done.wait()
                    continue
                self._sync_for_everyone_locked()

    def _sync_for_everyone_locked(self) -> None:
        """fsync the directory for every ticket handed out so far (releases the lock)."""
        self._syncing = True
        target = self._requested
        self._done.release()
        error = errno.EIO  # unless fsync_dir returns
        try:
            self.disk.fsync_dir(self.path)
            error = 0
        except OSError as err:
            error = errno_of(err)
        finally:
            self._done.acquire()
            self._syncing = False
            if error:
                self._failed, self._failed_errno = target, error
            else:
                self._synced = max(self._synced, target)
            self._done.notify_all()

    def exchange(self, name_a: str, name_b: str, /) -> None:
        self.disk.exchange(os.path.join(self.path, name_a), os.path.join(self.path, name_b))

    def create_many(
        self, entries: list[tuple[str, str, bytes, bool]], file_mode: int, /
    ) -> list[Failure | None]:
        failures: list[Failure | None] = []
        for name, _, data, create in entries:
            path = os.path.join(self.path, name)
            failure = write_whole(self.disk, path, data, file_mode, create, sync=False)
            failures.append(None if failure is None else (failure[0], errno_of(failure[1])))
        if all(failure is not None for failure in failures):
            return failures
        try:
            self.disk.sync_filesystem(self._dir_fd)
        except OSError as err:
            return [("syncfs", errno_of(err)) if f is None else f for f in failures]
        for index, (name, target, _, _) in enumerate(entries):
            if failures[index] is None:
                try:
                    self.disk.replace(
                        os.path.join(self.path, name), os.path.join(self.path, target)
                    )
                except OSError as err:
                    failures[index] = ("rename", errno_of(err))
        return failures

    def overwrite(self, name: str, data: bytes, /) -> Failure | None:
        step = "open"
        try:
            fd = os.open(os.path.join(self.path, name), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                step = "write"
                view, offset = memoryview(data), 0
                while offset < len(data):
                    offset += self.disk.write_at(fd, view[offset:], offset)
                step = "fsync"
                self.disk.datasync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            return step, errno_of(err)
        return None


def errno_of(err: OSError) -> int:
    """The error's errno; EIO when it carries none."""
    return err.errno or errno.EIO
