"""The queue's view of its live jobs in memory, and the announcement of their changes.

For every live job (stored, not archived) ``LiveJobs`` keeps an
``IndexEntry``: what listing a job needs. For every unfinished one it also
keeps the latest *published* state: a snapshot taken right after a write
became durable, which later changes of the job record never touch (the one
part not stored is ``Job.hold``, why the queue holds the job back, which the
queue publishes when it changes). The
queue publishes every write (``publish``); whoever watches a job
(``watch``, WaitForJobChange) is told at once, on the writer's thread, and
reads the new state from its watch without reading or parsing anything.
Finished jobs keep only their entry: their full state is read from the store.

It also counts what the live jobs hold, for the queue's limits: their
opcodes, and the bytes of JSON their opcodes' inputs take (measured once
per job, when it first appears).

Entries and snapshots change together under one lock, so a reader never
sees an entry newer than the snapshot next to it, and neither ever goes
back: a job has one writer, and it publishes in the order it writes.

Thread-safe; callbacks are called without the lock held.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue import constants
from jobqueue.constants import FINALIZED, Status
from jobqueue.model import Job, Submitter, Timestamp
from jobqueue.storage.base import encode_compact

Summarize = Callable[[dict[str, Any]], str]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the live jobs may hold before submissions are refused: jobs
    (``--max-jobs``), opcodes (``--max-opcodes``) and bytes of opcode inputs
    (``--max-opcode-bytes``)."""

    jobs: int = constants.DEFAULT_MAX_JOBS
    opcodes: int = constants.DEFAULT_MAX_OPCODES
    opcode_bytes: int = constants.DEFAULT_MAX_OPCODE_BYTES


#: The daemon's defaults.
DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(slots=True)
class IndexEntry:
    """What listing a job needs, kept in memory for every live job."""

    id: int
    status: Status
    priority: int
    received_timestamp: Timestamp | None
    start_timestamp: Timestamp | None
    end_timestamp: Timestamp | None
    summary: list[str]
    submitter: Submitter | None = None
    #: Why the queue holds the job back now (``Job.hold``), None if it does not.
    hold: dict[str, Any] | None = None
    #: Bytes of JSON its opcodes' inputs take (``input_size``); set by ``LiveJobs``.
    input_bytes: int = 0

    @classmethod
    def of(cls, job: Job, summarize: Summarize, previous: IndexEntry | None = None) -> IndexEntry:
        """The entry of ``job``; opcodes never change, so ``previous``'s summary is reused."""
        if previous is None or len(previous.summary) != len(job.ops):
            texts: dict[str, str] = {}  # equal summaries of a job share one string
            summary = [
                texts.setdefault(text, text) for text in (summarize(op.input) for op in job.ops)
            ]
        else:
            summary = previous.summary
        return cls(
            id=job.id,
            status=job.status,
            priority=job.priority,
            received_timestamp=job.received_timestamp,
            start_timestamp=job.start_timestamp,
            end_timestamp=job.end_timestamp,
            summary=summary,
            submitter=job.submitter,
            hold=job.hold,
        )


def input_size(job: Job) -> int:
    """Bytes of JSON the inputs of ``job``'s opcodes take: what its submission held."""
    return len(encode_compact([op.input for op in job.ops]))


def snapshot(job: Job) -> Job:
    """A copy of ``job`` that later changes of ``job`` never reach.

    Shallow where that is safe: opcode inputs, results, log entries and
    timestamps are replaced, never changed in place; the log lists are copied.
    """
    # ``copy.copy`` without its generic machinery (``__reduce_ex__``): a third
    # of a snapshot's cost, which every write pays. Assigning a copied
    # ``__dict__`` is a third cheaper than updating the new one.
    copied: Job = object.__new__(Job)
    copied.__dict__ = job.__dict__.copy()
    copied.ops = [op.copy() for op in job.ops]
    return copied


class JobWatch:
    """Interest in one job: ``latest`` is its newest published state, None once finished
    before the watch began, archived, or unknown (then read it from the store).

    ``on_change`` is called, on the publishing thread, after each change.
    Close it when done (it is a context manager too).
    """

    def __init__(
        self, live: LiveJobs, job_id: int, latest: Job | None, on_change: Callable[[], None]
    ) -> None:
        self.job_id = job_id
        self.latest = latest
        self._live = live
        self._on_change = on_change

    def close(self) -> None:
        self._live._unwatch(self)

    def __enter__(self) -> JobWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LiveJobs:
    """See the module docstring; ``summarize`` gives an opcode's listing summary."""

    def __init__(self, summarize: Summarize) -> None:
        self._summarize = summarize
        self._lock = threading.Lock()  # guards the three dicts and the two counts
        self._entries: dict[int, IndexEntry] = {}
        self._opcodes = 0  # of every entry: the sum of their summaries' lengths
        self._input_bytes = 0  # of every entry: the sum of their input_bytes
        self._latest: dict[int, Job] = {}
        self._watches: dict[int, list[JobWatch]] = {}

    # -- writers (the queue) -----------------------------------------------------
    def load(self, jobs: Iterable[Job], *, copy: bool = True) -> None:
        """Replace the whole view with ``jobs``, read from the store.

        At start, at a takeover, or when a change feed lost track. With
        ``copy`` the unfinished jobs are copied, as their owner goes on
        changing them; a caller that hands over jobs nobody else holds
        passes False. Every watch hears of it, as its job may have changed.
        """
        entries: dict[int, IndexEntry] = {}
        latest: dict[int, Job] = {}
        for job in jobs:
            entry = entries[job.id] = IndexEntry.of(job, self._summarize)
            entry.input_bytes = input_size(job)
            if entry.status not in FINALIZED:
                latest[job.id] = snapshot(job) if copy else job
        opcodes = sum(len(entry.summary) for entry in entries.values())
        input_bytes = sum(entry.input_bytes for entry in entries.values())
        callbacks = []
        with self._lock:
            self._entries, self._latest = entries, latest
            self._opcodes, self._input_bytes = opcodes, input_bytes
            for job_id, watches in self._watches.items():
                for watch in watches:
                    watch.latest = latest.get(job_id)
                    callbacks.append(watch._on_change)
        for callback in callbacks:
            callback()

    def publish(self, jobs: Iterable[Job], *, copy: bool = True) -> None:
        """Announce the state of ``jobs`` as just made durable (see ``load`` for ``copy``).

        A finished job keeps only its entry, whose values its owner replaces
        but never changes: it is copied only for the watches it has.
        """
        copies = [(job, snapshot(job) if copy and not job.is_finalized else job) for job in jobs]
        # Measured outside the lock: a job is new here once, at its submission.
        sizes = {job.id: input_size(job) for job, _ in copies if job.id not in self._entries}
        callbacks = []
        with self._lock:
            for job, copied in copies:
                previous = self._entries.get(copied.id)
                entry = IndexEntry.of(copied, self._summarize, previous)
                self._entries[entry.id] = entry
                if previous is None:
                    entry.input_bytes = sizes.get(entry.id) or input_size(copied)
                    self._opcodes += len(entry.summary)
                    self._input_bytes += entry.input_bytes
                else:
                    entry.input_bytes = previous.input_bytes
                    self._opcodes += len(entry.summary) - len(previous.summary)  # 0: ops stay
                if entry.status in FINALIZED:
                    self._latest.pop(entry.id, None)
                else:
                    self._latest[entry.id] = copied
                watches = self._watches.get(entry.id, ())
                if watches and copy and copied is job:  # finished, and watched
                    copied = snapshot(job)
                for watch in watches:
                    watch.latest = copied
                    callbacks.append(watch._on_change)
        for callback in callbacks:
            callback()

    def drop(self, job_ids: Iterable[int]) -> None:
        """Forget jobs that left the live queue (archived, or withdrawn before anyone knew)."""
        callbacks = []
        with self._lock:
            for job_id in job_ids:
                entry = self._entries.pop(job_id, None)
                if entry is not None:
                    self._opcodes -= len(entry.summary)
                    self._input_bytes -= entry.input_bytes
                self._latest.pop(job_id, None)
                for watch in self._watches.get(job_id, ()):
                    watch.latest = None
                    callbacks.append(watch._on_change)
        for callback in callbacks:
            callback()

    def output_grew(self, job_id: int) -> None:
        """Tell the job's watches that its command output grew; the job did not change."""
        with self._lock:
            callbacks = [watch._on_change for watch in self._watches.get(job_id, ())]
        for callback in callbacks:
            callback()

    # -- readers -------------------------------------------------------------------
    def entry(self, job_id: int) -> IndexEntry | None:
        with self._lock:
            return self._entries.get(job_id)

    def entries(self, job_ids: Iterable[int] | None = None) -> list[IndexEntry]:
        """Entries sorted by id: all live jobs, or those of ``job_ids`` that are live."""
        with self._lock:
            if job_ids is None:
                return sorted(self._entries.values(), key=lambda entry: entry.id)
            return [self._entries[i] for i in job_ids if i in self._entries]

    def latest(self, job_id: int) -> Job | None:
        """The published state of an unfinished live job (read-only), else None."""
        with self._lock:
            return self._latest.get(job_id)

    def status_of(self, job_id: int) -> Status | None:
        """The job's status as last written, None if it is not live."""
        with self._lock:
            entry = self._entries.get(job_id)
        return None if entry is None else entry.status

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._entries)

    def count(self) -> int:
        with self._lock:
            return len(self._entries)

    def opcode_count(self) -> int:
        """How many opcodes the live jobs hold, all together."""
        with self._lock:
            return self._opcodes

    def input_bytes(self) -> int:
        """Bytes of JSON the live jobs' opcode inputs take, all together (``input_size``)."""
        with self._lock:
            return self._input_bytes

    def tally(self) -> dict[tuple[str, int], int]:
        """How many live jobs have each (status, priority); for metrics."""
        with self._lock:
            pairs = [(entry.status.value, entry.priority) for entry in self._entries.values()]
        return dict(collections.Counter(pairs))

    def held_tally(self) -> dict[tuple[str, str], int]:
        """How many live jobs each (hold kind, filter rule uuid or "") holds back; for metrics."""
        with self._lock:
            holds = [entry.hold for entry in self._entries.values() if entry.hold is not None]
        return dict(collections.Counter((str(h["kind"]), str(h.get("filter", ""))) for h in holds))

    def contains(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._entries

    # -- watches ---------------------------------------------------------------------
    def watch(self, job_id: int, on_change: Callable[[], None]) -> JobWatch:
        """Watch one job; see ``JobWatch``."""
        with self._lock:
            watch = JobWatch(self, job_id, self._latest.get(job_id), on_change)
            self._watches.setdefault(job_id, []).append(watch)
        return watch

    def watch_count(self) -> int:
        with self._lock:
            return sum(len(watches) for watches in self._watches.values())

    def _unwatch(self, watch: JobWatch) -> None:
        with self._lock:
            watches = self._watches.get(watch.job_id)
            if watches is not None and watch in watches:
                watches.remove(watch)
                if not watches:
                    del self._watches[watch.job_id]
