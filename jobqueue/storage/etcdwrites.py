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
if it is ever applied). A replacement of unknown outcome is reported
failed; the job's next write replaces it whole anyway.

Thread-safe: ``_lock`` guards the jobs in doubt; each group commit writes
one group at a time. A caller writes each job from one thread at a time,
so a job is never twice in one group.
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

    def doubt(self, job_ids: Iterable[int]) -> None:
        """Deleting these jobs had an unknown outcome: delete them again before the next write."""
        with self._lock:
            self._in_doubt.update(job_ids)

    def _create_now(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        results: list[StorageError | None] = [None] * len(jobs)
        self._settle_in_doubt()
        pending: list[tuple[int, bytes, bytes]] = []
        for index, job in enumerate(jobs):
            data = encode_job(job)
            if len(data) > self._job_limit:
                results[index] = too_large(job, len(data), self._job_limit)
            else:
                pending.append((index, self._keys.job(job.id), data))
        failure: StorageError | None = None
        for chunk in self._chunks(pending):
            if failure is None:
                failure = self._create_chunk([jobs[index] for index, _, _ in chunk], chunk)
            for index, _, _ in chunk:
                results[index] = failure
        return results

    def _replace_now(self, items: Sequence[tuple[int, bytes]]) -> list[StorageError | None]:
        results: list[StorageError | None] = [None] * len(items)
        pending = [
            (index, self._keys.job(job_id), data) for index, (job_id, data) in enumerate(items)
        ]
        failure: StorageError | None = None
        for chunk in self._chunks(pending):
            if failure is None:
                ids = [items[index][0] for index, _, _ in chunk]
                try:
                    self._write(
                        f"Cannot write {id_names(ids)} to etcd",
                        puts={key: data for _, key, data in chunk},
                    )
                except StorageError as err:
                    failure = err
            for index, _, _ in chunk:
                results[index] = failure
        return results

    def _chunks(
        self, pending: list[tuple[int, bytes, bytes]]
    ) -> Iterator[list[tuple[int, bytes, bytes]]]:
        """Groups of (index, key, value) puts that fit one transaction (operations and bytes)."""
        chunk: list[tuple[int, bytes, bytes]] = []
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

    def _create_chunk(
        self, jobs: list[Job], chunk: list[tuple[int, bytes, bytes]]
    ) -> StorageError | None:
        """Write one transaction of new jobs; the failure, if any (nothing of them stays then)."""
        puts = {key: data for _, key, data in chunk}
        what = f"Cannot store {id_names([job.id for job in jobs])} in etcd"
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


def id_names(job_ids: Sequence[int]) -> str:
    """``job 7``, or ``3 jobs (7 to 12)``: one caller's jobs, or several callers' combined."""
    if len(job_ids) == 1:
        return f"job {job_ids[0]}"
    ids = sorted(job_ids)
    return f"{len(ids)} jobs ({ids[0]} to {ids[-1]})"
