"""Storage: the contract every store passes (file, memory and etcd), and what is the same
for every store: a lost leader's fencing, the text of a pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobqueue.constants import Status
from jobqueue.errors import JobQueueError, NotLeaderError
from jobqueue.storage.base import WATCHER_PAUSE, JobStore, format_pause, pause_until
from jobqueue.storage.files import FileJobStore
from jobqueue.storage.memory import MemoryBacking, MemoryJobStore
from tests.etcd_cluster import unique_prefix
from tests.polling import poll_until
from tests.store_samples import RULE_UUIDS, create, make_job


class Stores:
    """Handles on one queue, as separate processes would open it.

    ``open()`` is a new owner after the previous one stopped (a restart);
    ``other()`` a second handle that reads while the owner writes.
    """

    def __init__(self, owner: Callable[[], JobStore], other: Callable[[], JobStore]) -> None:
        self.open = owner
        self.other = other


@pytest.fixture(params=["file", "memory", "etcd"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    if request.param == "file":
        queue = str(tmp_path / "queue")
        return Stores(lambda: FileJobStore(queue), lambda: FileJobStore(queue, owner=False))
    if request.param == "etcd":  # a real 1-member cluster; skipped without an etcd server
        endpoints = request.getfixturevalue("etcd_member").endpoints
        open_store = request.getfixturevalue("open_etcd_store")
        prefix, output = unique_prefix(), str(tmp_path / "output")  # output: on this host
        return Stores(
            lambda: open_store(endpoints, prefix, output_dir=output),
            lambda: open_store(endpoints, prefix, owner=False, output_dir=output),
        )
    backing = MemoryBacking()
    return Stores(lambda: MemoryJobStore(backing), lambda: MemoryJobStore(backing))


@pytest.fixture
def store(stores: Stores) -> JobStore:
    return stores.open()


class TestStoreContract:
    """Every JobStore implementation must pass these."""

    def test_one_leader_at_a_time(self, stores: Stores) -> None:
        first, second = stores.open(), stores.other()
        leading = first.leadership("first")
        assert leading.acquire(0)
        assert leading.holder() is not None
        waiting = second.leadership("second")
        assert not waiting.acquire(0)
        assert not waiting.acquire(0.3)
        assert waiting.holder() == leading.holder()
        create(first, make_job(first.allocate_ids(1)[0]))  # the leader writes
        leading.release()
        assert waiting.acquire(5)
        assert not leading.lost.is_set()  # released, not lost
        waiting.release()

    def test_ids_are_unique_and_increasing(self, store: JobStore) -> None:
        first = store.allocate_ids(3)
        second = store.allocate_ids(1)
        assert first == sorted(first) and len(set(first + second)) == 4
        assert second[0] > first[-1]

    def test_a_clean_stop_keeps_ids_dense(self, stores: Stores) -> None:
        first = stores.open()
        (last,) = first.allocate_ids(1)
        first.release_unused_ids()
        with pytest.raises(JobQueueError):
            first.allocate_ids(1)
        assert stores.open().allocate_ids(1) == [last + 1]

    def test_create_read_round_trip(self, store: JobStore) -> None:
        (job_id,) = store.allocate_ids(1)
        job = make_job(job_id)
        job.add_log(0, "message", "hi", [5, 6])
        create(store, job)
        restored = store.read_job(job_id)
        assert restored is not None and restored.to_dict() == job.to_dict()
        assert restored.log_serial == 1

    def test_read_missing_is_none(self, store: JobStore) -> None:
        assert store.read_job(12345) is None

    def test_replace_and_load(self, stores: Stores) -> None:
        store = stores.open()
        ids = store.allocate_ids(3)
        create(store, *(make_job(i) for i in ids))
        store.replace_job(make_job(ids[1], Status.ERROR))
        loaded = {job.id: job.status for job in stores.open().load_jobs()}
        assert loaded == {ids[0]: Status.QUEUED, ids[1]: Status.ERROR, ids[2]: Status.QUEUED}

    def test_a_start_is_the_newest_version_until_the_next_replace(self, stores: Stores) -> None:
        store = stores.open()
        list(store.load_jobs())
        first, second = store.allocate_ids(2)
        create(store, make_job(first), make_job(second))
        store.record_start(make_job(first, Status.RUNNING))
        store.record_start(make_job(second, Status.RUNNING))
        store.replace_job(make_job(second, Status.SUCCESS))
        assert store.read_job(first) == make_job(first, Status.RUNNING)
        assert stores.other().read_job(first) == make_job(first, Status.RUNNING)
        loaded = {job.id: job.status for job in stores.open().load_jobs()}
        assert loaded == {first: Status.RUNNING, second: Status.SUCCESS}

    def test_a_loaded_id_is_never_allocated_again(self, stores: Stores) -> None:
        store = stores.open()
        (job_id,) = store.allocate_ids(1)
        create(store, make_job(job_id + 500))
        reopened = stores.open()
        list(reopened.load_jobs())
        assert reopened.allocate_ids(1)[0] > job_id + 500

    def test_discard(self, store: JobStore) -> None:
        ids = store.allocate_ids(2)
        create(store, *(make_job(i) for i in ids))
        assert store.discard_jobs([ids[0]]) == ([ids[0]], None)
        assert store.read_job(ids[0]) is None
        assert [job.id for job in store.load_jobs()] == [ids[1]]

    def test_archive_moves_and_lookup_still_works(self, store: JobStore) -> None:
        ids = store.allocate_ids(2)
        create(store, *(make_job(i, Status.SUCCESS) for i in ids))
        assert store.archive_jobs([*ids, 999]) == (ids, None)
        assert list(store.load_jobs()) == [] and store.archived_ids() == ids
        assert store.is_archived(ids[0]) and not store.is_archived(999)
        archived = store.read_job(ids[0])
        assert archived is not None and archived.status == Status.SUCCESS
        assert store.archive_jobs([ids[0]]) == ([], None)  # no longer live

    def test_many_jobs_read_at_once_in_order(self, store: JobStore) -> None:
        ids = store.allocate_ids(70)  # more than one etcd request's worth
        create(store, *(make_job(i, Status.SUCCESS) for i in ids))
        assert store.archive_jobs(ids[10:20]) == (ids[10:20], None)
        asked = [ids[5], 999_999, *ids[8:70], ids[5]]
        found = store.read_jobs(asked)
        assert [None if job is None else job.id for job in found] == [
            ids[5],
            None,
            *ids[8:70],
            ids[5],
        ]
        assert store.read_jobs([]) == []

    def test_prune_deletes_only_old_archived_jobs(self, store: JobStore) -> None:
        ids = store.allocate_ids(3)
        create(store, *(make_job(i, Status.SUCCESS) for i in ids))
        archived_at = time.time()
        store.archive_jobs(ids[:2])
        kept = store.prune_archive(3600, archived_at + 60)
        assert kept.jobs == 0 and kept.failures == [] and not kept.unfinished
        assert store.archived_ids() == ids[:2]
        pruned = store.prune_archive(3600, archived_at + 7200)
        assert pruned.jobs == 2 and pruned.failures == []
        assert store.archived_ids() == [] and store.read_job(ids[0]) is None
        assert store.read_job(ids[2]) is not None  # live jobs are never pruned

    def test_output_streams_grow_and_read_by_range(self, stores: Stores) -> None:
        store, reader = stores.open(), stores.other()
        (job_id,) = store.allocate_ids(1)
        create(store, make_job(job_id, Status.RUNNING))
        assert store.output_sizes(job_id) == {}
        stdout = store.open_output(job_id, 0, "stdout")
        stdout.append(b"hello ")
        assert reader.read_output(job_id, 0, "stdout", 0, 100) == b"hello "  # before close
        stdout.append(b"world\n\x00\xff")
        stderr = store.open_output(job_id, 1, "stderr")
        stderr.append(b"oops")
        stdout.close()
        stderr.close()
        stdout.close()  # idempotent
        assert reader.output_sizes(job_id) == {(0, "stdout"): 14, (1, "stderr"): 4}
        assert reader.read_output(job_id, 0, "stdout", 6, 5) == b"world"
        assert reader.read_output(job_id, 0, "stdout", 12, 100) == b"\x00\xff"
        assert reader.read_output(job_id, 0, "stdout", 14, 100) == b""
        assert reader.read_output(job_id, 0, "stdout", 99, 100) == b""
        assert reader.read_output(job_id, 0, "stderr", 0, 100) == b""  # no such stream
        assert reader.read_output(job_id + 1, 0, "stdout", 0, 100) == b""
        with pytest.raises(ValueError):
            store.open_output(job_id, 0, "stdin")

    def test_reopened_output_appends(self, store: JobStore) -> None:
        (job_id,) = store.allocate_ids(1)
        create(store, make_job(job_id, Status.RUNNING))
        for part in (b"one ", b"two"):
            stream = store.open_output(job_id, 0, "stderr")
            stream.append(part)
            stream.close()
        assert store.read_output(job_id, 0, "stderr", 0, 100) == b"one two"

    def test_output_is_archived_and_pruned_with_its_job(self, store: JobStore) -> None:
        ids = store.allocate_ids(2)
        create(store, *(make_job(i, Status.SUCCESS) for i in ids))
        for job_id in ids:
            stream = store.open_output(job_id, 0, "stdout")
            stream.append(b"output of %d" % job_id)
            stream.close()
        archived_at = time.time()
        assert store.archive_jobs([ids[0]]) == ([ids[0]], None)
        assert store.read_output(ids[0], 0, "stdout", 0, 100) == b"output of %d" % ids[0]
        assert store.output_sizes(ids[0]) == {(0, "stdout"): len(b"output of %d" % ids[0])}
        assert store.prune_archive(3600, archived_at + 7200).jobs == 1
        assert store.output_sizes(ids[0]) == {}
        assert store.read_output(ids[0], 0, "stdout", 0, 100) == b""
        assert store.read_output(ids[1], 0, "stdout", 0, 100) != b""  # live: kept

    def test_discarded_jobs_take_their_output(self, store: JobStore) -> None:
        (job_id,) = store.allocate_ids(1)
        create(store, make_job(job_id))
        stream = store.open_output(job_id, 0, "stdout")
        stream.append(b"x")
        stream.close()
        assert store.discard_jobs([job_id]) == ([job_id], None)
        assert store.output_sizes(job_id) == {}

    def test_drain_flag(self, store: JobStore) -> None:
        assert not store.is_drained()
        store.set_drained(True)
        assert store.is_drained()
        store.set_drained(False)
        store.set_drained(False)
        assert not store.is_drained()

    def test_named_settings(self, stores: Stores) -> None:
        owner = stores.open()
        assert owner.read_setting(WATCHER_PAUSE) is None
        owner.write_setting(WATCHER_PAUSE, "1700000000")
        assert owner.read_setting(WATCHER_PAUSE) == "1700000000"
        assert stores.other().read_setting(WATCHER_PAUSE) == "1700000000"
        owner.write_setting(WATCHER_PAUSE, "1800000000.5")
        assert owner.read_setting(WATCHER_PAUSE) == "1800000000.5"
        owner.write_setting(WATCHER_PAUSE, None)
        owner.write_setting(WATCHER_PAUSE, None)
        assert owner.read_setting(WATCHER_PAUSE) is None
        assert stores.other().read_setting(WATCHER_PAUSE) is None

    def test_settings_are_named_and_one_line(self, store: JobStore) -> None:
        with pytest.raises(ValueError, match="Unknown store setting"):
            store.read_setting("serial")
        with pytest.raises(ValueError, match="Unknown store setting"):
            store.write_setting("job-1", "x")
        with pytest.raises(ValueError, match="one line"):
            store.write_setting(WATCHER_PAUSE, "1\n2")
        assert store.read_setting(WATCHER_PAUSE) is None

    def test_a_setting_is_no_job(self, stores: Stores) -> None:
        owner = stores.open()
        create(owner, make_job(1))
        owner.write_setting(WATCHER_PAUSE, "5")
        assert [job.id for job in stores.open().load_jobs()] == [1]
        assert stores.open().read_setting(WATCHER_PAUSE) == "5"  # kept across a restart

    def test_filter_rules_are_kept_whole_by_uuid(self, stores: Stores) -> None:
        store = stores.open()
        assert store.load_filters() == []
        first = {"uuid": RULE_UUIDS[0], "priority": 1, "predicates": [], "action": "PAUSE"}
        second = {"uuid": RULE_UUIDS[1], "priority": 0, "action": ["RATE_LIMIT", 3]}
        store.replace_filter(first)
        store.replace_filter(second)
        store.replace_filter({**first, "priority": 5})  # replaced, not added
        by_uuid = {rule["uuid"]: rule for rule in stores.open().load_filters()}
        assert by_uuid == {RULE_UUIDS[0]: {**first, "priority": 5}, RULE_UUIDS[1]: second}
        assert store.delete_filter(RULE_UUIDS[0])
        assert not store.delete_filter(RULE_UUIDS[0])
        assert [rule["uuid"] for rule in stores.open().load_filters()] == [RULE_UUIDS[1]]

    def test_change_feed_reports_another_handle_s_writes(self, stores: Stores) -> None:
        owner = stores.open()
        feed = stores.other().change_feed()
        seen: list[int | None] = []
        changed = threading.Condition()

        def on_change(job_id: int | None) -> None:
            with changed:
                seen.append(job_id)
                changed.notify_all()

        def saw(*wanted: int) -> bool:
            with changed:
                return set(wanted) <= set(seen)

        feed.start(on_change)
        try:
            ids = owner.allocate_ids(3)
            create(owner, make_job(ids[0]), make_job(ids[1], Status.SUCCESS), make_job(ids[2]))
            assert poll_until(lambda: saw(*ids), 10)
            owner.replace_job(make_job(ids[2], Status.CANCELED))
            owner.archive_jobs([ids[1]])
            assert poll_until(lambda: seen.count(ids[2]) >= 2 and seen.count(ids[1]) >= 2, 10)
            owner.record_start(make_job(ids[0], Status.RUNNING))  # in place in the file store
            assert poll_until(lambda: seen.count(ids[0]) >= 2, 10)
        finally:
            feed.stop()
        feed.stop()  # idempotent


def test_a_leader_that_lost_its_lease_never_writes_again() -> None:
    """Fencing, as with an expired etcd lease: the old leader's writes change nothing."""
    backing = MemoryBacking()
    old, new = MemoryJobStore(backing), MemoryJobStore(backing)
    old_lead = old.leadership("old")
    assert old_lead.acquire(0)
    (job_id,) = old.allocate_ids(1)
    create(old, make_job(job_id))
    old_lead.expire()
    assert old_lead.lost.is_set()
    assert new.leadership("new").acquire(0)
    changed = make_job(job_id, Status.SUCCESS)
    with pytest.raises(NotLeaderError):
        old.replace_job(changed)
    assert isinstance(old.create_jobs([make_job(job_id + 1)])[0], NotLeaderError)
    assert old.archive_jobs([job_id])[1] is not None
    with pytest.raises(NotLeaderError):
        old.allocate_ids(1)
    stored = new.read_job(job_id)
    assert stored is not None and stored.status == Status.QUEUED
    assert new.read_job(job_id + 1) is None
    new.replace_job(changed)  # the new leader writes


def test_pause_text() -> None:
    assert format_pause(1700000000.0) == "1700000000"
    assert format_pause(1700000000.25) == "1700000000.25"
    assert pause_until("1700000000", now=1600000000) == 1700000000.0
    assert pause_until("1700000000", now=1700000000) is None  # over
    assert pause_until(None, now=0) is None
    assert pause_until("soon", now=0) is None
    assert pause_until("inf", now=0) is None
