"""The etcd store: the storage contract kept in etcd, for high availability (doc/ha.rst).

One key per job under the queue's prefix holds exactly the bytes of a job
file; the key layout is in ``etcdlayout``. Every write is one transaction,
so it happens completely or not at all, and is durable (committed by a
quorum of etcd members) when it returns. Once this handle has acquired the
leadership (``etcdlead``), every transaction is also conditioned on the
leader key's create_revision: a daemon that lost its lease can never write
again, and its writes raise NotLeaderError.

Ids are reserved in blocks by a conditioned update of ``<prefix>/serial``,
so an id is never issued twice; a clean stop gives the rest of the block
back. A job bigger than etcd takes in one request is trimmed or refused by
the size rule (``etcdlayout.fit_job``). Archiving and pruning live in
``etcdarchive``; the change feed in ``etcdfeed``.

Command output never goes into etcd (its size limits make it a poor home):
given ``output_dir``, the store keeps it in files on this host
(``etcdoutput``), so it is found on the host whose daemon ran the command.
Without it (the cleaner's maintenance handle) ``open_output`` raises
StorageError (ENOTSUP) and jobs have no output to read.

Failures are StorageError, with etcd's reason and an errno (the table in
doc/ha.rst): notably ETIMEDOUT, after which a write may or may not have
been applied. Jobs are written by ``etcdwrites`` (concurrent writes
combined; a submission whose outcome is unknown is read back, and if it
cannot be confirmed it is reported failed and its keys deleted).

The drain flag is read from etcd at most once a second while this handle
leads (``DRAIN_RECHECK``): every submission asks it, and a read per
submission cost about a third of the daemon's time of an etcd
``SubmitJob``. The handle's own changes of the flag count at once; another
writer's (etcdctl) within the second; a new term of leadership reads it
afresh.

Thread safety: every method may be called from any thread. ``_ids_lock``
guards the id counters, ``_drain_lock`` the drain flag as last read.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from jobqueue.errors import JobFileCorrupted, JobQueueError, NotLeaderError, StorageError
from jobqueue.model import Job
from jobqueue.storage.base import (
    ChangeFeed,
    JobStore,
    OutputStream,
    PruneResult,
    check_setting,
    decode_job,
)
from jobqueue.storage.etcdarchive import ArchiveKeeper
from jobqueue.storage.etcdfeed import EtcdChangeFeed
from jobqueue.storage.etcdkv import MAX_TXN_OPS, EtcdKV, Fence, TxnResult
from jobqueue.storage.etcdlayout import (
    LAYOUT_VERSION,
    REQUEST_MARGIN,
    Keys,
    fit_job,
)
from jobqueue.storage.etcdlead import NOT_LEADER, EtcdLeadership
from jobqueue.storage.etcdoptions import EtcdStoreSettings
from jobqueue.storage.etcdoutput import LocalOutputs
from jobqueue.storage.etcdwrites import JobWrites

#: The drain flag's setting name: ``<prefix>/settings/drain``.
DRAIN = "drain"
#: Seconds the leader trusts the drain flag it read (see the module docstring).
DRAIN_RECHECK = 1.0
#: Transactions tried for one change of a setting or filter rule (``_write_control``).
CONTROL_ATTEMPTS = 4


class _DrainSeen(NamedTuple):
    """The drain flag as read or set under one leadership ``fence``, trusted ``until``."""

    fence: Fence
    drained: bool
    until: float


class EtcdJobStore(JobStore):
    """The queue under ``settings.prefix`` in etcd; see the module docstring.

    ``owner=False`` opens it for maintenance (the cleaner): nothing is
    created, the layout version is only checked, no id is allocated.
    ``output_dir``: where this host keeps command output (the daemon's
    ``<state>/output``); None keeps none. ``clock`` (seconds since the
    epoch) dates archived jobs; ``monotonic`` paces the lease and the
    history compaction. Raises StorageError when
    etcd cannot be reached and JobQueueError for an unknown layout version.
    """

    def __init__(
        self,
        settings: EtcdStoreSettings,
        *,
        owner: bool = True,
        output_dir: str | None = None,
        kv: EtcdKV | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.job_limit = settings.max_request_bytes - REQUEST_MARGIN
        self._kv = kv or EtcdKV(settings.connection, monotonic)
        self._owner = owner
        self._clock = clock
        self._monotonic = monotonic
        self._log = logger or logging.getLogger(__name__)
        self._leadership: EtcdLeadership | None = None
        self._ids_lock = threading.Lock()
        self._last_id = self._reserved = 0  # ids handed out / reserved; under _ids_lock
        self._serial_revision = 0  # mod_revision of our last serial write; under _ids_lock
        self._closed = False
        self._drain_lock = threading.Lock()
        self._drain_seen: _DrainSeen | None = None  # under _drain_lock
        self._trimmed: set[int] = set()  # jobs stored without their oldest log entries
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._archive = ArchiveKeeper(
            self._kv, self.keys, self.settings.max_request_bytes, self._write, self._log
        )
        self._job_writes = JobWrites(
            self._kv,
            self.keys,
            self._write,
            job_limit=self.job_limit,
            max_request_bytes=settings.max_request_bytes,
            logger=self._log,
        )
        self._outputs = None if output_dir is None else LocalOutputs(output_dir, self._log)
        self._check_version()

    @property
    def kv(self) -> EtcdKV:
        """The etcd client this store uses (for tools and tests)."""
        return self._kv

    def close(self) -> None:
        """Give up leadership (if held) and close the connections."""
        if self._leadership is not None:
            self._leadership.release()
        self._kv.close()

    # -- set-up and writes ---------------------------------------------------------
    def _check_version(self) -> None:
        current = self._kv.get(self.keys.version)
        if current is None and self._owner:
            self._kv.txn(
                fence=None, puts={self.keys.version: LAYOUT_VERSION}, expect={self.keys.version: 0}
            )
            return
        if current is not None and current.value != LAYOUT_VERSION:
            raise JobQueueError(
                f"etcd layout version {current.value!r} under {self.keys.root!r} is not"
                f" supported (this jobqueue reads version {LAYOUT_VERSION.decode()});"
                " refusing to start"
            )

    def _fence(self) -> Fence | None:
        """The fence to write with (None: never led); NotLeaderError when lost."""
        return None if self._leadership is None else self._leadership.fence_for_write()

    def _write(
        self,
        what: str,
        *,
        puts: dict[bytes, bytes] | None = None,
        deletes: Iterable[bytes] = (),
        expect: dict[bytes, int] | None = None,
    ) -> TxnResult:
        """One fenced transaction; a refusal on ``expect`` is returned, not raised.

        Raises NotLeaderError when fenced out (and marks the leadership
        lost) and StorageError, prefixed with ``what``, when it failed.
        """
        fence = self._fence()
        try:
            result = self._kv.txn(
                fence=fence, puts=puts or {}, deletes=deletes, expect=expect or {}
            )
        except StorageError as err:
            raise StorageError(f"{what}: {err}", err.args[1]) from err
        if result.fenced_out:
            if self._leadership is not None:
                self._leadership.declare_lost("etcd refused a write on the fence")
            raise NotLeaderError(f"{what}: {NOT_LEADER}", 0)
        return result

    # -- ids -------------------------------------------------------------------
    def allocate_ids(self, count: int) -> list[int]:
        """``count`` new ids from the block reserved in etcd; reserves another when short."""
        if self._closed or not self._owner:
            raise JobQueueError("This etcd store hands out no more job ids")
        self._fence()  # a deposed leader hands out nothing, not even from its block
        with self._ids_lock:
            if self._last_id + count > self._reserved:
                self._reserve_locked(count + self.settings.id_block)
            first = self._last_id + 1
            self._last_id += count
            return list(range(first, first + count))

    def _reserve_locked(self, count: int) -> None:
        fence = self._fence()
        try:
            block = self._kv.allocate(self.keys.serial, count, fence=fence)
        except StorageError as err:
            raise StorageError(f"Cannot reserve job ids in etcd: {err}", err.args[1]) from err
        if block.numbers is None:
            if self._leadership is not None:
                self._leadership.declare_lost("etcd refused the serial update on the fence")
            raise NotLeaderError(f"Cannot reserve job ids: {NOT_LEADER}", 0)
        if block.numbers.start != self._reserved + 1:  # someone else moved it: skip to ours
            self._last_id = block.numbers.start - 1
        self._reserved = block.numbers.stop - 1
        self._serial_revision = block.revision

    def release_unused_ids(self) -> None:
        """Write back the last id handed out, unless the serial moved since we reserved."""
        with self._ids_lock:
            self._closed = True
            if not self._owner or self._reserved <= self._last_id:
                return
            self._write(
                "Cannot give back unused job ids",
                puts={self.keys.serial: str(self._last_id).encode()},
                expect={self.keys.serial: self._serial_revision},
            )
            self._reserved = self._last_id

    def _raise_serial(self, highest: int) -> None:
        """Make sure no id up to ``highest`` (a loaded job's) is ever reserved again."""
        with self._ids_lock:
            if highest > self._last_id:
                self._last_id = highest
                self._reserved = max(self._reserved, highest)
        for _ in range(8):
            current = self._kv.get(self.keys.serial)
            stored = current.value if current else b"0"
            if stored.isdigit() and int(stored) >= highest:
                return
            result = self._write(
                "Cannot update the job serial",
                puts={self.keys.serial: str(highest).encode()},
                expect={self.keys.serial: current.mod_revision if current else 0},
            )
            if result.succeeded:
                return
        raise StorageError("The job serial in etcd kept changing", errno.EAGAIN)

    # -- live jobs -------------------------------------------------------------
    def load_jobs(self) -> Iterator[Job]:
        """Every live job, read page by page at one revision; corrupt ones set aside.

        Only a handle that may write (the leader, or one that never asked to
        lead) sets corrupt keys aside and raises the serial above the
        highest live or archived id; a standby waiting to lead just skips
        them.
        """
        repair = self._owner and (self._leadership is None or self._leadership.leading())
        highest = 0
        live: set[int] = set()
        revisions: dict[int, int] = {}  # what the writes expect from now on
        pages = self._kv.range_prefix(self.keys.jobs, page_size=self.settings.page_size)
        for item in pages:
            job_id = self.keys.job_id_in(item.key, self.keys.jobs)
            if job_id is None:
                continue
            live.add(job_id)
            try:
                job = decode_job(item.value)
                if job.id != job_id:
                    raise JobFileCorrupted(f"The key holds job {job.id}")
            except JobFileCorrupted as err:
                if repair:
                    self._set_aside(item.key, item.value, item.mod_revision, err)
                continue
            highest = max(highest, job_id)
            revisions[job_id] = item.mod_revision
            yield job
        if repair:
            self._job_writes.loaded(revisions)
            highest = max(highest, self._highest_archived())
            if highest:
                self._raise_serial(highest)
            if self._outputs is not None:
                self._outputs.settle(live, self.is_archived)

    def _highest_archived(self) -> int:
        """The highest archived id (one request): a lost serial must continue above it."""
        key = self._kv.last_key(self.keys.archive)
        job_id = None if key is None else self.keys.job_id_in(key, self.keys.archive)
        return job_id or 0

    def _set_aside(self, key: bytes, value: bytes, revision: int, reason: Exception) -> None:
        target = self.keys.set_aside(key)
        try:
            self._write(
                f"Cannot set aside {key!r}",
                puts={target: value},
                deletes=[key],
                expect={key: revision},
            )
        except StorageError as err:
            self._log.error("etcd key %r is corrupt (%s) and stays: %s", key, reason, err)
            return
        self._log.error("etcd key %r is corrupt (%s); moved to %r", key, reason, target)

    def create_jobs(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        """Store new jobs (``etcdwrites``); one result per job."""
        return self._job_writes.create(jobs)

    def replace_job(self, job: Job) -> None:
        """Replace the job's key whole, with concurrent writes (``etcdwrites``); trim if too big."""
        data, dropped = fit_job(job, self.job_limit)
        if dropped and job.id not in self._trimmed:
            self._trimmed.add(job.id)
            self._log.warning(
                "Job %d is larger than etcd takes (%d bytes); its oldest log entries are"
                " dropped from the stored copy",
                job.id,
                self.job_limit,
            )
        self._job_writes.replace(job.id, data)

    def discard_jobs(self, job_ids: Sequence[int]) -> tuple[list[int], StorageError | None]:
        """Delete never-acknowledged jobs (``etcdwrites``), and their local output."""
        removed, failure = self._job_writes.discard(job_ids)
        if self._outputs is not None:
            self._outputs.delete_live(removed)
        return removed, failure

    def read_job(self, job_id: int) -> Job | None:
        (job,) = self.read_jobs([job_id])
        return job

    def read_jobs(self, job_ids: Sequence[int]) -> list[Job | None]:
        """Each job's live and archived keys read together, many jobs per request.

        One request reads both keys of up to ``MAX_TXN_OPS // 2`` jobs at one
        revision, so a job being archived meanwhile is found in one place.
        """
        jobs: list[Job | None] = []
        per_request = MAX_TXN_OPS // 2
        for start in range(0, len(job_ids), per_request):
            chunk = job_ids[start : start + per_request]
            keys = [key for job_id in chunk for key in self._job_keys(job_id)]
            try:
                found = self._kv.get_many(keys)
            except StorageError as err:
                which = f"job {chunk[0]}" if len(chunk) == 1 else f"jobs {chunk[0]} to {chunk[-1]}"
                raise StorageError(f"Cannot read {which}: {err}", err.args[1]) from err
            for live, archived in zip(found[0::2], found[1::2], strict=True):
                kept = live or archived
                jobs.append(None if kept is None else decode_job(kept.value))
        return jobs

    def _job_keys(self, job_id: int) -> tuple[bytes, bytes]:
        return self.keys.job(job_id), self.keys.archived(job_id)

    # -- archive -----------------------------------------------------------------
    def archive_jobs(self, job_ids: Iterable[int]) -> tuple[list[int], StorageError | None]:
        """Move the jobs in etcd, then their output on this host (``etcdoutput``)."""
        wanted = sorted(set(job_ids))
        moved, failure = self._archive.archive(wanted, self._clock())
        self._trimmed.difference_update(moved)
        self._job_writes.forget(wanted)  # moved, or finished jobs read afresh if written again
        if self._outputs is not None:
            self._outputs.archive(moved)
        return moved, failure

    def is_archived(self, job_id: int) -> bool:
        return self._kv.get(self.keys.archived(job_id)) is not None

    def archived_ids(self) -> list[int]:
        return self._archive.archived_ids(self.settings.page_size)

    def prune_archive(self, max_age: float, now: float, budget: float | None = None) -> PruneResult:
        """Prune etcd's archive, then this host's output of jobs etcd no longer has."""
        deadline = None if budget is None else self._monotonic() + budget
        result = self._archive.prune(now - max_age, deadline, self._monotonic)
        if not result.unfinished:
            self._tidy_local_output(result)
        return result

    def tidy_local_output(self) -> PruneResult:
        """Delete this host's output of jobs etcd no longer has (reads etcd, writes nothing)."""
        result = PruneResult()
        self._tidy_local_output(result)
        return result

    def _tidy_local_output(self, result: PruneResult) -> None:
        if self._outputs is not None:
            self._outputs.prune(self._still_there, result)

    def _still_there(self, job_ids: set[int]) -> set[int]:
        """Those of ``job_ids`` etcd has, live or archived (keys only, live ones first)."""
        found: set[int] = set()
        for prefix in (self.keys.jobs, self.keys.archive):
            keys = self._kv.range_prefix(prefix, page_size=self.settings.page_size, keys_only=True)
            ids = (self.keys.job_id_in(item.key, prefix) for item in keys)
            found.update(job_id for job_id in ids if job_id in job_ids)
        return found

    # -- settings --------------------------------------------------------------
    def is_drained(self) -> bool:
        """The drain flag; while leading, as read in the last ``DRAIN_RECHECK`` seconds."""
        fence = self._leading_fence()
        if fence is None:
            return self._read_setting(DRAIN) is not None
        with self._drain_lock:  # a read here and a change in set_drained never cross
            seen = self._drain_seen
            if seen is None or seen.fence != fence or self._monotonic() >= seen.until:
                seen = self._seen_drain(fence, self._read_setting(DRAIN) is not None)
            return seen.drained

    def set_drained(self, drained: bool) -> None:
        with self._drain_lock:
            self._drain_seen = None
            self._write_setting(DRAIN, "1" if drained else None)
            fence = self._leading_fence()
            if fence is not None:
                self._seen_drain(fence, drained)

    def _seen_drain(self, fence: Fence, drained: bool) -> _DrainSeen:
        """Trust ``drained`` under ``fence`` for ``DRAIN_RECHECK`` seconds; ``_drain_lock`` held."""
        self._drain_seen = _DrainSeen(fence, drained, self._monotonic() + DRAIN_RECHECK)
        return self._drain_seen

    def _leading_fence(self) -> Fence | None:
        """The fence of the leadership this handle holds now; None if it does not lead."""
        try:
            return self._fence()
        except NotLeaderError:
            return None

    def read_setting(self, name: str) -> str | None:
        """A named setting, kept at ``<prefix>/settings/<name>``; None if unset."""
        check_setting(name)
        return self._read_setting(name)

    def write_setting(self, name: str, value: str | None) -> None:
        check_setting(name, value)
        self._write_setting(name, value)

    def _read_setting(self, name: str) -> str | None:
        try:
            found = self._kv.get(self.keys.setting(name))
        except StorageError as err:
            raise StorageError(f"Cannot read setting {name}: {err}", err.args[1]) from err
        return None if found is None else found.value.decode("utf-8", "replace")

    def _write_setting(self, name: str, value: str | None) -> None:
        key, what = self.keys.setting(name), f"Cannot write setting {name} to etcd"
        if value is None:
            self._write_control(what, deletes=[key])
        else:
            self._write_control(what, puts={key: value.encode("utf-8")})

    def _write_control(
        self, what: str, *, puts: dict[bytes, bytes] | None = None, deletes: Iterable[bytes] = ()
    ) -> None:
        """Change a setting or a filter rule, moving the controls key in the same transaction,
        on condition that it has not moved since it was read: a change that lands late
        (doc/ha.rst, "Writes") finds it moved by every later change, and is refused."""
        key = self.keys.controls
        try:
            found = self._kv.get(key)
        except StorageError as err:
            raise StorageError(f"{what}: {err}", err.args[1]) from err
        expect = {key: 0 if found is None else found.mod_revision}
        for _ in range(CONTROL_ATTEMPTS):
            result = self._write(
                what, puts={**(puts or {}), key: b""}, deletes=deletes, expect=expect
            )
            if result.succeeded:
                return
            expect = {key: result.found.get(key, 0)}  # moved meanwhile: nothing was written
        raise StorageError(f"{what}: the controls kept changing meanwhile", errno.EAGAIN)

    # -- job filter rules ----------------------------------------------------------
    def load_filters(self) -> list[dict[str, Any]]:
        """The rules at ``<prefix>/filters/<uuid>``; one that does not parse is logged."""
        rules = []
        try:
            stored = list(
                self._kv.range_prefix(self.keys.filters, page_size=self.settings.page_size)
            )
        except StorageError as err:
            raise StorageError(f"Cannot read the filter rules: {err}", err.args[1]) from err
        for item in stored:
            uuid = item.key[len(self.keys.filters) :].decode("utf-8", "replace")
            try:
                rule = json.loads(item.value.decode("utf-8"))
                if not isinstance(rule, dict) or rule.get("uuid") != uuid:
                    raise ValueError("not a rule stored under its own uuid")
            except (UnicodeDecodeError, ValueError, RecursionError) as err:
                self._log.error("Ignoring the filter rule %s in etcd: %s", uuid, err)
                continue
            rules.append(rule)
        return rules

    def replace_filter(self, rule: dict[str, Any]) -> None:
        data = json.dumps(rule, separators=(",", ":")).encode("utf-8")
        what = f"Cannot write the filter rule {rule['uuid']} to etcd"
        self._write_control(what, puts={self.keys.filter_rule(rule["uuid"]): data})

    def delete_filter(self, uuid: str) -> bool:
        key = self.keys.filter_rule(uuid)
        try:
            found = self._kv.get(key)
        except StorageError as err:
            raise StorageError(f"Cannot read the filter rule {uuid}: {err}", err.args[1]) from err
        # Written even when there is nothing to delete: a change that lands late is refused.
        self._write_control(f"Cannot delete the filter rule {uuid} from etcd", deletes=[key])
        return found is not None

    # -- command output: on this host's disk (see the module docstring) ------------------
    def open_output(self, job_id: int, op_index: int, stream: str) -> OutputStream:
        if self._outputs is None:
            raise StorageError(
                "This etcd store handle keeps no command output (no output directory)",
                errno.ENOTSUP,
            )
        return self._outputs.open(job_id, op_index, stream)

    def output_sizes(self, job_id: int) -> dict[tuple[int, str], int]:
        return {} if self._outputs is None else self._outputs.sizes(job_id)

    def read_output(
        self, job_id: int, op_index: int, stream: str, offset: int, max_bytes: int
    ) -> bytes:
        if self._outputs is None:
            return b""
        return self._outputs.read(job_id, op_index, stream, offset, max_bytes)

    # -- other processes' changes, leadership, history --------------------------------
    def change_feed(self, start_revision: int = 0) -> ChangeFeed:
        """A feed from ``start_revision`` (0: from now on)."""
        return EtcdChangeFeed(self._kv, self.keys, start_revision=start_revision, logger=self._log)

    def leadership(self, name: str) -> EtcdLeadership:
        if self._leadership is None:
            self._leadership = EtcdLeadership(
                self._kv, self.keys.leader, name, self.settings.lease_ttl, self._monotonic
            )
        return self._leadership

    def compact_history(self) -> int | None:
        """Note etcd's revision now; compact the history older than ``settings.history``.

        The daemon calls this every minute or so while it leads: etcd then
        keeps about ``history`` seconds of past revisions, which a standby's
        watch can fall behind by before it has to re-read. Returns the
        revision compacted to, None when nothing was old enough (or history
        is 0). Raises StorageError.
        """
        if not self.settings.history:
            return None
        now = self._monotonic()
        self._history.append((now, self._kv.revision()))
        target = None
        while self._history and now - self._history[0][0] >= self.settings.history:
            target = self._history.popleft()[1]
        if target is None:
            return None
        self._kv.compact(target)
        return target
