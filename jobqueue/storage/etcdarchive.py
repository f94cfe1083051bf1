"""The etcd store's archive: moving finished jobs there, and pruning old ones.

Archiving moves a batch of live jobs in one transaction: each job's bytes are
put under ``archive/<id>`` and its ``jobs/<id>`` key deleted, on condition
that the live key still has the mod_revision it was read at, that the
archived key does not exist (an archived job is never replaced: a live job
whose id is archived already stays live), and on the leadership fence.
The same transaction writes one ``archive-time/<first id>`` record holding
the time: it shares the batch's revision, and archived keys never change,
so an archived key's mod_revision tells when it was archived, with no need
to read (or store) anything in the job itself.

Pruning lists the records, then the archived keys without their values,
page by page; a key whose record is older than the cutoff is deleted, in
batches, within the time budget. A key without a record (written by other
means) is dated by its job's end (or received) time. Records that no longer
date any archived key are deleted once a pass has seen every key.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence

from jobqueue.errors import GenericError, StorageError
from jobqueue.model import merge_time
from jobqueue.storage.base import PruneResult, decode_job
from jobqueue.storage.etcdkv import MAX_TXN_OPS, EtcdKV, KeyValue, TxnResult
from jobqueue.storage.etcdlayout import Keys, request_cost

#: Jobs read and moved per transaction: two operations and two compares each,
#: plus the record (and the fence).
ARCHIVE_BATCH = (MAX_TXN_OPS - 1) // 2
#: Archived keys deleted per transaction when pruning.
PRUNE_BATCH = 100
#: Attempts at a batch whose jobs changed between reading and moving.
_ATTEMPTS = 3

#: The store's fenced write: ``write(what, puts=..., deletes=..., expect=...)``.
Write = Callable[..., TxnResult]


class ArchiveKeeper:
    """Archive and prune under ``keys`` through the store's fenced ``write``."""

    def __init__(
        self,
        kv: EtcdKV,
        keys: Keys,
        max_request_bytes: int,
        write: Write,
        logger: logging.Logger,
    ) -> None:
        self._kv = kv
        self._keys = keys
        self._max_request_bytes = max_request_bytes
        self._write = write
        self._log = logger

    # -- archiving ----------------------------------------------------------------
    def archive(self, job_ids: list[int], now: float) -> tuple[list[int], StorageError | None]:
        """Move the live ones of ``job_ids`` (sorted) to the archive, batch by batch.

        Returns the ids moved and the first failure; moving stops there.
        """
        moved: list[int] = []
        for start in range(0, len(job_ids), ARCHIVE_BATCH):
            batch = job_ids[start : start + ARCHIVE_BATCH]
            try:
                moved.extend(self._archive_batch(batch, now))
            except StorageError as err:
                return moved, err
        return moved, None

    def _archive_batch(self, batch: list[int], now: float) -> list[int]:
        """Move the live jobs of one batch, in as many transactions as their size needs."""
        moved: list[int] = []
        taken: set[int] = set()  # ids archived already: those jobs stay live
        for _ in range(_ATTEMPTS):
            try:
                found = self._kv.get_many([self._keys.job(job_id) for job_id in batch])
            except StorageError as err:
                raise StorageError(f"Cannot read jobs to archive: {err}", err.args[1]) from err
            live = [
                (job_id, kv)
                for job_id, kv in zip(batch, found, strict=True)
                if kv and job_id not in taken
            ]
            for group in self._by_size(live):
                if not self._move(group, now, taken):
                    break  # a job changed meanwhile, or was archived already: read again
                moved.extend(job_id for job_id, _ in group)
            else:
                return moved
            batch = [job_id for job_id in batch if job_id not in moved]
        raise StorageError(f"Jobs {batch} kept changing while being archived", errno.EAGAIN)

    def _by_size(self, live: list[tuple[int, KeyValue]]) -> list[list[tuple[int, KeyValue]]]:
        groups: list[list[tuple[int, KeyValue]]] = []
        size = 0
        for job_id, kv in live:
            cost = request_cost({self._keys.archived(job_id): kv.value}, [kv.key], compares=1)
            if groups and size + cost <= self._max_request_bytes:
                groups[-1].append((job_id, kv))
                size += cost
            else:
                groups.append([(job_id, kv)])
                size = cost + request_cost({self._keys.archived_at(job_id): b"0" * 24})
        return groups

    def _move(self, group: list[tuple[int, KeyValue]], now: float, taken: set[int]) -> bool:
        """One transaction moving ``group``; False when a job changed since it was read.

        Each archived key must not exist yet: an archived job is never
        replaced. The id of a job archived already is added to ``taken``
        (and logged): that job stays live.
        """
        puts = {self._keys.archived(job_id): kv.value for job_id, kv in group}
        expect = {kv.key: kv.mod_revision for _, kv in group}
        expect.update(dict.fromkeys(puts, 0))
        puts[self._keys.archived_at(group[0][0])] = f"{now:.6f}".encode()
        ids = [job_id for job_id, _ in group]
        result = self._write(
            f"Cannot archive jobs {ids[0]} to {ids[-1]}"
            if len(ids) > 1
            else f"Cannot archive job {ids[0]}",
            puts=puts,
            deletes=[kv.key for _, kv in group],
            expect=expect,
        )
        for key in result.conflicts:
            job_id = self._keys.job_id_in(key, self._keys.archive)
            if job_id is not None:
                self._log.error(
                    "Job %d stays live: an archived job %d exists already", job_id, job_id
                )
                taken.add(job_id)
        return result.succeeded

    def archived_ids(self, page_size: int) -> list[int]:
        ids = []
        for item in self._kv.range_prefix(self._keys.archive, page_size=page_size, keys_only=True):
            job_id = self._keys.job_id_in(item.key, self._keys.archive)
            if job_id is not None:
                ids.append(job_id)
        return sorted(ids)

    # -- pruning ------------------------------------------------------------------
    def prune(
        self, cutoff: float, deadline: float | None, monotonic: Callable[[], float]
    ) -> PruneResult:
        """Delete archived jobs archived before ``cutoff`` (seconds since the epoch).

        Stops at ``deadline`` (``monotonic`` time) with ``unfinished`` set;
        failures are collected in the result, never raised.
        """
        result = PruneResult()
        try:
            records = list(self._kv.range_prefix(self._keys.archive_time))
            dated = {record.mod_revision: _seconds(record.value) for record in records}
            dating: set[int] = set()  # revisions of records still dating a kept key
            doomed: list[bytes] = []
            keys = self._kv.range_prefix(self._keys.archive, page_size=1000, keys_only=True)
            for item in keys:
                if deadline is not None and monotonic() > deadline:
                    result.unfinished = True
                    break
                when = dated.get(item.mod_revision)
                if when is None:
                    when = self._job_time(item.key, result)
                if when is None or when >= cutoff:
                    dating.add(item.mod_revision)
                    continue
                doomed.append(item.key)
                if len(doomed) >= PRUNE_BATCH:
                    self._delete(doomed, result)
                    doomed = []
            self._delete(doomed, result)
        except StorageError as err:
            result.failures.append(f"cannot prune the etcd archive: {err}")
            return result
        if not result.unfinished and not result.failures:
            stale = [r.key for r in records if r.mod_revision not in dating]
            for start in range(0, len(stale), PRUNE_BATCH):
                self._delete(stale[start : start + PRUNE_BATCH], None)
        return result

    def _job_time(self, key: bytes, result: PruneResult) -> float | None:
        """When an archived job without a record ended; None (kept) when unknown."""
        found = self._kv.get(key)
        if found is None:
            return None
        try:
            job = decode_job(found.value)
        except GenericError as err:
            result.failures.append(f"cannot tell the age of archived key {key!r}: {err}")
            return None
        stamp = job.end_timestamp or job.received_timestamp
        return None if stamp is None else merge_time(stamp)

    def _delete(self, doomed: Sequence[bytes], result: PruneResult | None) -> None:
        """Delete keys in one transaction; counts them as pruned jobs when ``result``."""
        if not doomed:
            return
        self._write(f"Cannot prune {len(doomed)} archived jobs", deletes=doomed)
        if result is not None:
            result.jobs += len(doomed)


def _seconds(value: bytes) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
