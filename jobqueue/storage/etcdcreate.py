"""New jobs into etcd, each acknowledged only once its transaction committed.

A submission's jobs go in as few transactions as etcd's limits allow
(``MAX_TXN_OPS`` operations and the request size). Submissions that arrive
while others are being written are combined (``groupcommit``): they go in
together next, so sixteen clients each submitting one job cost about as
many requests to etcd as one client submitting sixteen. Once a transaction
fails, the later ones of the same group are not tried and share its failure.

A transaction whose outcome is unknown (ETIMEDOUT) is read back; if it
cannot be confirmed its jobs are reported failed and are *in doubt*: their
keys are deleted before the next group is written, so no job that was not
acknowledged stays (etcd orders that delete after the lost write if it is
ever applied).

Thread-safe: ``_lock`` guards the jobs in doubt; the group commit writes one
group at a time.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from jobqueue.errors import NotLeaderError, StorageError
from jobqueue.model import Job
from jobqueue.storage.base import encode_job
from jobqueue.storage.etcdkv import MAX_TXN_OPS, EtcdKV, TxnResult
from jobqueue.storage.etcdlayout import Keys, op_cost, request_cost, too_large
from jobqueue.storage.groupcommit import GroupCommit

#: ``EtcdJobStore._write``: one fenced transaction of puts and deletes.
Write = Callable[..., TxnResult]


class NewJobKeys:
    """Writes new jobs' keys; see the module docstring.

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
        self._grouped = GroupCommit(self._create_now)

    def create(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        """Store ``jobs``, combined with concurrent calls; None or the failure for each job."""
        return self._grouped(jobs)

    def doubt(self, job_ids: Iterable[int]) -> None:
        """Deleting these jobs had an unknown outcome: delete them again before the next write."""
        with self._lock:
            self._in_doubt.update(job_ids)

    def _create_now(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        results: list[StorageError | None] = [None] * len(jobs)
        self._settle_in_doubt()
        pending: list[tuple[int, bytes]] = []
        for index, job in enumerate(jobs):
            data = encode_job(job)
            if len(data) > self._job_limit:
                results[index] = too_large(job, len(data), self._job_limit)
            else:
                pending.append((index, data))
        failure: StorageError | None = None
        for chunk in self._chunks(pending, jobs):
            if failure is None:
                failure = self._create_chunk([jobs[index] for index, _ in chunk], chunk)
            for index, _ in chunk:
                results[index] = failure
        return results

    def _chunks(
        self, pending: list[tuple[int, bytes]], jobs: Sequence[Job]
    ) -> Iterator[list[tuple[int, bytes]]]:
        """Groups of new jobs that fit one transaction (operations and bytes)."""
        chunk: list[tuple[int, bytes]] = []
        size = request_cost({})
        for index, data in pending:
            cost = op_cost(self._keys.job(jobs[index].id), data)
            if chunk and (len(chunk) >= MAX_TXN_OPS or size + cost > self._max_request_bytes):
                yield chunk
                chunk, size = [], request_cost({})
            chunk.append((index, data))
            size += cost
        if chunk:
            yield chunk

    def _create_chunk(self, jobs: list[Job], chunk: list[tuple[int, bytes]]) -> StorageError | None:
        """Write one transaction of new jobs; the failure, if any (nothing of them stays then)."""
        puts = {self._keys.job(job.id): data for job, (_, data) in zip(jobs, chunk, strict=True)}
        what = f"Cannot store {job_names(jobs)} in etcd"
        try:  # no compare on each key: ids are never issued twice, and it halves the speed
            self._write(what, puts=puts)
        except NotLeaderError as err:
            return err
        except StorageError as err:
            if err.args[1] == errno.ETIMEDOUT and self._confirmed(puts):
                return None
            if err.args[1] == errno.ETIMEDOUT:
                self.doubt(job.id for job in jobs)
            return err
        return None

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
        for start in range(0, len(doubtful), MAX_TXN_OPS - 1):
            batch = doubtful[start : start + MAX_TXN_OPS - 1]
            try:
                self._write(
                    "Cannot remove jobs never acknowledged",
                    deletes=[self._keys.job(job_id) for job_id in batch],
                )
            except StorageError as err:
                self._log.warning("%s", err)
                return
            with self._lock:
                self._in_doubt.difference_update(batch)


def job_names(jobs: Sequence[Job]) -> str:
    """``job 7``, or ``jobs 7 to 12`` (ids in order: one submission's, or several combined)."""
    if len(jobs) == 1:
        return f"job {jobs[0].id}"
    ids = sorted(job.id for job in jobs)
    return f"{len(ids)} jobs ({ids[0]} to {ids[-1]})"
