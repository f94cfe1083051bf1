"""Jobs written into etcd, concurrent writes combined into shared transactions.

New jobs (``create``) and new versions of live jobs (``replace``) each go
through a group commit (``groupcommit``): writes that arrive while others
are being written go in together next, in as few transactions as etcd's
limits allow (``MAX_TXN_OPS`` operations, compares apart, and the request
size). So sixteen clients each submitting one job, or 25 workers each
starting an opcode, cost about as many requests to etcd as one caller
writing them all. Each write returns only once its transaction committed;
once a transaction fails, the later ones of the same group are not tried
and share its failure, which every caller of it gets.

Every write is conditional, because a write whose answer never came
(ETIMEDOUT) can still be applied much later: a member that was paused or
stalled applies the request waiting in its socket when it resumes, after
newer writes went through other members. So:

* a replacement expects each job's key at the mod_revision this master last
  wrote or read (``_revisions``). A late write finds the key moved on and is
  refused, so etcd never goes back to an older version of a job. When our
  own write finds the key moved on, only an earlier write of ours can have
  moved it (the fence keeps every other master out), and it held an older
  version: the current revision is taken and the write made over it. A job
  whose revision is unknown, after a write of unknown outcome, is read
  first; one whose key is gone is not written back.
* a creation expects the *withdrawal key* (``Keys.withdrawn``) unmoved since
  this master last saw it, and every removal of jobs never acknowledged
  moves that key in the same transaction. A creation sent before a removal
  can never land after it.

A creation whose outcome is unknown is read back; if it cannot be confirmed
its jobs are reported failed and are *in doubt*: their keys are deleted
before the next group of new jobs is written, so no job that was not
acknowledged stays. So are jobs whose removal (``discard``, of jobs never
acknowledged) had an unknown outcome. A replacement of unknown outcome is
reported failed.

Thread-safe: ``_lock`` guards the jobs in doubt and the revisions known;
each group commit writes one group at a time. A caller writes each job from
one thread at a time, so a job is never twice in one group.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from jobqueue.errors import JobNotLive, NotLeaderError, StorageError
from jobqueue.model import Job
from jobqueue.storage.base import encode_job
from jobqueue.storage.etcdkv import MAX_TXN_OPS, EtcdKV, TxnResult
from jobqueue.storage.etcdlayout import COMPARE_COST, Keys, op_cost, request_cost, too_large
from jobqueue.storage.groupcommit import GroupCommit

#: ``EtcdJobStore._write``: one fenced transaction of puts and deletes.
Write = Callable[..., TxnResult]
#: One job's value to put: (its index among the call's items, key, value).
Put = tuple[int, bytes, bytes]
#: What writing one chunk of puts gave: the puts refused on their own (by key),
#: and the failure of the rest, if any.
ChunkOutcome = tuple[dict[bytes, StorageError], StorageError | None]
#: Jobs deleted in one transaction (``discard`` and the jobs in doubt), beside
#: the put that moves the withdrawal key.
DELETE_BATCH = MAX_TXN_OPS - 1
#: Jobs replaced in one transaction: a compare each, and the fence's.
REPLACE_BATCH = MAX_TXN_OPS - 1
#: Transactions tried for one write refused on a revision (a late write of
#: ours, or a removal, moved the key meanwhile).
_ATTEMPTS = 4


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
        # Each live job's key's mod_revision as this master last wrote or read it.
        self._revisions: dict[int, int] = {}  # under _lock
        self._withdrawal: int | None = None  # the withdrawal key's; None: read it first
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

    def loaded(self, revisions: dict[int, int]) -> None:
        """A term begins: the live jobs were read, each key at its mod_revision.

        The writes expect those revisions. Jobs in doubt from an earlier
        term are no longer removed: a master that led meanwhile may have
        found and run them, and this term loaded them as live if they are
        there (a late creation of that term is fenced out).
        """
        with self._lock:
            self._revisions = dict(revisions)
            self._in_doubt.clear()
            self._withdrawal = None

    def forget(self, job_ids: Iterable[int]) -> None:
        """The jobs are no longer live (archived)."""
        with self._lock:
            for job_id in job_ids:
                self._revisions.pop(job_id, None)

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
        """Delete the jobs' keys and move the withdrawal key, in one transaction."""
        try:
            result = self._write(
                what,
                puts={self._keys.withdrawn: b""},
                deletes=[self._keys.job(job_id) for job_id in job_ids],
            )
        except StorageError as err:
            return err
        with self._lock:
            self._withdrawal = result.revision
            for job_id in job_ids:
                self._revisions.pop(job_id, None)
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
        chunks = self._chunks(pending, MAX_TXN_OPS, compares=2, compare_each=False)
        self._write_chunks(results, chunks, ids, self._create_chunk)
        return results

    def _replace_now(self, items: Sequence[tuple[int, bytes]]) -> list[StorageError | None]:
        results: list[StorageError | None] = [None] * len(items)
        pending = [
            (index, self._keys.job(job_id), data) for index, (job_id, data) in enumerate(items)
        ]
        ids = [job_id for job_id, _ in items]
        chunks = self._chunks(pending, REPLACE_BATCH, compares=1, compare_each=True)
        self._write_chunks(results, chunks, ids, self._replace_chunk)
        return results

    def _write_chunks(
        self,
        results: list[StorageError | None],
        chunks: Iterator[list[Put]],
        ids: list[int],
        write_chunk: Callable[[list[int], dict[bytes, bytes]], ChunkOutcome],
    ) -> None:
        """Write each chunk, a transaction at a time, with ``write_chunk(job ids, puts)``.

        ``ids[index]`` is the job of the put at ``index``. Each put's result
        goes to ``results[index]``: its own refusal, or the chunk's failure;
        after a chunk's failure, the rest are not tried and share it.
        """
        failure: StorageError | None = None
        for chunk in chunks:
            refused: dict[bytes, StorageError] = {}
            if failure is None:
                chunk_ids = [ids[index] for index, _, _ in chunk]
                refused, failure = write_chunk(chunk_ids, {key: data for _, key, data in chunk})
            for index, key, _ in chunk:
                results[index] = refused.get(key, failure)

    def _chunks(
        self, pending: list[Put], most: int, *, compares: int, compare_each: bool
    ) -> Iterator[list[Put]]:
        """Groups of at most ``most`` puts that fit one transaction's size, with
        ``compares`` compares and, if ``compare_each``, one more per put."""
        chunk: list[Put] = []
        size = base = request_cost({}, compares=compares)
        for entry in pending:
            cost = op_cost(entry[1], entry[2]) + (COMPARE_COST if compare_each else 0)
            if chunk and (len(chunk) >= most or size + cost > self._max_request_bytes):
                yield chunk
                chunk, size = [], base
            chunk.append(entry)
            size += cost
        if chunk:
            yield chunk

    def _create_chunk(self, job_ids: list[int], puts: dict[bytes, bytes]) -> ChunkOutcome:
        """Write one transaction of new jobs; the failure, if any (nothing of them stays then).

        No compare on each key (ids are never issued twice, and it halves the
        speed); the withdrawal key's compare keeps a late one from landing
        after a removal.
        """
        what = f"Cannot store {id_names(job_ids)} in etcd"
        for _ in range(_ATTEMPTS):
            try:
                expect = {self._keys.withdrawn: self._withdrawal_revision()}
            except StorageError as err:  # a read: nothing was written
                return {}, _prefixed(what, err)
            try:
                result = self._write(what, puts=puts, expect=expect)
            except NotLeaderError as err:
                return {}, err
            except StorageError as err:
                if err.args[1] == errno.ETIMEDOUT and self._confirmed(job_ids, puts):
                    return {}, None
                if err.args[1] == errno.ETIMEDOUT:
                    self._doubt(job_ids)
                return {}, _prefixed(what, err)
            if result.succeeded:
                self._wrote(job_ids, result.revision)
                return {}, None
            with self._lock:  # a removal moved the key meanwhile: nothing was written
                self._withdrawal = result.found.get(self._keys.withdrawn, 0)
        return {}, StorageError(f"{what}: jobs kept being removed meanwhile", errno.EAGAIN)

    def _withdrawal_revision(self) -> int:
        """The withdrawal key's mod_revision as last seen (read once); StorageError."""
        with self._lock:
            known = self._withdrawal
        if known is not None:
            return known
        item = self._kv.get(self._keys.withdrawn)
        revision = 0 if item is None else item.mod_revision
        with self._lock:
            if self._withdrawal is None:
                self._withdrawal = revision
            return self._withdrawal

    def _replace_chunk(self, job_ids: list[int], puts: dict[bytes, bytes]) -> ChunkOutcome:
        """Write one transaction of job versions, each expecting its key's revision.

        A job whose key is gone is refused on its own (``JobNotLive``) and
        the others are written without it.
        """
        what = f"Cannot write {id_names(job_ids)} to etcd"
        owners = dict(zip(puts, job_ids, strict=True))
        puts = dict(puts)
        refused: dict[bytes, StorageError] = {}
        for _ in range(_ATTEMPTS):
            try:
                expect, gone = self._expected({key: owners[key] for key in puts})
            except StorageError as err:  # a read: nothing was written
                return refused, _prefixed(what, err)
            for key in gone:
                refused[key] = _not_live(owners[key])
                del puts[key]
            self.forget(owners[key] for key in gone)
            if not puts:
                return refused, None
            try:
                result = self._write(what, puts=puts, expect=expect)
            except NotLeaderError as err:
                return refused, err
            except StorageError as err:
                if err.args[1] == errno.ETIMEDOUT:
                    self.forget(owners[key] for key in puts)  # read again before the next write
                return refused, _prefixed(what, err)
            if result.succeeded:
                self._wrote([owners[key] for key in puts], result.revision)
                return refused, None
            with self._lock:  # moved by a late write of ours (an older version), or gone
                for key, revision in result.found.items():
                    self._revisions[owners[key]] = revision
        return refused, StorageError(f"{what}: the jobs kept changing in etcd", errno.EAGAIN)

    def _expected(self, owners: dict[bytes, int]) -> tuple[dict[bytes, int], list[bytes]]:
        """The mod_revision each job's key must have (read for those not known), and the
        keys that are gone; StorageError when the read fails."""
        with self._lock:
            known = {key: self._revisions.get(job_id) for key, job_id in owners.items()}
        unknown = [key for key, revision in known.items() if revision is None]
        found = self._kv.get_many(unknown) if unknown else []
        for key, item in zip(unknown, found, strict=True):
            known[key] = 0 if item is None else item.mod_revision
        gone = [key for key, revision in known.items() if not revision]
        return {key: revision for key, revision in known.items() if revision}, gone

    def _wrote(self, job_ids: list[int], revision: int) -> None:
        with self._lock:
            for job_id in job_ids:
                self._revisions[job_id] = revision

    def _confirmed(self, job_ids: list[int], puts: dict[bytes, bytes]) -> bool:
        """Whether a creation of unknown outcome is there after all (read back)."""
        try:
            found = self._kv.get_many(puts)
        except StorageError:
            return False
        if not all(item is not None and item.value == puts[item.key] for item in found):
            return False
        with self._lock:
            for job_id, item in zip(job_ids, found, strict=True):
                assert item is not None
                self._revisions[job_id] = item.mod_revision
        return True

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


def _prefixed(what: str, err: StorageError) -> StorageError:
    """``err`` as returned by ``_write`` (already prefixed), or a read's, prefixed with ``what``."""
    message = str(err.args[0])
    return err if message.startswith(what) else StorageError(f"{what}: {message}", err.args[1])


def _not_live(job_id: int) -> JobNotLive:
    """The refusal to write a job whose key is gone: it is not brought back."""
    return JobNotLive(
        f"Cannot write job {job_id} to etcd: it is no longer live there (archived or removed)",
        errno.ENOENT,
    )


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
