"""Spare files of the queue directory: the pool of names, and a reserve made ahead of need.

A job write fills a spare file and exchanges it with ``job-N`` (or renames it
into place for a new job; see ``jobwriter``). An exchange gives the pool the
old version's inode back, so replacing files needs no new inode; a new job
file takes one spare for good. Making a file (an inode and a directory entry)
is the slowest step of a write and holds the directory's lock meanwhile: on
ext4 without a journal, every new inode is checked against the recently
deleted ones, which made a creation cost 0.5 to 0.9 ms in our benchmark runs,
and concurrent writers spun on the lock while one created. So:

* ``SpareReserve`` keeps up to ``reserve`` empty spares ready, made one at a
  time by one background thread once the queue is idle: a burst of new
  jobs takes made files instead of making them, and the refill comes after;
* a batch of new jobs written in parallel makes the spares it lacks first,
  one at a time (``JobFileWriter.ready_spares``), and any other write that
  finds no spare free makes one the same way (``make_spare``): concurrent
  makers sleep on a lock instead of spinning on the directory's. A batch
  made durable by one sync is written by one thread, which makes the
  spares it lacks as it goes (``JobFileWriter.create_many``).

A spare's content means nothing and it needs no sync: its name is only ever
exchanged or renamed, and the write that uses it syncs the directory. A
spare left by a crash is found when the directory is listed at start.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import threading
import time

from jobqueue import constants
from jobqueue.storage import layout

#: Spares kept ready by default: a burst of that many new jobs makes no file.
#: Each costs an inode, and once it has held an old version, that version's
#: blocks (about 16 MiB for 4,096 job files of 4 KiB).
DEFAULT_RESERVE = 4096


class SparePool:
    """Names of spare files that may be rewritten now, and those put aside for a while.

    A spare is put aside when the directory sync of its exchange failed: its
    inode may still be ``job-N`` on disk. It comes back once a directory sync
    that began after it was put aside has succeeded (``epoch`` orders them).
    ``_lock`` guards every field.
    """

    def __init__(self, names: list[str], first_number: int) -> None:
        self._lock = threading.Lock()
        self._free = collections.deque(names)
        self._numbers = itertools.count(first_number)
        self._aside: list[tuple[int, str]] = []
        self.epoch = 0  # read without the lock: a stale value only delays a release

    def take(self) -> tuple[str, bool]:
        """A spare name, and whether the file must be created first."""
        with self._lock:
            if self._free:
                return self._free.popleft(), False
            return layout.spare_file_name(next(self._numbers)), True

    def new_names(self, count: int) -> list[str]:
        """``count`` names no spare has yet (the caller makes the files, then ``add``s them)."""
        with self._lock:
            return [layout.spare_file_name(next(self._numbers)) for _ in range(count)]

    def add(self, names: list[str]) -> None:
        """Make the spares ``names`` (files made from ``new_names``) free."""
        with self._lock:
            self._free.extend(names)

    def give_back(self, name: str, synced_since: int | None = None) -> None:
        """Return a spare; ``synced_since``: the epoch at which a successful write began."""
        with self._lock:
            self._free.append(name)
            if synced_since is not None and self._aside:
                ready = [entry for entry in self._aside if entry[0] < synced_since]
                self._aside = [entry for entry in self._aside if entry[0] >= synced_since]
                self._free.extend(spare for _, spare in ready)

    def put_aside(self, name: str) -> None:
        with self._lock:
            self._aside.append((self.epoch, name))
            self.epoch += 1

    def free(self) -> int:
        """Spares that may be taken now (read without the lock: an estimate)."""
        return len(self._free)

    def count(self) -> int:
        """Spares free and put aside (for tests and the start-up log)."""
        with self._lock:
            return len(self._free) + len(self._aside)


#: Held while a spare file is made: the makers of a process wait here, asleep,
#: and not on the directory's lock in the kernel, where they would spin.
_MAKING = threading.Lock()


def make_spare(directory: str, name: str) -> bool:
    """Make the empty spare ``name``; False if the file system refused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with _MAKING:
        try:
            os.close(os.open(os.path.join(directory, name), flags, constants.FILE_MODE))
        except OSError:
            return False
    return True


def make_spares(directory: str, pool: SparePool, count: int) -> int:
    """Make up to ``count`` empty spares, one at a time, and add them to ``pool``.

    Returns how many were made: fewer when the file system refuses one
    (the write that needs it then tries, and reports, itself).
    """
    made: list[str] = []
    for name in pool.new_names(count):
        if not make_spare(directory, name):
            break
        made.append(name)
    pool.add(made)
    return len(made)


class SpareReserve:
    """A thread that keeps ``reserve`` spares free, making the missing ones when the queue is idle.

    ``wake`` is called whenever a new job file took a spare, ``touch`` on
    every other job write. The thread waits until no job file was written
    for ``idle`` seconds, then makes the missing spares one at a time,
    ``STEP`` at a go, looking again for activity between steps: a burst
    takes made files and is never slowed by the refill, which runs after it.
    In a steady state of replaced files it does nothing. A refusal of the
    file system (full disk, no inodes) ends the refill until the next
    ``wake``; it is logged once until a refill completes. ``_wanted``
    guards ``_pending`` and ``_stopped``; ``_last_write`` is a float
    written and read without it (a stale value only moves a refill by one
    wait).
    """

    #: Files made between two looks for activity (and for ``stop``).
    STEP = 32

    def __init__(
        self,
        directory: str,
        pool: SparePool,
        reserve: int,
        logger: logging.Logger,
        *,
        idle: float = 0.25,
    ) -> None:
        self._directory = directory
        self._pool = pool
        self._reserve = reserve
        self._idle = idle
        self._log = logger
        self._wanted = threading.Condition(threading.Lock())
        self._pending = reserve > 0
        self._stopped = False
        self._refused = False
        self._last_write = -math.inf  # no write yet, however soon after boot
        self._thread: threading.Thread | None = None
        if reserve > 0:
            self._thread = threading.Thread(target=self._run, name="spare-reserve", daemon=True)
            self._thread.start()

    def touch(self) -> None:
        """A job file is being written: the queue is not idle."""
        self._last_write = time.monotonic()

    def wake(self) -> None:
        """A new job file took a spare: refill once the queue is idle."""
        if self._thread is None:
            return
        self.touch()
        with self._wanted:
            if not self._pending:
                self._pending = True
                self._wanted.notify()

    def stop(self) -> None:
        with self._wanted:
            self._stopped = True
            self._wanted.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while self._wait_until_idle():
            missing = min(self._reserve - self._pool.free(), self.STEP)
            if missing <= 0:
                self._done(refused=False)
                continue
            made = make_spares(self._directory, self._pool, missing)
            if made < missing:
                if not self._refused:
                    self._log.warning(
                        "Cannot make spare files in %s; new job files are made as they come",
                        self._directory,
                    )
                self._done(refused=True)

    def _wait_until_idle(self) -> bool:
        """Wait for a pending refill and ``idle`` seconds without a write; False once stopped."""
        with self._wanted:
            while not self._stopped:
                if not self._pending:
                    self._wanted.wait()
                    continue
                left = self._last_write + self._idle - time.monotonic()
                if left <= 0:
                    return True
                self._wanted.wait(left)
            return False

    def _done(self, *, refused: bool) -> None:
        """The refill ended (full, or refused): wait for the next ``wake``.

        A spare taken since the reserve was found full keeps the refill
        pending: its ``wake`` may have come before this.
        """
        self._refused = refused
        with self._wanted:
            self._pending = not refused and self._pool.free() < self._reserve
