"""The etcd store beyond the contract, on real etcd: fencing, lost quorum, size, paging, history.

The contract itself runs on etcd in tests/test_storage.py. Without an etcd
server the tests here that need one are skipped, saying why.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobqueue import cleaner
from jobqueue.constants import Status
from jobqueue.daemon import build_core, start_core
from jobqueue.errors import JobNotLive, JobQueueError, NotLeaderError, StorageError
from jobqueue.livejobs import LiveJobs
from jobqueue.lus import builtin_registry
from jobqueue.model import Job
from jobqueue.standby import StoreMirror
from jobqueue.storage import etcd as etcd_module
from jobqueue.storage.base import WATCHER_PAUSE, encode_job, format_pause
from jobqueue.storage.etcd import EtcdJobStore
from jobqueue.storage.etcdkv import EtcdKV
from jobqueue.storage.etcdlayout import TRIM_MARKER, fit_job
from jobqueue.storage.etcdoptions import STORE_ETCD, EtcdStoreSettings, add_etcd_arguments
from jobqueue.storage.groupcommit import GroupCommit
from tests.etcd_cluster import EtcdCluster, unique_prefix
from tests.grouping import start_behind_a_held_write
from tests.polling import poll_until
from tests.store_samples import RULE_UUIDS, create, make_job

OpenStore = Callable[..., EtcdJobStore]
#: A small request limit for the size tests: the server's and the store's.
SMALL_LIMIT = 256 * 1024


class Clock:
    """time.monotonic, plus a jump the test decides (a paused process sees one)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def logged_job(job_id: int, entries: int, size: int) -> Job:
    job = make_job(job_id)
    for number in range(entries):
        job.add_log(0, "message", f"{number}:" + "m" * size, [1000 + number, 0])
    return job


# -- fencing ----------------------------------------------------------------------


def test_a_leader_whose_lease_was_revoked_is_refused_by_etcd(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    endpoints, prefix = etcd_member.endpoints, unique_prefix()
    old, new = open_etcd_store(endpoints, prefix), open_etcd_store(endpoints, prefix)
    old_lead = old.leadership("old")
    assert old_lead.acquire(0)
    (job_id,) = old.allocate_ids(1)
    create(old, make_job(job_id))
    lease = old_lead.lease_id
    assert lease is not None
    new.kv.lease_revoke(lease)  # etcd ends the lease; the old leader has not noticed yet
    new_lead = new.leadership("new")
    assert new_lead.acquire(5) and new_lead.holder() == "new"
    before, revision = new.kv.get(new.keys.job(job_id)), new.kv.revision()

    with pytest.raises(NotLeaderError):  # sent to etcd, refused there on the fence
        old.replace_job(make_job(job_id, Status.SUCCESS))
    assert old_lead.lost.is_set()
    assert isinstance(old.create_jobs([make_job(job_id + 1)])[0], NotLeaderError)
    assert isinstance(old.archive_jobs([job_id])[1], NotLeaderError)
    discarded, failure = old.discard_jobs([job_id])
    assert discarded == [] and isinstance(failure, NotLeaderError)
    for write in (lambda: old.allocate_ids(1), lambda: old.set_drained(True)):
        with pytest.raises(NotLeaderError):
            write()
    with pytest.raises(NotLeaderError):
        old.release_unused_ids()
    assert new.kv.revision() == revision  # etcd holds nothing the old leader sent
    assert new.kv.get(new.keys.job(job_id)) == before
    new.replace_job(make_job(job_id, Status.SUCCESS))
    stored = old.read_job(job_id)  # reads still work for the deposed one
    assert stored is not None and stored.status == Status.SUCCESS


def test_a_leader_whose_lease_lapsed_stops_and_can_lead_again(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    """A pause past the TTL (a clock jump, as a stopped process sees on resuming)."""
    endpoints, prefix = etcd_member.endpoints, unique_prefix()
    clock = Clock()
    old = open_etcd_store(endpoints, prefix, lease_ttl=2, monotonic=clock)
    new = open_etcd_store(endpoints, prefix, lease_ttl=2)
    old_lead, new_lead = old.leadership("old"), new.leadership("new")
    assert old_lead.acquire(0)
    create(old, make_job(1))
    assert not new_lead.acquire(0)

    clock.offset += 3  # the lease may be gone by our clock: the keeper gives up, stops renewing
    assert old_lead.lost.wait(5)
    with pytest.raises(NotLeaderError):
        old.replace_job(make_job(1, Status.ERROR))
    assert new_lead.acquire(10)  # once etcd has expired the unrenewed lease
    assert new.kv.get(new.keys.leader) is not None
    new.replace_job(make_job(1, Status.SUCCESS))
    new_lead.release()

    assert old_lead.acquire(5) and not old_lead.lost.is_set()  # a standby that leads again
    old.replace_job(make_job(1, Status.CANCELED))
    stored = new.read_job(1)
    assert stored is not None and stored.status == Status.CANCELED


def test_waiting_to_lead_wakes_when_the_leader_releases(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    endpoints, prefix = etcd_member.endpoints, unique_prefix()
    first = open_etcd_store(endpoints, prefix).leadership("first")
    second = open_etcd_store(endpoints, prefix).leadership("second")
    assert second.holder() is None
    assert first.acquire(0)
    won: list[bool] = []
    waiter = threading.Thread(target=lambda: won.append(second.acquire(30)))
    waiter.start()
    assert poll_until(lambda: second.holder() == "first", 5)
    first.release()
    waiter.join(30)
    assert won == [True] and second.holder() == "second"


def test_a_standby_mirror_follows_the_master_through_etcd(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    endpoints, prefix = etcd_member.endpoints, unique_prefix()
    master, standby = open_etcd_store(endpoints, prefix), open_etcd_store(endpoints, prefix)
    assert master.leadership("master").acquire(0)
    create(master, make_job(1))
    live = LiveJobs(builtin_registry().summarize)
    mirror = StoreMirror(standby, live)
    mirror.start()
    try:
        assert live.ids() == [1]
        create(master, make_job(2))
        master.replace_job(make_job(1, Status.SUCCESS))
        assert poll_until(lambda: live.ids() == [1, 2], 10)
        assert poll_until(lambda: _status(live, 1) == Status.SUCCESS, 10)
        master.archive_jobs([1])
        assert poll_until(lambda: live.ids() == [2], 10)
    finally:
        mirror.stop()


def _status(live: LiveJobs, job_id: int) -> Status | None:
    entry = live.entry(job_id)
    return None if entry is None else entry.status


# -- lost quorum ------------------------------------------------------------------


def test_writes_fail_in_time_without_quorum_and_work_again_after(
    etcd_factory: Callable[..., EtcdCluster], open_etcd_store: OpenStore
) -> None:
    cluster = etcd_factory(3)
    store = open_etcd_store(cluster.endpoints, unique_prefix(), timeout=1.0, lease_ttl=3)
    lead = store.leadership("me")
    assert lead.acquire(0)
    ids = store.allocate_ids(3)
    create(store, make_job(ids[0]))
    gone = cluster.members[1:]
    for member in gone:
        member.kill9()

    started = time.monotonic()
    (refused,) = store.create_jobs([make_job(ids[1])])
    assert time.monotonic() - started < 2 * 1.0 + 1.0  # the write, then its read-back
    assert isinstance(refused, StorageError)
    assert refused.args[1] in (errno.ETIMEDOUT, errno.EAGAIN, errno.ECONNREFUSED), refused
    for call in (lambda: store.replace_job(make_job(ids[0], Status.ERROR)), store.is_drained):
        started = time.monotonic()
        with pytest.raises(StorageError):
            call()
        assert time.monotonic() - started < 1.0 + 1.0

    for member in gone:
        cluster.restart(member, wait=False)
    cluster.wait_healthy()
    assert lead.acquire(15)  # again, if the lease lapsed meanwhile
    assert poll_until(lambda: store.create_jobs([make_job(ids[2])]) == [None], 15)
    # Refused, so not there, nor can it appear later: the timed-out write may
    # be committed once quorum is back, but the next submission deleted it.
    # (The replace's outcome is unknown likewise; the queue reads it back.)
    assert store.read_job(ids[1]) is None
    assert [job.id for job in store.load_jobs()] == [ids[0], ids[2]]


class Flaky:
    """An EtcdKV whose transactions time out: after applying them, or without."""

    def __init__(self, kv: EtcdKV, apply: bool) -> None:
        self.kv, self.apply = kv, apply
        self.real_txn = kv.txn

    def txn(self, **request: Any) -> Any:
        if self.apply:
            self.real_txn(**request)
        raise StorageError(
            "etcd /kv/txn failed (the write may or may not have been applied)", errno.ETIMEDOUT
        )


def test_a_submission_of_unknown_outcome_is_read_back_and_never_left_behind(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_etcd_store(etcd_member.endpoints, unique_prefix())
    landed = Flaky(store.kv, apply=True)
    with monkeypatch.context() as patch:
        patch.setattr(store.kv, "txn", landed.txn)
        assert store.create_jobs([make_job(1)]) == [None]  # it did land: acknowledged
    lost = Flaky(store.kv, apply=False)
    with monkeypatch.context() as patch:
        patch.setattr(store.kv, "txn", lost.txn)
        (failure,) = store.create_jobs([make_job(2)])
    assert isinstance(failure, StorageError) and failure.args[1] == errno.ETIMEDOUT
    store.kv.txn(fence=None, puts={store.keys.job(2): encode_job(make_job(2))})  # lands late
    create(store, make_job(3))  # the next submission removes what was never acknowledged
    assert [job.id for job in store.load_jobs()] == [1, 3]


# -- writes that land late ------------------------------------------------------------------
# A member that was paused or stalled applies the request waiting in its socket
# when it resumes, long after its client gave up (ETIMEDOUT) and wrote newer
# versions through other members. ``Late`` replays such a request, unchanged.


class Late:
    """EtcdKV.txn whose first transaction times out unapplied; ``land`` applies it later."""

    def __init__(self, kv: EtcdKV) -> None:
        self.real_txn = kv.txn
        self.request: dict[str, Any] | None = None

    def txn(self, **request: Any) -> Any:
        if self.request is None:
            self.request = request
            raise StorageError(
                "etcd /kv/txn failed (the write may or may not have been applied)",
                errno.ETIMEDOUT,
            )
        return self.real_txn(**request)

    def land(self) -> Any:
        assert self.request is not None
        return self.real_txn(**self.request)


def leading_store(open_etcd_store: OpenStore, cluster: EtcdCluster) -> EtcdJobStore:
    store = open_etcd_store(cluster.endpoints, unique_prefix())
    assert store.leadership("master").acquire(5)
    return store


def running_version_timed_out(
    store: EtcdJobStore, monkeypatch: pytest.MonkeyPatch, job_id: int = 1
) -> Late:
    """Job ``job_id`` created, then its running version sent and timed out, unapplied."""
    create(store, make_job(job_id))
    late = Late(store.kv)
    monkeypatch.setattr(store.kv, "txn", late.txn)
    with pytest.raises(StorageError):
        store.replace_job(make_job(job_id, Status.RUNNING))
    return late


def test_a_version_that_lands_late_never_takes_its_job_back(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    late = running_version_timed_out(store, monkeypatch)
    store.replace_job(make_job(1, Status.SUCCESS))
    assert not late.land().succeeded  # the running version comes too late
    assert store.read_job(1) == make_job(1, Status.SUCCESS)
    successor = open_etcd_store(etcd_member.endpoints, store.settings.prefix, owner=False)
    assert [job.status for job in successor.load_jobs()] == [Status.SUCCESS]


def test_a_version_that_lands_before_the_next_is_written_over(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    late = running_version_timed_out(store, monkeypatch)
    assert [job.status for job in store.load_jobs()] == [Status.QUEUED]  # read before it lands
    assert late.land().succeeded
    results: list[Any] = []

    def txn(**request: Any) -> Any:
        results.append(late.real_txn(**request))
        return results[-1]

    monkeypatch.setattr(store.kv, "txn", txn)
    store.replace_job(make_job(1, Status.SUCCESS))
    assert [result.succeeded for result in results] == [False, True]  # refused, then over it
    assert store.read_job(1) == make_job(1, Status.SUCCESS)


def test_a_version_that_lands_after_archiving_brings_nothing_back(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    late = running_version_timed_out(store, monkeypatch)
    store.replace_job(make_job(1, Status.SUCCESS))
    assert store.archive_jobs([1]) == ([1], None)
    assert not late.land().succeeded
    assert store.kv.get(store.keys.job(1)) is None  # in one place only: the archive
    assert store.read_job(1) == make_job(1, Status.SUCCESS)
    with pytest.raises(StorageError) as caught:  # nor does a write of ours bring it back
        store.replace_job(make_job(1, Status.SUCCESS))
    assert caught.value.args[1] == errno.ENOENT
    assert store.kv.get(store.keys.job(1)) is None


def test_a_submission_refused_in_doubt_never_lands_after_its_removal(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    late = Late(store.kv)
    with monkeypatch.context() as patch:
        patch.setattr(store.kv, "txn", late.txn)
        (failure,) = store.create_jobs([make_job(2)])  # read back: absent, refused
    assert isinstance(failure, StorageError) and failure.args[1] == errno.ETIMEDOUT
    create(store, make_job(3))  # removes job 2 first, moving the withdrawal key
    assert not late.land().succeeded
    successor = open_etcd_store(etcd_member.endpoints, store.settings.prefix, owner=False)
    assert [job.id for job in successor.load_jobs()] == [3]


def test_a_submission_sent_while_jobs_are_removed_is_written_again(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    create(store, make_job(1), make_job(2))
    real_txn, refused = store.kv.txn, []

    def txn(**request: Any) -> Any:
        if store.keys.job(3) in request.get("puts", {}) and not refused:
            assert store.discard_jobs([2]) == ([2], None)  # moves the withdrawal key
            refused.append(real_txn(**request))
            assert not refused[0].succeeded
        return real_txn(**request)

    monkeypatch.setattr(store.kv, "txn", txn)
    create(store, make_job(3))
    assert [job.id for job in store.load_jobs()] == [1, 3]


def no_answer(*args: Any, **kwargs: Any) -> Any:
    raise StorageError("etcd /kv/range failed: no answer in time", errno.ETIMEDOUT)


def test_a_change_of_the_controls_that_lands_late_is_refused(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    rule = {"uuid": RULE_UUIDS[0], "priority": 0, "predicates": [], "action": "ACCEPT"}
    for change, later, check in [
        (lambda: store.set_drained(True), lambda: store.set_drained(False), store.is_drained),
        (
            lambda: store.replace_filter(rule),
            lambda: store.delete_filter(rule["uuid"]),
            store.load_filters,
        ),
        (
            lambda: store.replace_filter({**rule, "action": "REJECT"}),
            lambda: store.replace_filter({**rule, "action": "PAUSE"}),
            lambda: [rule["action"] for rule in store.load_filters()],
        ),
    ]:
        late = Late(store.kv)
        with monkeypatch.context() as patch:
            patch.setattr(store.kv, "txn", late.txn)
            with pytest.raises(StorageError):
                change()  # times out, unapplied
            later()
            expected = check()
            assert not late.land().succeeded
        assert check() == expected


def test_jobs_in_doubt_of_an_earlier_term_are_not_removed_once_loaded_again(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix()
    first = open_etcd_store(etcd_member.endpoints, prefix)
    assert first.leadership("first").acquire(5)
    lost = Flaky(first.kv, apply=True)  # it lands, but neither its answer nor a read-back comes
    with monkeypatch.context() as patch:
        patch.setattr(first.kv, "txn", lost.txn)
        patch.setattr(first.kv, "get_many", no_answer)
        (failure,) = first.create_jobs([make_job(2)])
    assert isinstance(failure, StorageError) and failure.args[1] == errno.ETIMEDOUT
    first.leadership("first").release()
    other = open_etcd_store(etcd_member.endpoints, prefix)  # leads meanwhile: job 2 is live
    assert other.leadership("other").acquire(5)
    assert [job.id for job in other.load_jobs()] == [2]
    other.replace_job(make_job(2, Status.RUNNING))
    other.leadership("other").release()
    assert first.leadership("first").acquire(5)  # a new term: job 2 is loaded as live
    assert [job.id for job in first.load_jobs()] == [2]
    create(first, make_job(3))
    first.replace_job(make_job(2, Status.ERROR))
    assert [job.status for job in first.load_jobs()] == [Status.ERROR, Status.QUEUED]


def test_a_job_no_longer_live_is_refused_alone(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    create(store, make_job(1), make_job(2), make_job(3))
    store.kv.txn(fence=None, deletes=[store.keys.job(2)])  # removed by hand
    held = HeldTxn(store.kv)
    monkeypatch.setattr(store.kv, "txn", held.txn)
    results: dict[int, Any] = {}

    def write(job_id: int) -> None:
        try:
            store.replace_job(make_job(job_id, Status.RUNNING))
            results[job_id] = None
        except StorageError as err:
            results[job_id] = err

    calls = [functools.partial(write, job_id) for job_id in (1, 2, 3)]
    during_a_held_write(held, store._job_writes._replacing, calls)  # 2 and 3 go in together
    assert results[1] is None and results[3] is None
    assert isinstance(results[2], JobNotLive) and "job 2" in str(results[2])
    assert store.kv.get(store.keys.job(2)) is None  # not brought back
    assert [job.id for job in store.load_jobs()] == [1, 3]


def test_the_queue_drops_a_job_removed_from_etcd_and_its_dependents_learn_it(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = leading_store(open_etcd_store, etcd_member)
    core = build_core(store, builtin_registry(), name="master")
    start_core(core, 2)
    try:
        queue = core.queue
        removed = queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 1.0}])
        dependent = queue.submit_job(
            [{"OP_ID": "OP_TEST_DELAY", "duration": 0, "depends": [[removed, ["success"]]]}]
        )
        assert poll_until(lambda: core.live.status_of(removed) == Status.RUNNING, 10)
        store.kv.txn(fence=None, deletes=[store.keys.job(removed)])  # by hand, while it runs
        assert poll_until(lambda: core.live.status_of(dependent) == Status.ERROR, 15)
        assert core.live.status_of(removed) is None
        (row,) = core.reader.query_jobs([dependent], ["opresult"])
        assert f"job {removed} not found" in json.dumps(row)
        assert f"Cannot write job {removed} to etcd" in caplog.text
        assert "retrying" not in caplog.text
        other = queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 0}])
        assert poll_until(lambda: core.live.status_of(other) == Status.SUCCESS, 10)
    finally:
        core.queue.prepare_shutdown()
        core.stop()


class HeldTxn:
    """EtcdKV.txn that records each transaction's puts; the first waits for ``release``.

    Once ``fail`` is set, the transactions after the first raise it instead.
    """

    def __init__(self, kv: EtcdKV) -> None:
        self.real_txn = kv.txn
        self.first = threading.Event()
        self.release = threading.Event()
        self.fail: StorageError | None = None
        self.puts: list[list[bytes]] = []
        self._lock = threading.Lock()

    def txn(self, **request: Any) -> Any:
        with self._lock:
            first = not self.first.is_set()
            self.first.set()
        if first:
            assert self.release.wait(30)
        elif self.fail is not None:
            raise self.fail
        result = self.real_txn(**request)
        with self._lock:
            self.puts.append(sorted(request.get("puts", {})))
        return result


def during_a_held_write(
    held: HeldTxn,
    grouped: GroupCommit[Any, Any],
    calls: list[Callable[[], None]],
    fail: StorageError | None = None,
) -> None:
    """Run ``calls[0]``, held in its transaction, then each other call while it waits.

    Each later call starts once the previous ones wait in ``grouped``; then
    ``held.fail`` is set to ``fail``, the first transaction is released and
    every call is joined.
    """

    threads = [threading.Thread(target=call) for call in calls]
    start_behind_a_held_write(grouped, held.first, threads)
    held.fail = fail
    held.release.set()
    for thread in threads:
        thread.join(30)
    held.fail = None


def submit_during_a_write(
    store: EtcdJobStore, held: HeldTxn, later: list[int], fail: StorageError | None = None
) -> dict[int, object]:
    """Each job's result when job 1 is submitted, held, and each of ``later`` meanwhile."""
    results: dict[int, object] = {}

    def submit(job_id: int) -> None:
        (results[job_id],) = store.create_jobs([make_job(job_id)])

    calls = [functools.partial(submit, job_id) for job_id in [1, *later]]
    during_a_held_write(held, store._job_writes._creating, calls, fail)
    return results


def test_submissions_made_during_a_write_go_in_together_as_one_transaction(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_etcd_store(etcd_member.endpoints, unique_prefix())
    held = HeldTxn(store.kv)
    monkeypatch.setattr(store.kv, "txn", held.txn)
    assert submit_during_a_write(store, held, [2, 3, 4, 5, 6]) == dict.fromkeys(range(1, 7))
    keys = store.keys.job
    assert held.puts == [[keys(1)], sorted(keys(job_id) for job_id in range(2, 7))]
    assert [job.id for job in store.load_jobs()] == list(range(1, 7))


def test_a_failed_combined_transaction_refuses_each_of_its_submissions(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_etcd_store(etcd_member.endpoints, unique_prefix())
    held = HeldTxn(store.kv)
    monkeypatch.setattr(store.kv, "txn", held.txn)
    results = submit_during_a_write(store, held, [2, 3], StorageError("etcd refused it", errno.EIO))
    assert results[1] is None
    refused = results[2]
    assert results[3] is refused and isinstance(refused, StorageError)
    assert refused.args == ("Cannot store 2 jobs (2 to 3) in etcd: etcd refused it", errno.EIO)
    assert [job.id for job in store.load_jobs()] == [1]


@pytest.mark.parametrize("fails", [False, True])
def test_job_versions_written_during_a_write_go_in_together(
    etcd_member: EtcdCluster,
    open_etcd_store: OpenStore,
    monkeypatch: pytest.MonkeyPatch,
    fails: bool,
) -> None:
    store = open_etcd_store(etcd_member.endpoints, unique_prefix())
    for job_id in range(1, 5):
        create(store, make_job(job_id))
    held = HeldTxn(store.kv)
    monkeypatch.setattr(store.kv, "txn", held.txn)
    errors: dict[int, BaseException | None] = {}

    def finish(job_id: int) -> None:
        try:
            store.replace_job(make_job(job_id, Status.SUCCESS))
            errors[job_id] = None
        except StorageError as err:
            errors[job_id] = err

    calls = [functools.partial(finish, job_id) for job_id in range(1, 5)]
    refused = StorageError("etcd refused it", errno.EIO) if fails else None
    during_a_held_write(held, store._job_writes._replacing, calls, refused)
    statuses = {job.id: job.status for job in store.read_jobs([1, 2, 3, 4]) if job is not None}
    keys = store.keys.job
    if not fails:
        assert errors == dict.fromkeys(range(1, 5))
        assert held.puts == [[keys(1)], [keys(2), keys(3), keys(4)]]
        assert set(statuses.values()) == {Status.SUCCESS}
        return
    assert errors[1] is None and held.puts == [[keys(1)]]
    message = ("Cannot write 3 jobs (2 to 4) to etcd: etcd refused it", errno.EIO)
    for job_id in (2, 3, 4):
        failure = errors[job_id]
        assert isinstance(failure, StorageError) and failure.args == message
    assert statuses == {1: Status.SUCCESS, 2: Status.QUEUED, 3: Status.QUEUED, 4: Status.QUEUED}


# -- the drain flag while leading ----------------------------------------------------


def test_a_leader_reads_the_drain_flag_at_most_once_a_recheck(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoints, prefix = etcd_member.endpoints, unique_prefix()
    clock = Clock()
    store = open_etcd_store(endpoints, prefix, monotonic=clock)
    other = open_etcd_store(endpoints, prefix)
    assert not store.is_drained()  # not leading: read every time
    lead = store.leadership("master")
    assert lead.acquire(0)
    reads: list[bytes] = []
    real_get = store.kv.get

    def counted_get(key: bytes) -> Any:
        if key == store.keys.setting("drain"):
            reads.append(key)
        return real_get(key)

    monkeypatch.setattr(store.kv, "get", counted_get)
    assert [store.is_drained() for _ in range(50)] == [False] * 50
    assert len(reads) == 1
    store.set_drained(True)  # its own change counts at once, without a read
    assert store.is_drained() and len(reads) == 1
    assert other.is_drained()  # and is in etcd for everyone
    store.set_drained(False)

    other.kv.txn(fence=None, puts={other.keys.setting("drain"): b"1"})  # etcdctl, say
    assert not store.is_drained()  # trusted until the recheck...
    clock.offset += etcd_module.DRAIN_RECHECK  # (well within the lease's TTL)
    assert store.is_drained()  # ...and read again after it
    assert len(reads) == 2
    lead.release()
    other.kv.txn(fence=None, deletes=[other.keys.setting("drain")])
    assert not store.is_drained()  # no longer leading: read at once


def test_a_new_term_of_leadership_reads_the_drain_flag_afresh(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoints, prefix = etcd_member.endpoints, unique_prefix()
    store, other = open_etcd_store(endpoints, prefix), open_etcd_store(endpoints, prefix)
    monkeypatch.setattr(etcd_module, "DRAIN_RECHECK", 3600.0)
    lead = store.leadership("a")
    assert lead.acquire(0)
    assert not store.is_drained()
    lead.release()
    other_lead = other.leadership("b")
    assert other_lead.acquire(5)
    other.set_drained(True)
    other_lead.release()
    assert lead.acquire(5)
    assert store.is_drained()


# -- the size rule ----------------------------------------------------------------


def test_fit_job_drops_the_oldest_entries_behind_one_notice() -> None:
    job = Job.new(7, [{"OP_ID": "OP_TEST_DELAY"}, {"OP_ID": "OP_TEST_DELAY"}], [1, 0])
    for number in range(50):  # serials 1-20 in the first opcode, 21-50 in the second
        job.add_log(0 if number < 20 else 1, "message", "x" * 100, [number, 0])
    whole = encode_job(job)
    assert fit_job(job, len(whole)) == (whole, 0)
    data, dropped = fit_job(job, len(whole) - 2000)
    assert len(data) <= len(whole) - 2000 and dropped > 15
    stored = Job.from_dict(json.loads(data))
    entries = [entry for op in stored.ops for entry in op.log]
    serials = [entry[0] for entry in entries]
    assert serials == sorted(set(serials)) and serials[-1] == 50
    notice = entries[0]
    assert notice[3].startswith(TRIM_MARKER) and f"{dropped} older" in notice[3]
    assert notice[0] == dropped  # the newest dropped entry's serial
    assert len(entries) == 50 - dropped + 1
    assert sum(len(op.log) for op in job.ops) == 50  # the job itself is untouched


def test_the_size_rule_on_a_server_with_a_small_request_limit(
    etcd_factory: Callable[..., EtcdCluster], open_etcd_store: OpenStore
) -> None:
    cluster = etcd_factory(1, flags=(f"--max-request-bytes={SMALL_LIMIT}",))
    store = open_etcd_store(cluster.endpoints, unique_prefix(), max_request_bytes=SMALL_LIMIT)
    limit = store.job_limit
    ids = store.allocate_ids(6)

    huge = Job.new(ids[1], [{"OP_ID": "OP_TEST_DELAY", "note": "h" * limit}], [0, 0])
    results = store.create_jobs([make_job(ids[0]), huge, make_job(ids[2])])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StorageError) and results[1].args[1] == errno.EFBIG
    assert "too large" in str(results[1]) and store.read_job(ids[1]) is None

    job = logged_job(ids[0], entries=400, size=1000)  # about 400 KB of log
    store.replace_job(job)
    stored = store.read_job(ids[0])
    assert stored is not None and len(encode_job(stored)) <= limit
    log = stored.ops[0].log
    assert log[0][3].startswith(TRIM_MARKER) and log[-1] == job.ops[0].log[-1]
    assert len(job.ops[0].log) == 400

    result_too_big = make_job(ids[2])
    result_too_big.ops[0].result = "r" * (limit + 1)
    with pytest.raises(StorageError) as caught:
        store.replace_job(result_too_big)
    assert caught.value.args[1] == errno.EFBIG
    unchanged = store.read_job(ids[2])
    assert unchanged is not None and unchanged.ops[0].result is None

    # Jobs near the limit are archived in as many transactions as they need.
    near = [logged_job(job_id, entries=100, size=1000) for job_id in ids[3:]]
    create(store, *near)
    job.ops[0].status = Status.SUCCESS
    store.replace_job(job)
    assert store.archive_jobs([ids[0], *ids[3:]]) == ([ids[0], *ids[3:]], None)
    archived = store.read_job(ids[0])
    assert archived is not None and archived.ops[0].log == log


# -- paging, history, pruning -----------------------------------------------------


def test_twenty_thousand_jobs_load_page_by_page(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix()
    store = open_etcd_store(etcd_member.endpoints, prefix)
    ids = store.allocate_ids(20_000)
    assert store.create_jobs([make_job(job_id) for job_id in ids]) == [None] * len(ids)
    store.release_unused_ids()

    reopened = open_etcd_store(etcd_member.endpoints, prefix, page_size=1000)
    ranges: list[int] = []
    real_call = reopened.kv.call

    def counting(path: str, body: Any, **options: Any) -> dict[str, Any]:
        if path == "/kv/range":
            ranges.append(body.get("limit", 0))
        return real_call(path, body, **options)

    monkeypatch.setattr(reopened.kv, "call", counting)
    loaded = [job.id for job in reopened.load_jobs()]
    assert loaded == ids  # key order is id order
    assert ranges.count(1000) >= 20  # one page of 1000 jobs per request
    assert reopened.allocate_ids(1) == [ids[-1] + 1]


def test_history_is_compacted_and_the_feed_says_so(
    etcd_factory: Callable[..., EtcdCluster], open_etcd_store: OpenStore
) -> None:
    cluster = etcd_factory(1)
    clock = Clock()
    store = open_etcd_store(cluster.endpoints, unique_prefix(), history=60, monotonic=clock)
    create(store, make_job(1))
    before = store.kv.revision()
    assert store.compact_history() is None  # nothing is a minute old yet
    create(store, make_job(2))
    clock.offset += 61
    assert store.compact_history() == before
    with pytest.raises(StorageError) as caught:
        list(store.kv.range_prefix(store.keys.jobs, revision=before - 1))
    assert caught.value.args[1] == errno.ESTALE

    seen: list[int | None] = []
    feed = store.change_feed(start_revision=before - 1)  # a follower far behind
    feed.start(seen.append)
    try:
        assert poll_until(lambda: None in seen, 10)
        create(store, make_job(3))
        assert poll_until(lambda: 3 in seen, 10)
    finally:
        feed.stop()
    assert seen.index(None) < seen.index(3)
    no_history = open_etcd_store(cluster.endpoints, unique_prefix(), history=0)
    assert no_history.compact_history() is None


def test_pruning_dates_jobs_by_their_archiving(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    now = [1_800_000_000.0]
    store = open_etcd_store(etcd_member.endpoints, unique_prefix(), clock=lambda: now[0])
    create(store, *(make_job(job_id, Status.SUCCESS) for job_id in (1, 2, 3)))
    store.archive_jobs([1, 2])
    store.archive_jobs([3])
    # An archived job written by other means has no record: its end (2000) dates it.
    store.kv.txn(fence=None, puts={store.keys.archived(9): encode_job(make_job(9, Status.ERROR))})
    assert len(list(store.kv.range_prefix(store.keys.archive_time))) == 2

    stopped = store.prune_archive(0, now[0] + 60, budget=0)
    assert stopped.unfinished and stopped.jobs == 0
    first = store.prune_archive(3600, now[0] + 60)
    assert (first.jobs, first.failures, store.archived_ids()) == (1, [], [1, 2, 3])
    second = store.prune_archive(3600, now[0] + 7200)
    assert (second.jobs, second.failures, store.archived_ids()) == (3, [], [])
    assert list(store.kv.range_prefix(store.keys.archive_time)) == []


def test_archiving_never_replaces_an_archived_job(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_etcd_store(etcd_member.endpoints, unique_prefix())
    create(store, make_job(2, Status.SUCCESS))
    store.archive_jobs([2])
    archived = store.kv.get(store.keys.archived(2))
    create(store, make_job(2, Status.ERROR), make_job(3, Status.SUCCESS))  # an id seen again
    assert store.archive_jobs([2, 3]) == ([3], None)
    assert store.kv.get(store.keys.archived(2)) == archived
    assert [job.id for job in store.load_jobs()] == [2]  # it stays live
    assert "Job 2 stays live" in caplog.text


def test_a_lost_serial_continues_above_the_archive(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    prefix = unique_prefix()
    store = open_etcd_store(etcd_member.endpoints, prefix)
    create(store, make_job(2, Status.SUCCESS), make_job(20_001, Status.SUCCESS))
    store.archive_jobs([2, 20_001])
    store.kv.txn(fence=None, deletes=[store.keys.serial])
    reopened = open_etcd_store(etcd_member.endpoints, prefix)
    assert list(reopened.load_jobs()) == []
    assert reopened.allocate_ids(2) == [20_002, 20_003]


def test_the_cleaner_prunes_the_etcd_archive_when_the_daemon_is_down(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    month_ago = time.time() - 30 * 86400
    store = open_etcd_store(etcd_member.endpoints, prefix, clock=lambda: month_ago)
    create(store, make_job(1, Status.SUCCESS), make_job(2, Status.SUCCESS))
    store.archive_jobs([1, 2])
    state = tmp_path / "state"
    state.mkdir()
    argv = ["--state-dir", str(state), "--store", "etcd", "--etcd-prefix", prefix]
    argv += ["--etcd-endpoints", ",".join(etcd_member.endpoints), "--archive-age", "21d"]
    assert cleaner.main(argv) == 0
    assert store.archived_ids() == []
    assert "pruned 2 archived jobs" in (state / "log" / cleaner.LOG_NAME).read_text()

    create(store, make_job(3, Status.SUCCESS))
    store.archive_jobs([3])
    store.write_setting(WATCHER_PAUSE, format_pause(time.time() + 3600))
    assert cleaner.main(argv) == 0
    assert store.archived_ids() == [3]  # paused, as read from etcd
    assert "did nothing" in (state / "log" / cleaner.LOG_NAME).read_text()


# -- set-up ------------------------------------------------------------------------


def test_a_corrupt_job_is_set_aside_at_load(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    prefix = unique_prefix()
    store = open_etcd_store(etcd_member.endpoints, prefix)
    create(store, make_job(3))
    store.kv.txn(fence=None, puts={store.keys.job(4): b'{"id": 4, "ops": ['})
    store.kv.txn(fence=None, puts={store.keys.job(5): encode_job(make_job(6))})
    assert store.leadership("master").acquire(0)
    standby = open_etcd_store(etcd_member.endpoints, prefix)
    assert not standby.leadership("standby").acquire(0)
    assert [job.id for job in standby.load_jobs()] == [3]  # a standby only reads
    assert store.kv.get(store.keys.job(4)) is not None
    assert [job.id for job in store.load_jobs()] == [3]
    assert store.kv.get(store.keys.job(4)) is None
    corrupt = store.kv.get(store.keys.set_aside(store.keys.job(4)))
    assert corrupt is not None and corrupt.value == b'{"id": 4, "ops": ['
    assert store.allocate_ids(1)[0] > 3


def test_an_unknown_layout_version_is_refused(
    etcd_member: EtcdCluster, open_etcd_store: OpenStore
) -> None:
    prefix = unique_prefix()
    store = open_etcd_store(etcd_member.endpoints, prefix)
    assert store.kv.get(store.keys.version) is not None
    store.kv.txn(fence=None, puts={store.keys.version: b"7"})
    with pytest.raises(JobQueueError, match=r"version b'7'.*not supported"):
        open_etcd_store(etcd_member.endpoints, prefix, owner=False)
    maintenance = open_etcd_store(etcd_member.endpoints, unique_prefix(), owner=False)
    assert maintenance.kv.get(maintenance.keys.version) is None  # creates nothing
    with pytest.raises(JobQueueError):
        maintenance.allocate_ids(1)


def test_options_give_settings(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_etcd_arguments(parser)
    assert parser.parse_args([]).store == "file"
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    args = parser.parse_args(
        [
            "--store=etcd",
            "--etcd-endpoints=https://a:2379, https://b:2379/",
            "--etcd-prefix=/jobqueue/prod/",
            "--etcd-ca=/ca.pem",
            "--etcd-cert=/c.pem",
            "--etcd-key=/c.key",
            "--etcd-user=jq",
            f"--etcd-password-file={password}",
            "--etcd-lease-ttl=7",
            "--etcd-timeout=2.5",
        ]
    )
    assert args.store == STORE_ETCD
    settings = EtcdStoreSettings.from_args(args)
    assert settings.connection.endpoints == ("https://a:2379", "https://b:2379")
    assert settings.connection.password == "s3cret" and settings.connection.user == "jq"
    assert (settings.connection.ca_file, settings.connection.timeout) == ("/ca.pem", 2.5)
    assert (settings.prefix, settings.lease_ttl) == ("/jobqueue/prod/", 7)
    for wrong, message in (
        ([], "needs --etcd-endpoints"),
        (["--etcd-endpoints=http://a:1", "--etcd-user=jq"], "go together"),
        (["--etcd-endpoints=http://a:1", "--etcd-prefix=jobs"], "absolute path"),
        (["--etcd-endpoints=http://a:1", "--etcd-lease-ttl=1"], "at least 2"),
        (["--etcd-endpoints=a:1"], "http"),
        (["--etcd-endpoints=http://a:1", f"--etcd-password-file={tmp_path}/no"], "cannot read"),
    ):
        with pytest.raises(ValueError, match=message):
            EtcdStoreSettings.from_args(parser.parse_args(["--store=etcd", *wrong]))
