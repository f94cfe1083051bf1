"""The memory store: the storage contract held in dictionaries, for unit tests.

Jobs are kept serialised, so a caller's later changes to a ``Job`` object
never reach the store without a write, as with files. Several stores may
share one ``MemoryBacking``, standing in for processes that share a queue:
each one's change feed reports the writes made through the others.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from jobqueue.errors import JobQueueError, NotLeaderError, StorageError
from jobqueue.model import Job
from jobqueue.storage.base import (
    OUTPUT_STREAMS,
    ChangeCallback,
    ChangeFeed,
    JobStore,
    Leadership,
    OutputStream,
    PruneResult,
    check_setting,
    decode_job,
    encode_job,
)


class MemoryBacking:
    """What a set of memory stores share; ``lock`` guards every field."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: dict[int, bytes] = {}
        self.archive: dict[int, tuple[bytes, float]] = {}  # data, time archived
        #: Command output of live and archived jobs: job id -> (op index, stream) -> bytes.
        self.outputs: dict[int, dict[tuple[int, str], bytearray]] = {}
        self.serial = 0
        self.drained = False
        self.settings: dict[str, str] = {}
        self.filters: dict[str, str] = {}  # uuid -> the rule as JSON
        self.feeds: list[MemoryChangeFeed] = []
        self.leader: MemoryLeadership | None = None
        self.leader_changed = threading.Condition(self.lock)


class MemoryJobStore(JobStore):
    """See the module docstring; ``clock`` dates archived jobs for pruning."""

    def __init__(
        self, backing: MemoryBacking | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._backing = backing or MemoryBacking()
        self._clock = clock
        self._closed = False
        self._leadership: MemoryLeadership | None = None

    def _check_leader_locked(self) -> None:
        """Fencing: once this handle led, it writes only while it still leads."""
        lead = self._leadership
        if lead is not None and lead.held_once and self._backing.leader is not lead:
            raise NotLeaderError("This process no longer leads the job queue", 0)

    def _changed(self, job_ids: Iterable[int]) -> None:
        """Tell the feeds of the other stores on this backing (backing lock held)."""
        feeds = [feed for feed in self._backing.feeds if feed.store is not self]
        for job_id in job_ids:
            for feed in feeds:
                feed.report(job_id)

    def allocate_ids(self, count: int) -> list[int]:
        if self._closed:
            raise JobQueueError("The store was closed")
        with self._backing.lock:
            self._check_leader_locked()
            first = self._backing.serial + 1
            self._backing.serial += count
            return list(range(first, first + count))

    def release_unused_ids(self) -> None:
        self._closed = True

    def load_jobs(self) -> Iterator[Job]:
        with self._backing.lock:
            data = list(self._backing.live.values())
            self._backing.serial = max(self._backing.serial, *self._backing.live, 0)
        for item in data:
            yield decode_job(item)

    def create_jobs(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        encoded = [(job.id, encode_job(job)) for job in jobs]
        with self._backing.lock:
            try:
                self._check_leader_locked()
            except NotLeaderError as err:
                return [err] * len(jobs)
            self._backing.live.update(encoded)
            self._changed(job.id for job in jobs)
        return [None] * len(jobs)

    def replace_job(self, job: Job) -> None:
        data = encode_job(job)
        with self._backing.lock:
            self._check_leader_locked()
            self._backing.live[job.id] = data
            self._changed([job.id])

    def discard_jobs(self, job_ids: Sequence[int]) -> tuple[list[int], StorageError | None]:
        with self._backing.lock:
            try:
                self._check_leader_locked()
            except NotLeaderError as err:
                return [], err
            for job_id in job_ids:
                self._backing.live.pop(job_id, None)
                self._backing.outputs.pop(job_id, None)
            self._changed(job_ids)
        return list(job_ids), None

    def read_job(self, job_id: int) -> Job | None:
        with self._backing.lock:
            data = self._backing.live.get(job_id)
            if data is None and job_id in self._backing.archive:
                data = self._backing.archive[job_id][0]
        return None if data is None else decode_job(data)

    def archive_jobs(self, job_ids: Iterable[int]) -> tuple[list[int], StorageError | None]:
        moved = []
        now = self._clock()
        with self._backing.lock:
            try:
                self._check_leader_locked()
            except NotLeaderError as err:
                return [], err
            for job_id in sorted(set(job_ids)):
                if job_id in self._backing.live:
                    self._backing.archive[job_id] = (self._backing.live.pop(job_id), now)
                    moved.append(job_id)
            self._changed(moved)
        return moved, None

    def is_archived(self, job_id: int) -> bool:
        with self._backing.lock:
            return job_id in self._backing.archive

    def archived_ids(self) -> list[int]:
        with self._backing.lock:
            return sorted(self._backing.archive)

    def prune_archive(self, max_age: float, now: float, budget: float | None = None) -> PruneResult:
        result = PruneResult()
        with self._backing.lock:
            old = [i for i, (_, when) in self._backing.archive.items() if when < now - max_age]
            for job_id in old:
                del self._backing.archive[job_id]
                self._backing.outputs.pop(job_id, None)
            result.jobs = len(old)
        return result

    def is_drained(self) -> bool:
        with self._backing.lock:
            return self._backing.drained

    def set_drained(self, drained: bool) -> None:
        with self._backing.lock:
            self._check_leader_locked()
            self._backing.drained = drained

    def read_setting(self, name: str) -> str | None:
        check_setting(name)
        with self._backing.lock:
            return self._backing.settings.get(name)

    def write_setting(self, name: str, value: str | None) -> None:
        check_setting(name, value)
        with self._backing.lock:
            if value is None:
                self._backing.settings.pop(name, None)
            else:
                self._backing.settings[name] = value

    def load_filters(self) -> list[dict[str, Any]]:
        with self._backing.lock:
            stored = list(self._backing.filters.values())
        return [json.loads(text) for text in stored]

    def replace_filter(self, rule: dict[str, Any]) -> None:
        text = json.dumps(rule)
        with self._backing.lock:
            self._check_leader_locked()
            self._backing.filters[rule["uuid"]] = text

    def delete_filter(self, uuid: str) -> bool:
        with self._backing.lock:
            self._check_leader_locked()
            return self._backing.filters.pop(uuid, None) is not None

    def open_output(self, job_id: int, op_index: int, stream: str) -> OutputStream:
        if stream not in OUTPUT_STREAMS or op_index < 0:
            raise ValueError(f"No output stream {stream!r} of opcode {op_index}")
        with self._backing.lock:
            self._check_leader_locked()
            streams = self._backing.outputs.setdefault(job_id, {})
            data = streams.setdefault((op_index, stream), bytearray())
        return MemoryOutputStream(self._backing, data)

    def output_sizes(self, job_id: int) -> dict[tuple[int, str], int]:
        with self._backing.lock:
            streams = self._backing.outputs.get(job_id, {})
            return {key: len(data) for key, data in streams.items()}

    def read_output(
        self, job_id: int, op_index: int, stream: str, offset: int, max_bytes: int
    ) -> bytes:
        if offset < 0 or max_bytes < 0:
            raise ValueError(f"Invalid range {offset}+{max_bytes}")
        with self._backing.lock:
            data = self._backing.outputs.get(job_id, {}).get((op_index, stream), b"")
            return bytes(data[offset : offset + max_bytes])

    def change_feed(self) -> ChangeFeed:
        return MemoryChangeFeed(self, self._backing)

    def close(self) -> None:
        if self._leadership is not None:
            self._leadership.release()

    def leadership(self, name: str) -> MemoryLeadership:
        if self._leadership is None:
            self._leadership = MemoryLeadership(name, self._backing)
        return self._leadership


class MemoryOutputStream(OutputStream):
    """Appends to one stream's bytes in a backing (under its lock)."""

    def __init__(self, backing: MemoryBacking, data: bytearray) -> None:
        self._backing = backing
        self._data: bytearray | None = data

    def append(self, data: bytes) -> None:
        if self._data is None:
            raise StorageError("The output stream is closed", 0)
        with self._backing.lock:
            self._data += data

    def close(self) -> None:
        self._data = None


class MemoryLeadership(Leadership):
    """Leadership of a memory backing; ``expire`` plays a lease that ran out."""

    def __init__(self, name: str, backing: MemoryBacking) -> None:
        super().__init__()
        self.name = name
        self.held_once = False  # writes are fenced from the first acquire on
        self._backing = backing

    def acquire(self, wait: float) -> bool:
        with self._backing.leader_changed:
            won = self._backing.leader_changed.wait_for(
                lambda: self._backing.leader in (None, self), wait
            )
            if won:
                self._backing.leader = self
                self.held_once = True
                self.lost.clear()
            return bool(won)

    def release(self) -> None:
        with self._backing.leader_changed:
            if self._backing.leader is self:
                self._backing.leader = None
                self._backing.leader_changed.notify_all()

    def expire(self) -> None:
        """Lose leadership as an expired lease would: someone else may take over now."""
        self.release()
        self.lost.set()

    def holder(self) -> str | None:
        with self._backing.lock:
            return None if self._backing.leader is None else self._backing.leader.name


class MemoryChangeFeed(ChangeFeed):
    """Reports writes made through the other stores of a backing, from its own thread."""

    def __init__(self, store: MemoryJobStore, backing: MemoryBacking) -> None:
        self.store = store
        self._backing = backing
        self._pending: list[int] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self, on_change: ChangeCallback) -> None:
        if self._thread is not None:
            raise StorageError("The change feed was already started")
        with self._backing.lock:
            self._backing.feeds.append(self)
        self._thread = threading.Thread(
            target=self._run, args=(on_change,), name="memory-feed", daemon=True
        )
        self._thread.start()

    def report(self, job_id: int) -> None:
        with self._wake:
            self._pending.append(job_id)
            self._wake.notify()

    def stop(self) -> None:
        if self._thread is None:
            return
        with self._backing.lock:
            self._backing.feeds.remove(self)
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        self._thread = None

    def _run(self, on_change: ChangeCallback) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                pending, self._pending = self._pending, []
            for job_id in dict.fromkeys(pending):
                on_change(job_id)
