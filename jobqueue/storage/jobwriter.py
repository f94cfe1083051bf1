"""Durable job-file writes without inode churn: spare files and atomic exchange.

A new version of ``job-N`` is written into a *spare* file of the queue
directory (``.spare-<n>``, see ``layout``), which is fsynced and then
exchanged with ``job-N`` atomically (``renameat2`` with ``RENAME_EXCHANGE``);
the write returns once a directory fsync that began after the exchange has
succeeded (shared by concurrent writers), so the new version is durable
before anyone is told of it. The old version's inode now sits under the
spare name and is rewritten by a later write, but only once the exchange is
durable: a write whose directory sync fails swaps the names back and puts
its spare aside until a directory sync that began after that has succeeded.
New job files take a spare too and are renamed into place. No inode is made
or freed per transition, which on ext4 was what a write cost most.

Where the kernel or the file system cannot exchange names (probed once when
the store opens, and logged), every write is the classic one: a temporary
``.<name>.<pid>.<n>.tmp`` file, fsync, rename over the name, directory fsync.

Each write is one call of a ``durable.Directory``: the compiled helper (the
whole write in one release of the interpreter lock) when it was built and
the store's ``Disk`` is the plain one, else the Python twin, which makes
every call through the ``Disk``.

Thread-safe: writes of different names run in parallel; the caller makes
sure one name has one writer at a time.
"""

from __future__ import annotations

import enum
import errno
import itertools
import logging
import os
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from jobqueue import constants
from jobqueue.storage import layout
from jobqueue.storage.durable import (
    Directory,
    PythonDirectory,
    compiled_directory,
    errno_of,
    exchange_paths,
    filesystem_sync_refusal,
)
from jobqueue.storage.filedisk import remove_or_warn, unlink_quietly
from jobqueue.storage.spares import SparePool, SpareReserve, make_spare, make_spares

if TYPE_CHECKING:
    from jobqueue.storage.filedisk import Disk

#: Spares kept from a previous run; more are removed at start.
MAX_REUSED_SPARES = 64
#: Tries of an undo (see ``_undo_exchange``).
_UNDO_ATTEMPTS = 3
#: Errors that mean "this kernel or file system cannot exchange names".
_NO_EXCHANGE_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM})


class DirectoryNotSynced(OSError):
    """Everything but the directory sync of a write succeeded (see each write's undo)."""


def _raise(step: str, code: int) -> NoReturn:
    kind = DirectoryNotSynced if step == "fsync_dir" else OSError
    raise kind(code, os.strerror(code))


class Choice(enum.StrEnum):
    """How a store asks for its writes to be made (``FileJobStore(write_method=...)``)."""

    AUTO = "auto"  # the compiled helper if built (plain Disk only), exchange if possible
    PYTHON = "python"  # the Python twin, exchange if possible
    RENAME = "rename"  # the Python twin, temporary files and rename (the fallback)


class JobFileWriter:
    """Writes whole files of one queue directory durably; see the module docstring."""

    def __init__(
        self,
        directory: str,
        disk: Disk,
        *,
        choice: Choice = Choice.AUTO,
        allow_helper: bool = True,
        spare_reserve: int = 0,
        sync_batches: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        """Clean up after a previous run, probe the file system and log the method chosen.

        ``allow_helper=False`` keeps every step a call of ``disk`` (a ``Disk``
        subclass that fails or records steps). ``spare_reserve``: empty spares
        a background thread keeps ready for new job files (``spares``); stop
        it with ``close``. Raises OSError when the directory cannot be listed
        or synced.
        """
        self.directory = directory
        self._disk = disk
        self._log = logger or logging.getLogger(__name__)
        self._pid = os.getpid()
        self._temp_numbers = itertools.count()
        dir_fd = self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        weakref.finalize(self, os.close, dir_fd)
        compiled = compiled_directory(dir_fd) if choice == Choice.AUTO and allow_helper else None
        self._dir: Directory = compiled or PythonDirectory(disk, directory, dir_fd)
        self._compiled = compiled is not None
        spares = self._clean_up(max(MAX_REUSED_SPARES, spare_reserve))
        self.pool = SparePool(spares, 1 + max(map(_spare_number, spares), default=-1))
        reason = "not asked for" if choice == Choice.RENAME else self._probe_exchange()
        self.exchange = reason is None
        if not self.exchange:
            self._remove_spares()
        self._reserve = SpareReserve(
            directory, self.pool, spare_reserve if self.exchange else 0, self._log
        )
        how = "Python" if compiled is None else "compiled helper"
        if self.exchange:
            self.method = f"exchange with spare files (renameat2 RENAME_EXCHANGE), {how}"
        else:
            self.method = f"rename of temporary files ({how}); exchange: {reason}"
        refusal = self._batch_sync_refusal(sync_batches)
        self.syncs_batches = refusal is None
        self.method += "; batches of new files: " + (
            "one file-system sync (syncfs)" if refusal is None else f"a sync per file ({refusal})"
        )
        self._log.info("Job files in %s are written by %s", directory, self.method)

    # -- start ---------------------------------------------------------------------
    def _batch_sync_refusal(self, asked: bool) -> str | None:
        """None if ``create_many`` may be used here, else why not."""
        if not asked:
            return "as asked"
        if not self.exchange:
            return "no spare files"
        refusal = filesystem_sync_refusal()
        if refusal is None:
            try:  # some sandboxes refuse it outright
                self._disk.sync_filesystem(self._dir_fd)
            except OSError as err:
                return f"syncfs fails here ({os.strerror(errno_of(err))})"
        return refusal

    def _clean_up(self, keep: int) -> list[str]:
        """Remove temporary files, keep up to ``keep`` spares (their names).

        The directory is synced first: a spare of a run that ended before
        its last exchange was durable must not be rewritten before it is.
        Only regular files are kept as spares; anything that cannot be
        removed (e.g. a directory) is logged and left alone.
        """
        self._disk.fsync_dir(self.directory)
        spares: list[str] = []
        with os.scandir(self.directory) as entries:
            found = sorted((entry.name, entry.is_file(follow_symlinks=False)) for entry in entries)
        for name, regular in found:
            if name.endswith(layout.TEMP_SUFFIX):
                self._log.info("Removing temporary file %s left by a crash", name)
                self._remove(name)
            elif layout.is_spare_name(name):
                if regular and len(spares) < keep:
                    spares.append(name)
                else:
                    self._remove(name)
        return spares

    def _remove(self, name: str) -> None:
        remove_or_warn(os.path.join(self.directory, name), self._log)

    def _probe_exchange(self) -> str | None:
        """None if two spares can be exchanged here, else why not."""
        names = [self.pool.take()[0] for _ in range(2)]
        try:
            for name in names:
                path = os.path.join(self.directory, name)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, constants.FILE_MODE))
            self._dir.exchange(*names)
        except OSError as err:
            if err.errno not in _NO_EXCHANGE_ERRNOS:
                raise
            return f"not supported here ({os.strerror(err.errno)})"
        finally:
            for name in names:
                self.pool.give_back(name)
        return None

    def _remove_spares(self) -> None:
        for name in os.listdir(self.directory):
            if layout.is_spare_name(name):
                unlink_quietly(os.path.join(self.directory, name))
        self.pool = SparePool([], 0)

    # -- writes --------------------------------------------------------------------
    def replace(self, target: str, data: bytes) -> None:
        """Make ``data`` the durable content of ``target`` (which should exist); OSError.

        On failure ``target`` keeps its previous content (``DirectoryNotSynced``
        where names cannot be exchanged: it then keeps the new one).
        """
        if not self.exchange:
            self._write_through_temp(target, data, sync_dir=True, new=False)
            return
        self._reserve.touch()
        spare, create = self._take_spare()
        epoch = self.pool.epoch
        failure = self._write(spare, target, data, exchange=True, create=create, sync_dir=True)
        if failure is None:
            self.pool.give_back(spare, synced_since=epoch)
            return
        step, code = failure
        if step == "rename" and code == errno.ENOENT:  # no old version: move it into place
            self._move_new(spare, target)
            return
        self._after_failure(spare, target, create, step)
        _raise(step, code)

    def create(self, target: str, data: bytes, *, sync_dir: bool) -> None:
        """Put a new, durable ``target`` in place; the directory is synced only if ``sync_dir``.

        On failure no ``target`` is left behind (it is removed if only the
        directory sync failed: ``DirectoryNotSynced``). Raises OSError.
        """
        if not self.exchange:
            self._write_through_temp(target, data, sync_dir=sync_dir, new=True)
            return
        spare, create = self._take_spare()
        self._reserve.wake()
        failure = self._write(spare, target, data, exchange=False, create=create, sync_dir=sync_dir)
        if failure is None:
            return
        step, code = failure
        if step == "fsync_dir":
            unlink_quietly(os.path.join(self.directory, target))
        else:
            self._after_failure(spare, target, create, step)
        _raise(step, code)

    def _take_spare(self) -> tuple[str, bool]:
        """A free spare, else a new one made by one maker at a time (``make_spare``).

        Returns its name and whether the write must still create it: only
        when making it was refused, so that the write reports why.
        """
        spare, create = self.pool.take()
        if create and make_spare(self.directory, spare):
            create = False
        return spare, create

    def ready_spares(self, count: int) -> None:
        """Make sure ``count`` spares are free, making the missing ones one at a time.

        Called before ``count`` new files are written in parallel, so that
        their writers take made files instead of making them concurrently
        (they would wait for one another on the directory's lock).
        """
        if self.exchange:
            missing = count - self.pool.free()
            if missing > 0:
                make_spares(self.directory, self.pool, missing)

    def create_many(self, items: Sequence[tuple[str, bytes]]) -> list[OSError | None]:
        """New files ``target`` holding ``data``, for each item, made durable by one sync.

        For a batch of two or more, where ``syncs_batches``. Each ``data``
        goes into a spare without a sync of its own; one ``syncfs`` then makes
        them all durable (Linux gives it the guarantees of an fsync of every
        file of the file system), and only after that are the spares renamed
        to their targets: a name never shows data that is not durable. The
        whole batch is one call of the ``Directory`` (one release of the
        interpreter lock with the compiled helper). Returns None or the
        OSError for each item (a failed ``syncfs`` fails them all). The caller
        syncs the directory (``sync_directory``) before it reports any.
        """
        self._reserve.wake()
        entries: list[tuple[str, str, bytes, bool]] = []
        for target, data in items:
            spare, create = self.pool.take()  # a spare missing is made by the call itself
            entries.append((spare, target, data, create))
        try:
            failures = self._dir.create_many(entries, constants.FILE_MODE)
        except Exception:  # not a failure of a step (no memory for the answer, a bug):
            for _, target, _, _ in entries:  # which names moved is unknown; none is reported
                unlink_quietly(os.path.join(self.directory, target))
            raise  # the spares are dropped; the next start finds those left
        finally:
            self._reserve.touch()  # no refill during the batch: none until idle after it
        results: list[OSError | None] = []
        for (spare, target, _, create), failure in zip(entries, failures, strict=True):
            if failure is None:
                results.append(None)
                continue
            step, code = failure
            results.append(OSError(code, os.strerror(code)))
            self._after_failure(spare, target, create, step)
        return results

    def close(self) -> None:
        """Stop the spare reserve's thread (writes still work, without a reserve)."""
        self._reserve.stop()

    def overwrite(self, name: str, data: bytes) -> None:
        """Write the existing file ``name`` from offset 0 and ``fdatasync`` it; OSError.

        In one release of the interpreter lock where the compiled helper is
        used (a start record: ``startrecords``).
        """
        failure = self._dir.overwrite(name, data)
        if failure is not None:
            _raise(*failure)

    def sync_directory(self) -> None:
        """Wait for a directory fsync begun now (after a batch of creates); OSError."""
        self._dir.sync()

    def _write(
        self, name: str, target: str, data: bytes, *, exchange: bool, create: bool, sync_dir: bool
    ) -> tuple[str, int] | None:
        return self._dir.write_file(
            name, target, data, constants.FILE_MODE, exchange, create, sync_dir
        )

    def _after_failure(self, spare: str, target: str, created: bool, step: str) -> None:
        """Return or put aside the spare of a failed write (see ``SparePool``)."""
        if step == "fsync_dir":  # exchanged, not durably: swap back, keep the inode unused
            self._undo_exchange(spare, target)
            self.pool.put_aside(spare)
        elif step != "open":  # it exists and holds nothing of value; one that cannot
            self.pool.give_back(spare)  # be opened is dropped (a newer one is made)

    def _undo_exchange(self, spare: str, target: str) -> None:
        """Exchange the names back, so that ``target`` shows its previous version again.

        An undo, like the unlink of a new name whose sync failed: it goes to
        the kernel directly, not through ``Disk`` (whose faults are those of
        the change being made), and is tried a few times. Were it still to
        fail, ``target`` would keep the new version, whole but unreported.
        """
        for attempt in range(_UNDO_ATTEMPTS):
            try:
                if self._compiled:
                    self._dir.exchange(spare, target)
                else:
                    exchange_paths(
                        os.path.join(self.directory, spare), os.path.join(self.directory, target)
                    )
                return
            except OSError as err:
                if attempt == _UNDO_ATTEMPTS - 1:
                    self._log.error("Cannot put back the previous %s (%s)", target, err)

    def _move_new(self, spare: str, target: str) -> None:
        """Rename a written, fsynced spare to a ``target`` that does not exist; sync."""
        self._disk.replace(
            os.path.join(self.directory, spare), os.path.join(self.directory, target)
        )
        try:
            self._disk.fsync_dir(self.directory)
        except OSError:
            unlink_quietly(os.path.join(self.directory, target))
            raise

    def _write_through_temp(self, target: str, data: bytes, *, sync_dir: bool, new: bool) -> None:
        """The fallback: a new temporary file renamed over ``target``; OSError.

        If only the directory sync fails, a ``new`` target is removed again;
        a replaced one keeps the new version (the old inode went with the
        rename): whole, but never reported.
        """
        temp = layout.temp_file_name(target, self._pid, next(self._temp_numbers))
        failure = self._write(temp, target, data, exchange=False, create=True, sync_dir=sync_dir)
        if failure is None:
            return
        step, code = failure
        if step == "fsync_dir":
            if new:
                unlink_quietly(os.path.join(self.directory, target))
        elif step != "open":
            unlink_quietly(os.path.join(self.directory, temp))
        _raise(step, code)


def _spare_number(name: str) -> int:
    number = layout.spare_number_of(name)
    return -1 if number is None else number
