"""Moving finished jobs to the archive, and pruning the archive.

``Archiver`` answers ArchiveJob, AutoArchiveJobs and PruneArchive: it
moves finished live jobs into the store's archive and drops them from the
live view (``LiveJobs``), and has the store delete archived jobs past an
age. It never touches an unfinished job, so it needs nothing of the
queue's running jobs: a job counts as finished once its end is written,
and nothing writes it after that. Who may archive what is checked by
``ownership.Ownership``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jobqueue.constants import FINALIZED
from jobqueue.livejobs import IndexEntry, LiveJobs
from jobqueue.model import Submitter
from jobqueue.ownership import Ownership
from jobqueue.storage.base import JobStore

#: Jobs handed to the store per ``archive_jobs`` call by ``auto_archive_jobs``.
_ARCHIVE_BATCH = 1000


class Archiver:
    """See the module docstring; ``daemon.py`` builds one for each queue."""

    def __init__(
        self,
        store: JobStore,
        live: LiveJobs,
        ownership: Ownership,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._live = live
        self._ownership = ownership
        self._clock = clock

    def archive_job(self, job_id: int, *, caller: Submitter | None = None) -> bool:
        """Archive one finished live job; False if it is not that.

        A job counts as finished once its end is written, even while its
        worker is still wrapping up: nothing writes it after that.
        ``AccessDenied`` unless ``caller`` may change the job.
        """
        entry = self._live.entry(job_id)
        if entry is None or entry.status not in FINALIZED:
            return False
        self._ownership.check_job(caller, entry.submitter, job_id, "archive")
        return bool(self._archive([job_id]))

    def auto_archive_jobs(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> list[int]:
        """Archive finished jobs older than ``age`` seconds (-1: all) within ``timeout``.

        Returns ``[archived, left unchecked]``; call again while the second
        is > 0. Admins only (``AccessDenied``).
        """
        self._ownership.check_queue(caller, "archive other users' jobs")
        now, deadline = self._clock(), time.monotonic() + max(0.0, timeout)
        entries = self._live.entries()
        archived, checked, batch = 0, 0, []
        for entry in entries:
            if time.monotonic() > deadline:
                break
            checked += 1
            if _old_enough(entry, age, now):
                batch.append(entry.id)
            if len(batch) >= _ARCHIVE_BATCH:
                archived += len(self._archive(batch))
                batch = []
        archived += len(self._archive(batch)) if batch else 0
        return [archived, len(entries) - checked]

    def prune_archive(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> dict[str, Any]:
        """Delete archived jobs older than ``age`` seconds, for about ``timeout`` seconds.

        ``{"jobs": deleted, "directories": removed, "unfinished": more to do,
        "failures": [messages]}``; call again while ``unfinished``. Admins only.
        """
        self._ownership.check_queue(caller, "prune the archive")
        result = self._store.prune_archive(max(0.0, age), self._clock(), max(0.0, timeout))
        return {
            "jobs": result.jobs,
            "directories": result.directories,
            "unfinished": result.unfinished,
            "failures": result.failures,
        }

    def _archive(self, job_ids: list[int]) -> list[int]:
        """Move jobs to the archive and out of the live view; ``StorageError`` after a failure."""
        moved, failure = self._store.archive_jobs(job_ids)
        self._live.drop(moved)
        if failure is not None:
            raise failure
        return moved


def _old_enough(entry: IndexEntry, age: float, now: float) -> bool:
    if entry.status not in FINALIZED:
        return False
    if age < 0:
        return True
    stamp = entry.end_timestamp or entry.start_timestamp or entry.received_timestamp
    return stamp is not None and now - stamp[0] > age
