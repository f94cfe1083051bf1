"""Reads an ``strace -f -y -xx`` log of the daemon and checks the order of its durable steps.

The crash storms kill the daemon, which a page cache survives; only the
order of system calls shows that what a client hears of would survive a
power cut too. ``STRACE_OPTIONS`` is how the log must be made. A ``Call``
is one system call with the line numbers where it began and where it
returned, so "A returned before B began" is ``a.end < b.begin`` across
threads. ``Versions`` is every job version made durable, and when.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from jobqueue.constants import Status
from jobqueue.model import Job
from jobqueue.storage.base import decode_job
from jobqueue.storage.startrecords import decode_record

#: The system calls that write, sync, name and announce, plus program starts.
TRACED = "pwrite64,write,fdatasync,fsync,syncfs,rename,renameat,renameat2,sendto,sendmsg,execve"
#: strace's options for a log this module reads: threads followed, file
#: descriptors shown with their paths, every string in hex and whole.
STRACE_OPTIONS = ["-f", "-qq", "-y", "-xx", "-s", "1000000", "-e", f"trace={TRACED}"]

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_STARTED = re.compile(r"^(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_WHOLE = re.compile(r"^(\w+)\((.*)$")
_HEX = r"(?:\\x[0-9a-f]{2})*"
_FD_PATH = re.compile(rf"\d+<({_HEX})>")
_STRING = re.compile(rf'"({_HEX})"')
_RESULT = re.compile(r"\)\s+=\s+(-?\d+|\?)")
_SYNCS = frozenset({"fdatasync", "fsync"})


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


@dataclasses.dataclass(frozen=True)
class Call:
    """One system call that returned; ``begin``/``end``: its lines in the log."""

    tid: int
    name: str
    paths: tuple[str, ...]  # the paths of its file descriptor arguments, in order
    strings: tuple[bytes, ...]  # its string arguments, in order
    text: str  # its arguments as logged
    result: str
    begin: int
    end: int

    @property
    def ok(self) -> bool:
        return self.result != "?" and not self.result.startswith("-")


def read_calls(log: str) -> list[Call]:
    """Every call of the log that returned, in the order they began."""
    calls: list[Call] = []
    pending: dict[tuple[int, str], tuple[int, str]] = {}
    for number, line in enumerate(log.splitlines()):
        match = _LINE.match(line)
        if match is None:
            continue
        tid, rest = int(match.group(1)), match.group(2)
        if started := _STARTED.match(rest):
            pending[(tid, started.group(1))] = (number, started.group(2))
            continue
        if resumed := _RESUMED.match(rest):
            name = resumed.group(1)
            begin, head = pending.pop((tid, name), (number, ""))
            text = head + resumed.group(2)
        elif whole := _WHOLE.match(rest):
            name, begin, text = whole.group(1), number, whole.group(2)
        else:
            continue  # a signal, an exit
        result = _RESULT.search(text)
        calls.append(
            Call(
                tid=tid,
                name=name,
                paths=tuple(_unhex(p).decode() for p in _FD_PATH.findall(text)),
                strings=tuple(_unhex(s) for s in _STRING.findall(text)),
                text=text,
                result=result.group(1) if result else "?",
                begin=begin,
                end=number,
            )
        )
    calls.sort(key=lambda call: call.begin)
    return calls


def replies(calls: list[Call]) -> Iterator[tuple[Call, Any]]:
    """The LUXI answers the daemon sent (a JSON message ended by ETX), decoded."""
    for call in calls:
        if call.name not in ("sendto", "write", "sendmsg") or not call.strings:
            continue
        data = call.strings[0]
        if not data.endswith(b"\x03"):
            continue
        try:
            yield call, json.loads(data[:-1])
        except ValueError:
            continue


@dataclasses.dataclass(frozen=True)
class Version:
    """A job version the daemon wrote, and the line where it became durable."""

    job: Job
    how: str  # "start record" or "job file"
    durable_at: int


class Versions:
    """What the daemon made durable in ``queue_dir``, and the order faults found on the way.

    A job file counts once its content was synced before it was named
    ``job-N`` and a directory fsync began after the naming and returned. A
    start record counts once an fdatasync of its file began after its write
    and returned. ``faults`` lists every rename of content not synced first.
    """

    def __init__(self, calls: list[Call], queue_dir: str) -> None:
        self.queue_dir = queue_dir
        self.faults: list[str] = []
        self.by_job: dict[int, list[Version]] = {}
        self._calls = calls
        self._dir_syncs = [
            c for c in calls if c.ok and c.name == "fsync" and c.paths == (queue_dir,)
        ]
        for index, call in enumerate(calls):
            if not call.ok:
                continue
            if call.name in ("rename", "renameat", "renameat2"):
                self._named(index, call)
            elif call.name in ("pwrite64", "write") and self._is_start_file(call):
                self._start_record(index, call)
        self.renames = sum(
            1 for c in calls if c.ok and c.name in ("rename", "renameat", "renameat2")
        )

    def _is_start_file(self, call: Call) -> bool:
        path = call.paths[0] if call.paths else ""
        return os.path.dirname(path) == self.queue_dir and path.rsplit("/", 1)[1].startswith(
            ".start-"
        )

    def _named(self, index: int, call: Call) -> None:
        if call.name == "rename":
            source, target = (s.decode() for s in call.strings[:2])
        else:  # renameat(dirfd, name, dirfd, name[, flags])
            source = os.path.join(call.paths[0], call.strings[0].decode())
            target = os.path.join(call.paths[1], call.strings[1].decode())
        name = os.path.basename(target)
        if os.path.dirname(target) != self.queue_dir or not name.startswith("job-"):
            return
        written = self._last_write(source, before=call.begin)
        if written is None:
            self.faults.append(f"{name} named from {source}, which was never written")
            return
        if not self._synced(source, after=written.end, before=call.begin):
            self.faults.append(f"{name} named (line {call.begin}) before its content was synced")
            return
        dir_sync = next((s for s in self._dir_syncs if s.begin > call.end), None)
        if dir_sync is not None:
            self._add(written.strings[0], "job file", dir_sync.end)

    def _start_record(self, index: int, call: Call) -> None:
        version = decode_record(call.strings[0])
        if version is None:
            return  # a fresh start file being filled with spaces
        sync = next(
            (
                s
                for s in self._calls[index + 1 :]
                if s.ok and s.name in _SYNCS and s.paths == call.paths and s.begin > call.end
            ),
            None,
        )
        if sync is not None:
            self._add(version, "start record", sync.end)

    def _add(self, data: bytes, how: str, durable_at: int) -> None:
        job = decode_job(data)
        self.by_job.setdefault(job.id, []).append(Version(job, how, durable_at))

    def _last_write(self, path: str, before: int) -> Call | None:
        found = None
        for call in self._calls:
            if call.begin >= before:
                break
            if call.ok and call.name in ("pwrite64", "write") and call.paths[:1] == (path,):
                found = call
        return found

    def _synced(self, path: str, after: int, before: int) -> bool:
        for call in self._calls:
            if call.begin >= before:
                return False
            if call.begin <= after or call.end >= before or not call.ok:
                continue
            if call.name in _SYNCS and call.paths == (path,):
                return True
            if call.name == "syncfs" and call.paths[0].startswith(self.queue_dir):
                return True
        return False

    def durable_before(self, job_id: int, line: int, status: Status | None = None) -> bool:
        """Whether a version of the job (with ``status``, if given) was durable before ``line``."""
        return any(
            version.durable_at < line and (status is None or version.job.status == status)
            for version in self.by_job.get(job_id, [])
        )
