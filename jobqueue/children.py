"""Records of the commands' process groups, so a restarted daemon can stop leftovers.

``OP_COMMAND_RUN`` starts each command as the leader of its own session and
process group, so a daemon killed with SIGKILL (or by the OOM killer) does not
take its commands with it. While a command runs, its group has a record here,
a file named after the process group id holding one line::

    <job id> <kernel boot id> <leader's start time in clock ticks since boot>

At start, before the queue is recovered, the next daemon stops every group
that is still the one recorded: SIGTERM, then SIGKILL after a grace period.

A group is the recorded one when its leader exists with the recorded start
time (a reused pid has another), or when the leader is gone but processes of
the group remain: a pid is not reused while it still names a process group.
The boot id discards records from before a reboot, which no process outlives.

A record is acted on only if the daemon's own user wrote it, as a regular
file, in a directory of its own that is closed to everyone else (mode
0700): anyone who could plant a record could otherwise have any process
group killed. Records elsewhere are ignored, and said so in the log.

Records are replaced atomically but not synced: nothing they describe survives
a reboot, and the writes of a daemon that was killed stay in the page cache.
Not covered: a command that moves to another process group or session
(``setsid``), and a daemon killed between starting a command and recording it.
Linux only (``/proc``).
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from typing import NamedTuple

from jobqueue import constants, safeio

#: How often ``stop_leftovers`` looks whether the groups it signalled are gone.
_POLL_INTERVAL = 0.05
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
# Fields of /proc/<pid>/stat counted after the ")" that ends the command name
# (field 2): state is field 3, pgrp field 5, starttime field 22.
_STATE, _PGRP, _START_TIME = 0, 2, 19
_GONE_STATES = frozenset({"Z", "X", "x"})
#: A record is one short line; anything longer is not one.
_RECORD_LIMIT = 256


class Leftover(NamedTuple):
    """A process group a killed daemon left running, stopped at start."""

    job_id: int
    pgid: int


class _Record(NamedTuple):
    pgid: int
    job_id: int
    boot_id: str
    start_time: int


class ProcessGroups:
    """The record directory (``<state>/run/commands``); one file per running command.

    Every method is safe to call from several threads: each group has its own
    file, and only one daemon uses the directory (it holds the queue lock).
    """

    def __init__(
        self,
        directory: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.directory = directory
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self._boot_id = _boot_id()  # fixed for the life of this process
        self._euid = os.geteuid()

    def started(self, pgid: int, job_id: int) -> None:
        """Record the group of a command just started; a failure is only logged."""
        fields = _stat_fields(pgid)
        if fields is None:
            self._log.warning(
                "Cannot record process group %d of job %d: no /proc entry", pgid, job_id
            )
            return
        line = f"{job_id} {self._boot_id} {fields[_START_TIME]}\n"
        path = self._path(pgid)
        temp = path + ".tmp"
        try:
            _unlink(temp)  # created anew below, never written through what was there
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, constants.FILE_MODE)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(line)
            os.replace(temp, path)
        except OSError as err:
            self._log.warning("Cannot record process group %d of job %d: %s", pgid, job_id, err)
            _unlink(temp)

    def ended(self, pgid: int) -> None:
        """Forget the group of a command that has ended (and whose group was killed)."""
        try:
            _unlink(self._path(pgid))
        except OSError as err:
            self._log.warning("Cannot remove the record of process group %d: %s", pgid, err)

    def stop_leftovers(self, grace: float) -> list[Leftover]:
        """Stop the recorded groups that still run; return them. Every record is removed.

        Sends SIGTERM to each group, waits up to ``grace`` seconds for all of
        them to be gone, then sends SIGKILL to what remains.
        """
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        if not names:
            return []  # the usual start: no need to look through /proc
        problem = _unsafe_directory(self.directory, self._euid)
        if problem is not None:
            self._log.warning(
                "Not acting on the records of leftover commands in %s: %s", self.directory, problem
            )
            return []
        live = _live_groups()
        leftovers = []
        for name in names:
            record = self._read(name)
            if (
                record is not None
                and record.boot_id == self._boot_id
                and record.pgid in live
                and _is_recorded_group(record.pgid, record.start_time)
            ):
                leftovers.append(Leftover(record.job_id, record.pgid))
        self._stop(leftovers, grace)
        for name in names:
            try:
                _unlink(os.path.join(self.directory, name))
            except OSError as err:
                self._log.warning("Cannot remove %r from %s: %s", name, self.directory, err)
        return leftovers

    def _stop(self, leftovers: list[Leftover], grace: float) -> None:
        """SIGTERM every group, SIGKILL those still there after ``grace`` seconds."""
        if not leftovers:
            return
        for leftover in leftovers:
            _kill_group(leftover.pgid, signal.SIGTERM)
        pgids = {leftover.pgid for leftover in leftovers}
        deadline = self._clock() + grace
        while pgids & _live_groups() and self._clock() < deadline:
            time.sleep(_POLL_INTERVAL)
        for pgid in pgids & _live_groups():
            _kill_group(pgid, signal.SIGKILL)

    def _read(self, name: str) -> _Record | None:
        """The record in file ``name``, or None when the name or content is not one.

        Names below 2 are refused: ``killpg(0)`` would signal our own group.
        So is anything but a regular file of the daemon's own user.
        """
        if not (name.isascii() and name.isdigit() and int(name) > 1):
            return None
        try:
            data, info = safeio.read_regular_file(os.path.join(self.directory, name), _RECORD_LIMIT)
            if info.st_uid != self._euid:
                raise ValueError(f"written by uid {info.st_uid}, not by the daemon's user")
            job_id, boot_id, start_time = data.decode("ascii").split()
            return _Record(int(name), int(job_id), boot_id, int(start_time))
        except OSError as err:
            self._log.warning("Ignoring process group record %r: %s", name, err.strerror)
            return None
        except ValueError as err:
            self._log.warning("Ignoring process group record %r: %s", name, err)
            return None

    def _path(self, pgid: int) -> str:
        return os.path.join(self.directory, str(pgid))


def _unsafe_directory(path: str, euid: int) -> str | None:
    """Why the record directory cannot be trusted, or None: it must be ours and mode 0700."""
    try:
        info = os.lstat(path)
    except OSError as err:
        return err.strerror
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        return "not a directory"
    if info.st_uid != euid:
        return f"owned by uid {info.st_uid}, not by the daemon's user (uid {euid})"
    if mode & 0o077:
        return f"mode {mode:04o}, not 0700"
    return None


def _is_recorded_group(pgid: int, start_time: int) -> bool:
    """Whether the live group ``pgid`` is the one whose leader started at ``start_time``."""
    leader = _stat_fields(pgid)
    if leader is None:
        return True  # the leader is gone, but its pid still names the live group
    return leader[_START_TIME] == str(start_time)


def _live_groups() -> set[int]:
    """The process group ids of every process that has not exited (zombies excluded)."""
    groups = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and fields[_STATE] not in _GONE_STATES:
                groups.add(int(fields[_PGRP]))
    return groups


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 and on of ``/proc/<pid>/stat``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    _, paren, rest = text.rpartition(b")")  # the command name may hold ")" and spaces
    fields = rest.decode("ascii", "replace").split()
    return fields if paren and len(fields) > _START_TIME else None


def _boot_id() -> str:
    try:
        with open(_BOOT_ID_FILE, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
