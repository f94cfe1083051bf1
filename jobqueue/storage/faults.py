"""Storage fault injection for tests: a ``Disk`` that fails while a control file says so.

Test-only. ``daemon.py`` uses ``FaultyDisk`` only when the environment
variable ``JOBQUEUE_FAULT_FILE`` names a control file; in production that
variable is unset and the store uses the plain ``Disk``.

The control file holds an error name and, optionally, the operations to
fail (all four when none are listed)::

    ENOSPC                 every write, fsync (fdatasync and syncfs too), replace (any rename)
                           and fsync_dir fails
    EIO fsync fsync_dir    only the syncs fail, with EIO

A missing file, an empty one or an unknown error name means no faults.
The file is looked at on every call with one ``stat``; its content is
re-read only when the file changed, so tests that replace it (atomically)
see the new setting take effect at the daemon's very next disk call.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping

from jobqueue.storage.filedisk import Disk

#: Names the control file in the daemon's environment (test-only).
FAULT_FILE_ENV = "JOBQUEUE_FAULT_FILE"
ERRORS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
OPERATIONS = frozenset({"write", "fsync", "replace", "fsync_dir"})

_Fault = tuple[int, frozenset[str]] | None


def parse_control(text: str) -> _Fault:
    """``(errno, operations)`` for the control file's text, None for no fault."""
    words = text.split()
    if not words or words[0].upper() not in ERRORS:
        return None
    operations = frozenset(words[1:]) & OPERATIONS or OPERATIONS
    return ERRORS[words[0].upper()], operations


class FaultyDisk(Disk):
    """A ``Disk`` whose calls raise ``OSError`` while the control file asks for it.

    ``_lock`` guards the cached (file identity, fault) pair; the disk calls
    themselves run outside it.
    """

    def __init__(self, control_path: str) -> None:
        self.control_path = control_path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._fault: _Fault = None

    def current_fault(self) -> _Fault:
        """The fault the control file asks for now (re-read only when it changed)."""
        try:
            info = os.stat(self.control_path)
        except OSError:
            return None
        identity = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if identity != self._seen:
                try:
                    with open(self.control_path, encoding="ascii", errors="replace") as handle:
                        self._fault = parse_control(handle.read())
                except OSError:
                    self._fault = None
                self._seen = identity
            return self._fault

    def _check(self, operation: str) -> None:
        fault = self.current_fault()
        if fault is not None and operation in fault[1]:
            code = fault[0]
            raise OSError(code, f"{os.strerror(code)} (injected)")

    def write(self, fd: int, data: bytes) -> int:
        self._check("write")
        return super().write(fd, data)

    def write_at(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._check("write")
        return super().write_at(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        super().fsync(fd)

    def datasync(self, fd: int) -> None:
        self._check("fsync")
        super().datasync(fd)

    def replace(self, src: str, dst: str) -> None:
        self._check("replace")
        super().replace(src, dst)

    def rename_noreplace(self, src: str, dst: str) -> None:
        self._check("replace")
        super().rename_noreplace(src, dst)

    def exchange(self, path_a: str, path_b: str) -> None:
        self._check("replace")  # an exchange is the rename of a job write
        super().exchange(path_a, path_b)

    def fsync_dir(self, path: str) -> None:
        self._check("fsync_dir")
        super().fsync_dir(path)

    def sync_filesystem(self, fd: int) -> None:
        self._check("fsync")
        super().sync_filesystem(fd)


def disk_from_environment(environ: Mapping[str, str]) -> Disk | None:
    """A ``FaultyDisk`` when ``JOBQUEUE_FAULT_FILE`` is set and not empty, else None."""
    control_path = environ.get(FAULT_FILE_ENV)
    return FaultyDisk(control_path) if control_path else None
