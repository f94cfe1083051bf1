"""File-system calls that a hand-damaged or hostile directory cannot subvert.

* ``read_regular_file`` opens without following a symbolic link and without
  blocking (a FIFO or a device under a job's name must not hang start-up),
  then reads only if what it opened is a regular file.
* ``rename_noreplace`` moves a file to a name only while that name is free,
  so archiving can never overwrite an archived job. It is one atomic
  ``renameat2(RENAME_NOREPLACE)`` where the kernel and the file system
  offer it (Linux 3.15 and later on the usual local file systems); elsewhere
  it links the new name and then unlinks the old one, and a crash between
  the two leaves one file under both names, which the next load resolves.

Linux only, like the rest of the daemon.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
#: Errors of renameat2 that mean "not supported here": fall back to link + unlink.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def read_regular_file(path: str, limit: int | None = None) -> tuple[bytes, os.stat_result]:
    """The content of the regular file ``path`` and its ``fstat``.

    Raises ``OSError``: ``ELOOP`` for a symbolic link, ``EINVAL`` ("not a
    regular file") for a FIFO, socket, device or directory, ``EFBIG`` when
    the file holds more than ``limit`` bytes, or whatever ``open`` and
    ``read`` raise.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file but {kind(info.st_mode)}", path)
        chunks: list[bytes] = []
        size, cap = 0, None if limit is None else limit + 1
        while chunk := os.read(fd, 1 << 20 if cap is None else cap - size):
            chunks.append(chunk)
            size += len(chunk)
            if cap is not None and size >= cap:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def kind(mode: int) -> str:
    """What a file of ``mode`` is, in words: "a FIFO", "a symbolic link", ..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "of an unknown kind")


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (it is never replaced)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE):
            code = ctypes.get_errno()
            if code not in _UNSUPPORTED:
                raise OSError(code, os.strerror(code), src, None, dst)
        else:
            return
    link_then_unlink(src, dst)


def link_then_unlink(src: str, dst: str) -> None:
    """``rename_noreplace`` without ``renameat2``: link ``dst``, then unlink ``src``.

    If the unlink fails, the new name is removed again, so a failure leaves
    the file under its old name only.
    """
    os.link(src, dst, follow_symlinks=False)
    try:
        os.unlink(src)
    except OSError:
        try:
            os.unlink(dst)
        except OSError:
            pass
        raise


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """The C library's ``renameat2``, or None when it has none (glibc before 2.28)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    path, fd = ctypes.c_char_p, ctypes.c_int
    function.argtypes = [fd, path, fd, path, ctypes.c_uint]
    function.restype = ctypes.c_int
    renameat2: Callable[..., int] = function
    return renameat2
