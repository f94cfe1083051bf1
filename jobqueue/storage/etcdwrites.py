"""Jobs written into etcd, concurrent writes combined into shared transactions.

New jobs (``create``) and new versions of live jobs (``replace``) each go
through a group commit (``groupcommit``): writes that arrive while others
are being written go in together next, in as few transactions as etcd's
limits allow (``MAX_TXN_OPS`` operations and the request size). So sixteen
clients each submitting one job, or 25 workers each starting an opcode,
cost about as many requests to etcd as one caller writing them all. Each
write returns only once its transaction committed; once a transaction
fails, the later ones of the same group are not tried and share its
failure, which every caller of it gets.

A creation whose outcome is unknown (ETIMEDOUT) is read back; if it cannot
be confirmed its jobs are reported failed and are *in doubt*: their keys
are deleted before the next group of new jobs is written, so no job that
was not acknowledged stays (etcd orders that delete after the lost write
if it is ever applied). So are jobs whose removal (``discard``, of jobs
never acknowledged) had an unknown outcome. A replacement of unknown
outcome is reported failed; the job's next write replaces it whole anyway.

Thread-safe: ``_lock`` guards the jobs in doubt; each group commit writes
one group at a time. A caller writes each job from one thread at a time,
so a job is never twice in one group.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from jobqueue.errors import NotLeaderError, StorageError
from jobqueue.model import Job
from jobqueue.storage.base import encode_job
from jobqueue.storage.etcdkv import MAX_TXN_OPS, EtcdKV, TxnResult
from jobqueue.storage.etcdlayout import Keys, op_cost, request_cost, too_large
from jobqueue.storage.groupcommit import GroupCommit

#: ``EtcdJobStore._write``: one fenced transaction of puts and deletes.
Write = Callable[..., TxnResult]
#: One job's value to put: (its index among the call's items, key, value).
Put = tuple[int, bytes, bytes]
#: Jobs deleted in one transaction (``discard`` and the jobs in doubt).
DELETE_BATCH = MAX_TXN_OPS - 1


class JobWrites:
    """Writes jobs' keys; see the module docstring.

    ``job_limit``: the largest job value stored; ``max_request_bytes``:
    etcd's request size limit, which a transaction must fit.
    """

    def __init__(
        self,
        kv: EtcdKV,
        keys: Keys,
        write: Write,
        *,
        job_limit: int,
        max_request_bytes: int,
        logger: logging.Logger,
    ) -> None:
        self._kv = kv
        self._keys = keys
        self._write = write
        self._job_limit = job_limit
        self._max_request_bytes = max_request_bytes
        self._log = logger
        self._lock = threading.Lock()
        self._in_doubt: set[int] = set()  # created with unknown outcome; under _lock
        self._creating = GroupCommit(self._create_now)
        self._replacing = GroupCommit(self._replace_now)

    def create(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        """Store ``jobs``, combined with concurrent calls; None or the failure for each job."""
        return self._creating(jobs)

    def replace(self, job_id: int, data: bytes) -> None:
        """Make ``data`` the job's stored value, combined with concurrent calls; StorageError."""
        (failure,) = self._replacing([(job_id, data)])
        if failure is not None:  # each caller raises its own (a traceback is per raise)
            raise type(failure)(*failure.args) from failure

    def discard(self, job_ids: Sequence[int]) -> tuple[list[int], StorageError | None]:
        """Delete never-acknowledged jobs, a transaction per 127; stops at the first failure.

        Returns the jobs gone and the failure. A batch whose outcome is
        unknown counts as gone (it must not be acknowledged) and is in doubt.
        """
        removed: list[int] = []
        for batch in _batches(job_ids):
            failure = self._delete(batch, f"Cannot remove {len(batch)} jobs from etcd")
            if failure is not None:
                if failure.args[1] == errno.ETIMEDOUT:
                    self._doubt(batch)
                    removed.extend(batch)
                return removed, failure
            removed.extend(batch)
        return removed, None

    def _doubt(self, job_ids: Iterable[int]) -> None:
        """Writing these jobs had an unknown outcome: delete them before the next creation."""
        with self._lock:
            self._in_doubt.update(job_ids)

    def _delete(self, job_ids: list[int], what: str) -> StorageError | None:
        """Delete the jobs' keys in one transaction; the failure, if any."""
        return self._try_write(what, deletes=[self._keys.job(job_id) for job_id in job_ids])

    def _try_write(self, what: str, **request: Any) -> StorageError | None:
        """``_write(what, **request)``; the StorageError it raised, if any."""
        try:
            self._write(what, **request)
        except StorageError as err:
            return err
        return None

    def _create_now(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        results: list[StorageError | None] = [None] * len(jobs)
        self._settle_in_doubt()
        pending: list[Put] = []
        for index, job in enumerate(jobs):
            data = encode_job(job)
            if len(data) > self._job_limit:
                results[index] = too_large(job, len(data), self._job_limit)
            else:
                pending.append((index, self._keys.job(job.id), data))
        ids = [job.id for job in jobs]
        self._write_in_chunks(results, pending, ids, self._create_chunk)
        return results

    def _replace_now(self, items: Sequence[tuple[int, bytes]]) -> list[StorageError | None]:
        results: list[StorageError | None] = [None] * len(items)
        pending = [
            (index, self._keys.job(job_id), data) for index, (job_id, data) in enumerate(items)
        ]
        ids = [job_id for job_id, _ in items]
        self._write_in_chunks(results, pending, ids, self._replace_chunk)
        return results

    def _write_in_chunks(
        self,
        results: list[StorageError | None],
        pending: list[Put],
        ids: list[int],
        write_chunk: Callable[[list[int], dict[bytes, bytes]], StorageError | None],
    ) -> None:
        """Write ``pending`` a transaction at a time with ``write_chunk(job ids, puts)``.

        ``ids[index]`` is the job of the put at ``index``. Each put's result
        goes to ``results[index]``; after a failure, the rest are not tried
        and share it.
        """
        failure: StorageError | None = None
        for chunk in self._chunks(pending):
            if failure is None:
                chunk_ids = [ids[index] for index, _, _ in chunk]
                failure = write_chunk(chunk_ids, {key: data for _, key, data in chunk})
            for index, _, _ in chunk:
                results[index] = failure

    def _chunks(self, pending: list[Put]) -> Iterator[list[Put]]:
        """Groups of puts that fit one transaction (operations and bytes)."""
        chunk: list[Put] = []
        size = request_cost({})
        for entry in pending:
            cost = op_cost(entry[1], entry[2])
            if chunk and (len(chunk) >= MAX_TXN_OPS or size + cost > self._max_request_bytes):
                yield chunk
                chunk, size = [], request_cost({})
            chunk.append(entry)
            size += cost
        if chunk:
            yield chunk

    def _create_chunk(self, job_ids: list[int], puts: dict[bytes, bytes]) -> StorageError | None:
        """Write one transaction of new jobs; the failure, if any (nothing of them stays then)."""
        what = f"Cannot store {id_names(job_ids)} in etcd"
        try:  # no compare on each key: ids are never issued twice, and it halves the speed
            self._write(what, puts=puts)
        except NotLeaderError as err:
            return err
        except StorageError as err:
            if err.args[1] == errno.ETIMEDOUT and self._confirmed(puts):
                return None
            if err.args[1] == errno.ETIMEDOUT:
                self._doubt(job_ids)
            return err
        return None

    def _replace_chunk(self, job_ids: list[int], puts: dict[bytes, bytes]) -> StorageError | None:
        """Write one transaction of job versions; the failure, if any."""
        return self._try_write(f"Cannot write {id_names(job_ids)} to etcd", puts=puts)

    def _confirmed(self, puts: dict[bytes, bytes]) -> bool:
        """Whether a write of unknown outcome is there after all (read back)."""
        try:
            found = self._kv.get_many(puts)
        except StorageError:
            return False
        return all(item is not None and item.value == puts[item.key] for item in found)

    def _settle_in_doubt(self) -> None:
        """Delete the jobs in doubt; a failure is logged and the next write tries again."""
        with self._lock:
            doubtful = sorted(self._in_doubt)
        for batch in _batches(doubtful):
            failure = self._delete(batch, "Cannot remove jobs never acknowledged")
            if failure is not None:
                self._log.warning("%s", failure)
                return
            with self._lock:
                self._in_doubt.difference_update(batch)


def _batches(job_ids: Sequence[int]) -> Iterator[list[int]]:
    """``job_ids`` in order, as many at a time as one transaction deletes."""
    for start in range(0, len(job_ids), DELETE_BATCH):
        yield list(job_ids[start : start + DELETE_BATCH])


def id_names(job_ids: Sequence[int]) -> str:
    """``job 7``, or ``3 jobs (7 to 12)``: one caller's jobs, or several callers' combined."""
    if len(job_ids) == 1:
        return f"job {job_ids[0]}"
    ids = sorted(job_ids)
    return f"{len(ids)} jobs ({ids[0]} to {ids[-1]})"
