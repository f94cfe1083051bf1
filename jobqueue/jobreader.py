"""Every read-only question about jobs: QueryJobs, Query, QueryFields, and what changed.

``JobReader`` answers from the queue's view of its live jobs
(``livejobs.LiveJobs``: index entries, and the published state of
unfinished jobs) and reads the store only for what that view does not hold:
the full state of finished and archived jobs. It never changes anything.

``read_output`` answers ReadJobOutput: a job's command output by offset,
each stream the opcodes' streams one after the other.

``job_change`` is the heart of WaitForJobChange: it compares a job with what
a caller last saw (its requested fields and the serial of its last log
entry). ``watch_job`` lets a waiter hear of changes from ``LiveJobs``: the
queue's own writes on the daemon that leads, the store's change feed on a
standby (``standby.StoreMirror`` keeps its ``LiveJobs`` in step).

Thread-safe: called from handler threads and the server's loop.
"""

from __future__ import annotations

import base64
import collections
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from jobqueue import filters, qlang, query
from jobqueue.constants import FINALIZED, Status
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import ECODE_INVAL, GenericError, OpPrereqError
from jobqueue.livejobs import IndexEntry, LiveJobs, Summarize
from jobqueue.locking import LockManager
from jobqueue.model import Job
from jobqueue.query import JobRecord
from jobqueue.storage.base import JobStore

_UNFINISHED = (Status.QUEUED, Status.WAITING, Status.RUNNING)
#: Finished or archived jobs a query reads from the store in one go.
READ_AHEAD = 64


class Watch(Protocol):
    """A watch on one job: its newest known state (None: read the store), and ``close``."""

    latest: Job | None

    def close(self) -> None: ...


def stored_status(live: LiveJobs, store: JobStore, job_id: int) -> Status | None:
    """A job's status as last written, what dependents may act on; None if unknown.

    Not the in-memory record of a running job: after a failed write that one
    may already show an end that is not stored yet.
    """
    status = live.status_of(job_id)
    if status is not None:
        return status
    job = _read_quietly(store, job_id, logging.getLogger(__name__))
    return None if job is None else job.status


class JobReader:
    """See the module docstring; ``daemon.py`` builds one beside the queue."""

    def __init__(
        self,
        live: LiveJobs,
        store: JobStore,
        locks: LockManager,
        depmgr: DependencyManager,
        summarize: Summarize,
        *,
        filter_rules: Callable[[], list[filters.FilterRule]] = list,
        compile_filter: filters.CompileFilter = qlang.compile_filter,
        logger: logging.Logger | None = None,
    ) -> None:
        """``filter_rules`` gives the job filter rules for ``Query("filter")``."""
        self._live = live
        self._store = store
        self._locks = locks
        self._depmgr = depmgr
        self._summarize = summarize
        self._filter_rules = filter_rules
        self._compile_filter = compile_filter
        self._log = logger or logging.getLogger(__name__)

    def read_job(self, job_id: int) -> Job | None:
        """The newest state of a job: published if unfinished, else from the store.

        None for an unknown job, or one that cannot be read (logged).
        """
        return self._live.latest(job_id) or _read_quietly(self._store, job_id, self._log)

    def watch_job(self, job_id: int, on_change: Callable[[], None]) -> Watch:
        """Hear of the job's changes; see ``Watch``."""
        return self._live.watch(job_id, on_change)

    def job_change(
        self,
        job: Job,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
    ) -> list[Any] | None:
        """``[job_info, new log entries]`` if ``job`` differs from what the caller saw, else None.

        A canceling or finished job always counts as changed.
        """
        live_entry = self._live.entry(job.id)
        entry = IndexEntry.of(job, self._summarize, live_entry)
        archived = "archived" in fields and live_entry is None and self._is_archived(job.id)
        info = query.old_style_rows(fields, [JobRecord(job.id, entry, job, archived)])[0]
        log = job.log_entries_after(prev_log_serial)
        if job.status in _UNFINISHED and not log and info == prev_job_info:
            return None
        return [info, log]

    def query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> list[list[Any]]:
        """Old-style rows of plain values; all live jobs when ``job_ids`` is None.

        A job that does not exist has a row with its id and nulls.
        """
        return list(self.iter_query_jobs(job_ids, fields))

    def iter_query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> Iterator[list[Any]]:
        """``query_jobs`` one row at a time, each job read only when its row is due.

        A job named more than once gets a row each time, from one read.
        Unknown fields raise ``OpPrereqError`` before the first row.
        """
        query.old_style_rows(fields, [])  # unknown fields fail now, not at the first row
        full = query.needs_full_job(fields)
        ids = self._live.ids() if job_ids is None else job_ids
        return _rows(lambda r: query.old_style_rows(fields, [r])[0], self._records(ids, full))

    def query(
        self, what: str, fields: list[str], qfilter: Any, archived: bool = False
    ) -> dict[str, Any]:
        """Query2: ``{"fields": [definitions], "data": [[[status, value], ...], ...]}``.

        Jobs: a filter that only names ids (``requested_ids``) gets one row
        per id, in order, for live, archived and unknown jobs alike (an
        unknown one with only its id). Otherwise the candidates are the live
        jobs, plus the archived ones when the ``archived`` field is asked
        for or filtered on (Ganeti's ``gnt-job list --archived``); the
        ``archived`` argument (jobqueue's own) lists archived jobs only.
        Filter rules (``what`` "filter") are listed in evaluation order.
        Raises ``OpPrereqError`` for a bad filter.
        """
        answer = self.iter_query(what, fields, qfilter, archived)
        return {**answer, "data": list(answer["data"])}

    def iter_query(
        self, what: str, fields: list[str], qfilter: Any, archived: bool = False
    ) -> dict[str, Any]:
        """``query`` with ``data`` an iterator: each job is read only when its row is due."""
        if what == "filter":
            answer = filters.query(self._filter_rules(), fields, qfilter, self._compile_filter)
            return {**answer, "data": iter(answer["data"])}
        definitions = query.query_fields(what, fields)["fields"]
        if what == "lock":
            if qfilter is not None:
                raise OpPrereqError("Lock queries can't be filtered", ECODE_INVAL)
            locks = self._locks.lock_info() + self._depmgr.lock_info()
            return {"fields": definitions, "data": iter(query.rows(what, fields, locks))}
        predicate, used = query.compile_filter(what, qfilter)
        full = query.needs_full_job([*fields, *used])
        explicit = query.requested_ids(qfilter)
        if explicit is not None:
            candidates = self._records(list(dict.fromkeys(explicit)), full)
        else:
            candidates = self._candidates(full, archived, query.wants_archived(fields, used))
        records = (record for record in candidates if predicate(record))
        rows = _rows(lambda record: query.rows(what, fields, [record])[0], records)
        return {"fields": definitions, "data": rows}

    def query_fields(self, what: str, fields: list[str] | None) -> dict[str, Any]:
        if what == "filter":
            return {"fields": filters.field_definitions(fields)}
        return query.query_fields(what, fields)

    def read_output(
        self, job_id: int, offsets: Mapping[str, int], max_bytes: int
    ) -> dict[str, Any] | None:
        """ReadJobOutput's answer (``doc/luxi.rst``); None for a job that does not exist.

        Each stream of ``offsets`` is read from its offset (negative: that
        many bytes before its end) for at most ``max_bytes``. The job's status
        is taken before the output is read: output of a finished job is
        complete. Raises ``StorageError`` when the store cannot be read.
        """
        status = self._live.status_of(job_id)
        if status is None:
            job = self.read_job(job_id)
            if job is None:
                return None
            status = job.status
        sizes = self._store.output_sizes(job_id)
        answer: dict[str, Any] = {"status": status.value, "finished": status in FINALIZED}
        for stream, offset in offsets.items():
            answer[stream] = self._read_stream(job_id, stream, offset, max_bytes, sizes)
        return answer

    def _read_stream(
        self,
        job_id: int,
        stream: str,
        offset: int,
        max_bytes: int,
        sizes: Mapping[tuple[int, str], int],
    ) -> dict[str, Any]:
        """One stream of the answer: the opcodes' streams of that name, end to end."""
        parts = sorted((index, size) for (index, name), size in sizes.items() if name == stream)
        total = sum(size for _, size in parts)
        start = max(0, total + offset) if offset < 0 else offset
        position, wanted, chunks = start, max_bytes, []
        part_start = 0
        for number, (op_index, size) in enumerate(parts):
            last = number == len(parts) - 1  # may have grown since ``sizes``: read on
            if position < part_start:
                break  # an earlier part ended short of its size: never skip bytes
            if wanted > 0 and (position < part_start + size or last):
                data = self._store.read_output(
                    job_id, op_index, stream, position - part_start, wanted
                )
                chunks.append(data)
                position += len(data)
                wanted -= len(data)
            part_start += size
        data = b"".join(chunks)
        return {
            "offset": start,
            "data": base64.b64encode(data).decode("ascii"),
            "size": max(total, position),
        }

    def _candidates(
        self, full: bool, archived_only: bool, with_archived: bool
    ) -> Iterator[JobRecord]:
        """Existing jobs to filter, sorted by id: live, archived, or both; read as iterated."""
        live = [] if archived_only else self._live.ids()
        stored = self._store.archived_ids() if archived_only or with_archived else []
        archived = set(stored).difference(live)
        records = (
            self._record(i, full, archived=i in archived) for i in sorted({*live, *archived})
        )
        return (record for record in records if record.entry is not None)

    def _records(self, job_ids: list[int], full: bool) -> Iterator[JobRecord]:
        """The record of each id in turn; an id named again reuses its first read.

        Jobs the store must be asked for are read ``READ_AHEAD`` at a time
        (one etcd request for them all), so memory stays bounded.
        """
        remaining = collections.Counter(job_ids)
        repeated: dict[int, JobRecord] = {}
        for start in range(0, len(job_ids), READ_AHEAD):
            chunk = job_ids[start : start + READ_AHEAD]
            stored = self._read_ahead([i for i in chunk if i not in repeated], full)
            for job_id in chunk:
                if job_id in repeated:
                    record = repeated[job_id]
                else:
                    record = self._record(job_id, full, stored=stored)
                remaining[job_id] -= 1
                if remaining[job_id]:
                    repeated[job_id] = record
                else:
                    repeated.pop(job_id, None)
                yield record

    def _read_ahead(self, job_ids: list[int], full: bool) -> dict[int, Job | None]:
        """The stored state of those of ``job_ids`` that ``_record`` would read one by one."""
        wanted = [
            job_id
            for job_id in dict.fromkeys(job_ids)
            if (full or self._live.entry(job_id) is None) and self._live.latest(job_id) is None
        ]
        if len(wanted) < 2:
            return {}
        try:
            return dict(zip(wanted, self._store.read_jobs(wanted), strict=True))
        except GenericError:  # one of them cannot be read: each alone, to log which
            return {job_id: _read_quietly(self._store, job_id, self._log) for job_id in wanted}

    def _record(
        self,
        job_id: int,
        full: bool,
        *,
        archived: bool | None = None,
        stored: Mapping[int, Job | None] | None = None,
    ) -> JobRecord:
        """What queries read of a job; ``archived`` None: find out if it is needed.

        ``stored`` holds jobs already read from the store. A job that does
        not exist (or cannot be read) is ``JobRecord.missing``.
        """
        entry = self._live.entry(job_id)
        if entry is not None and not full:
            return JobRecord(job_id, entry)
        if stored is not None and job_id in stored:
            job = self._live.latest(job_id) or stored[job_id]
        else:
            job = self.read_job(job_id)
        if job is None:
            return JobRecord.missing(job_id)
        if archived is None:
            archived = entry is None and self._is_archived(job_id)
        return JobRecord(job_id, IndexEntry.of(job, self._summarize, entry), job, archived)

    def _is_archived(self, job_id: int) -> bool:
        return self._live.entry(job_id) is None and self._store.is_archived(job_id)


def _rows(
    make_row: Callable[[JobRecord], list[Any]], records: Iterable[JobRecord]
) -> Iterator[list[Any]]:
    """A row per record; the same record twice in a row gives the same row object twice,
    which the server encodes once."""
    last_record: JobRecord | None = None
    last_row: list[Any] | None = None
    for record in records:
        if last_row is None or record is not last_record:
            last_record, last_row = record, make_row(record)
        yield last_row


def _read_quietly(store: JobStore, job_id: int, log: logging.Logger) -> Job | None:
    try:
        return store.read_job(job_id)
    except GenericError as err:
        log.warning("Cannot read job %s: %s", job_id, err)
        return None
