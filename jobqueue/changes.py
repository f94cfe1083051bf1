"""What a WaitForJobChange caller has not seen of a job yet, with reads shared.

``ChangeChecker.check`` compares a job as stored with what the caller last
saw (its requested fields and the serial of its last log entry) and returns
``[job_info, new log entries]``, or None when nothing changed. A canceling
or finished job always counts as changed.

Reads are shared: calls passing the same ``generation`` (the watcher's count
of event batches) use one read of the job file, so the waiters of one busy
job parse it once per change, not once each. A shared read can be one change
behind the file while that change's event is on its way to the watcher; a
waiter loses nothing by it, since the event wakes it again. A caller's first
look, though, may bring news newer than the shared read (from a QueryJobs,
say), so whatever it finds there other than "no change" is checked on a
fresh read: no caller is ever sent back to an older state.

The shared jobs are read-only. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from jobqueue import query
from jobqueue.constants import Status
from jobqueue.errors import JobLost
from jobqueue.model import Job
from jobqueue.storage import IndexEntry, Summarize

_UNFINISHED = (Status.QUEUED, Status.WAITING, Status.RUNNING)


class ChangeChecker:
    """Answers "what changed?" for watchers; ``read_job`` returns None for no job."""

    def __init__(self, read_job: Callable[[int], Job | None], summarize: Summarize) -> None:
        self._read_job = read_job
        self._summarize = summarize
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._shared: dict[int, Job | None] = {}  # jobs read in ``_generation``

    def check(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        *,
        generation: int | None = None,
        first_look: bool = True,
    ) -> list[Any] | None:
        """The change since what the caller saw, or None; ``JobLost`` for no such job."""
        job, shared = self._read(job_id, generation)
        if shared and first_look:
            if (
                job is not None
                and self._change(job, fields, prev_job_info, prev_log_serial) is None
            ):
                return None
            job = self._read_job(job_id)  # a change to report: make sure it is current
        if job is None:
            raise JobLost(f"Job {job_id} not found")
        return self._change(job, fields, prev_job_info, prev_log_serial)

    def _read(self, job_id: int, generation: int | None) -> tuple[Job | None, bool]:
        """The job, shared within ``generation``; True if another call read it."""
        if generation is None:
            return self._read_job(job_id), False
        with self._lock:
            if self._generation != generation:
                self._generation, self._shared = generation, {}
            shared = self._shared
            if job_id in shared:
                return shared[job_id], True
        job = self._read_job(job_id)
        with self._lock:
            if self._generation == generation:
                shared[job_id] = job
        return job, False

    def _change(
        self,
        job: Job,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
    ) -> list[Any] | None:
        record = (IndexEntry.of(job, self._summarize), job)
        info = query.old_style_rows(fields, [record])[0]
        log = job.log_entries_after(prev_log_serial)
        if job.status in _UNFINISHED and not log and info == prev_job_info:
            return None
        return [info, log]
