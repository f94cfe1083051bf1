"""The file store's change feed: one inotify watch on the queue directory, read in a thread.

Job files are never modified in place: a new version is written to a spare
file and exchanged with ``job-N`` (``RENAME_EXCHANGE``, reported as moves of
both names) or, where names cannot be exchanged, to a temp file renamed over
``job-N``; archiving renames ``job-N`` away. An opcode's start is written
in place into a start file (``startrecords``), where no name moves, but the
writer closes the file after the write and its sync (whether or not they
succeeded; a failed one is then erased, and the file closed again). So a
single watch on the queue directory for ``IN_MOVED_TO | IN_MOVED_FROM |
IN_DELETE | IN_CLOSE_WRITE`` sees every change of every job, and there is
no per-file watch to re-arm after a rename. A moved or deleted
``job-<digits>`` names its job. A start file closed after writing names
the job of the whole record it holds, read once per batch of events; one
that holds none (erased or torn) names the job its record last named,
whose start was undone. Every other name (temp and spare files,
``serial``, ``drain``) is ignored.

The daemon that owns a queue does not need this: it announces its own
changes in memory (``jobqueue.livejobs``). The feed serves a process that
watches a queue another process writes.

pyinotify provides the inotify instance and the watch; the events are read
from its descriptor and decoded here (a fixed header and a name each), in a
thread that also polls a pipe, so ``stop`` ends it at once. pyinotify's own
``Notifier`` keeps every rename's move cookie for a minute and scans them
all on each batch of events, which is why it is not used.

This is the only module that imports pyinotify (which imports asyncore).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import struct
import threading
import warnings
from typing import Any

from jobqueue.errors import JobFileCorrupted, StorageError
from jobqueue.storage import layout, startrecords
from jobqueue.storage.base import ChangeCallback, ChangeFeed, decode_job

with warnings.catch_warnings():
    # pyinotify imports asyncore, deprecated since Python 3.10; we never use it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify

_EVENT_MASK = (
    pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM | pyinotify.IN_DELETE | pyinotify.IN_CLOSE_WRITE
)
#: struct inotify_event: wd, mask, cookie, name length; the name follows, NUL-padded.
_EVENT_HEADER = struct.Struct("iIII")
_READ_SIZE = 256 * 1024


def decode_events(data: bytes) -> list[tuple[int, bytes]]:
    """``(mask, name)`` of each event in a buffer read from an inotify descriptor."""
    events = []
    offset = 0
    while offset + _EVENT_HEADER.size <= len(data):
        _, mask, _, length = _EVENT_HEADER.unpack_from(data, offset)
        start = offset + _EVENT_HEADER.size
        offset = start + length
        events.append((mask, data[start:offset].rstrip(b"\0")))
    return events


class FileChangeFeed(ChangeFeed):
    """Reports changed job ids of ``queue_dir``; see the module docstring."""

    def __init__(self, queue_dir: str, *, logger: logging.Logger | None = None) -> None:
        self.queue_dir = queue_dir
        self._log = logger or logging.getLogger(__name__)
        self._manager: Any = None  # a pyinotify.WatchManager while started
        self._stop_pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        #: The job each start file's record last named (read by the feed's thread only).
        self._reported_starts: dict[str, int] = {}

    def start(self, on_change: ChangeCallback) -> None:
        if self._thread is not None:
            raise StorageError("The change feed was already started")
        manager = pyinotify.WatchManager()
        try:
            manager.add_watch(self.queue_dir, _EVENT_MASK, quiet=False)
        except pyinotify.WatchManagerError as err:
            manager.close()
            raise StorageError(f"Cannot watch {self.queue_dir}: {err}") from err
        self._manager = manager
        self._stop_pipe = os.pipe()
        self._thread = threading.Thread(
            target=self._run, args=(on_change,), name="file-feed", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None or self._stop_pipe is None:
            return
        os.write(self._stop_pipe[1], b"x")
        self._thread.join()
        self._manager.close()  # closes the inotify fd, dropping the watch
        for fd in self._stop_pipe:
            os.close(fd)
        self._thread = self._stop_pipe = self._manager = None

    def _run(self, on_change: ChangeCallback) -> None:
        assert self._stop_pipe is not None
        inotify_fd, stop_fd = self._manager.get_fd(), self._stop_pipe[0]
        poller = select.poll()
        poller.register(inotify_fd, select.POLLIN)
        poller.register(stop_fd, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if stop_fd in ready:
                return
            try:
                data = os.read(inotify_fd, _READ_SIZE)
            except OSError:
                self._log.exception("Reading inotify events for %s failed", self.queue_dir)
                on_change(None)
                return
            self._report(decode_events(data), on_change)

    def _report(self, events: list[tuple[int, bytes]], on_change: ChangeCallback) -> None:
        """Call ``on_change`` once per job named in one batch of events."""
        changed: dict[int, None] = {}
        closed_starts: dict[str, None] = {}  # each read once per batch, after the loop
        for mask, name in events:
            if mask & pyinotify.IN_Q_OVERFLOW:
                self._log.warning("The inotify queue overflowed; reporting every job as changed")
                on_change(None)
                return
            if mask & pyinotify.IN_IGNORED:
                self._log.error("The watch on %s went away", self.queue_dir)
                on_change(None)
                return
            text = name.decode("ascii", "replace")
            if mask & pyinotify.IN_CLOSE_WRITE:
                if layout.is_start_name(text):
                    closed_starts[text] = None
                continue
            job_id = layout.job_id_of(text)
            if job_id is not None:
                changed[job_id] = None
        for start_name in closed_starts:
            job_id = self._started_job(start_name)
            if job_id is not None:
                changed[job_id] = None
        for job_id in changed:
            on_change(job_id)

    def _started_job(self, start_name: str) -> int | None:
        """The job a start file closed after writing changed; None if none.

        The job of the whole record it holds; without one (a record erased
        after its write failed, or torn), the job it last held, whose start
        is then undone.
        """
        version = startrecords.read_record(os.path.join(self.queue_dir, start_name))
        job_id = None
        if version is not None:
            with contextlib.suppress(JobFileCorrupted):
                job_id = decode_job(version).id
        if job_id is None:
            return self._reported_starts.pop(start_name, None)
        self._reported_starts[start_name] = job_id
        return job_id
