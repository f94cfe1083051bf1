"""Storage: one contract for every store, then what only files can show."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.errors import JobQueueError, NotLeaderError, StorageError
from jobqueue.model import Job
from jobqueue.queuelock import QueueLock
from jobqueue.storage.base import WATCHER_PAUSE, JobStore, format_pause, pause_until
from jobqueue.storage.files import Disk, FileJobStore
from jobqueue.storage.memory import MemoryBacking, MemoryJobStore
from tests.etcd_cluster import unique_prefix
from tests.polling import poll_until


def make_job(job_id: int, status: Status = Status.QUEUED) -> Job:
    job = Job.new(job_id, [{"OP_ID": "OP_TEST_DELAY", "duration": 1}], [1000 + job_id, 0])
    if status != Status.QUEUED:
        job.ops[0].status = status
        job.end_timestamp = [2000, 0] if status in constants.FINALIZED else None
    return job


RULE_UUIDS = ("0b8d1c7e-4f31-4a62-9d0e-5a2f7c9b1e44", "8c2f9a10-33b5-4c1d-8e7f-60a1b2c3d4e5")


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


def create(store: JobStore, *jobs: Job) -> None:
    assert store.create_jobs(jobs) == [None] * len(jobs)


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
            create(owner, make_job(ids[0]), make_job(ids[1], Status.SUCCESS))
            assert poll_until(lambda: saw(ids[0], ids[1]), 10)
            owner.replace_job(make_job(ids[2]))
            owner.archive_jobs([ids[1]])
            assert poll_until(lambda: saw(ids[2]) and seen.count(ids[1]) >= 2, 10)
        finally:
            feed.stop()
        feed.stop()  # idempotent


def queue_files(queue: Path) -> list[str]:
    return sorted(p.name for p in queue.iterdir())


def test_ids_never_reissued_across_a_crash(tmp_path: Path) -> None:
    queue = str(tmp_path / "queue")
    seen: list[int] = []
    for _ in range(5):  # each new store on the same directory is a restart after a crash
        store = FileJobStore(queue, id_block=3)
        for count in (1, 2, 4):
            seen.extend(store.allocate_ids(count))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_serial_is_durable_before_ids_are_returned(tmp_path: Path) -> None:
    store = FileJobStore(str(tmp_path / "q"), id_block=10)
    ids = store.allocate_ids(25)
    assert int((tmp_path / "q" / "serial").read_text()) >= ids[-1]


def test_serial_behind_the_jobs_is_corrected_on_load(tmp_path: Path) -> None:
    store = FileJobStore(str(tmp_path / "q"))
    create(store, make_job(500))
    (tmp_path / "q" / "serial").write_text("3\n")
    store = FileJobStore(str(tmp_path / "q"))
    list(store.load_jobs())
    assert store.allocate_ids(1)[0] > 500


class FailingDisk(Disk):
    """Writes part of the data, then fails like a full disk."""

    def __init__(self, fail_on: str, err: int = errno.ENOSPC) -> None:
        self.fail_on = fail_on
        self.err = err

    def write(self, fd: int, data: bytes) -> int:
        if self.fail_on == "write":
            os.write(fd, data[: len(data) // 2])
            raise OSError(self.err, os.strerror(self.err))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.fail_on == "fsync":
            raise OSError(self.err, os.strerror(self.err))
        super().fsync(fd)


@pytest.mark.parametrize("fail_on", ["write", "fsync"])
def test_failed_write_keeps_old_version_and_leaves_no_temp(tmp_path: Path, fail_on: str) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    job = make_job(store.allocate_ids(1)[0])
    create(store, job)
    before = (queue / f"job-{job.id}").read_bytes()
    failing = FileJobStore(str(queue), disk=FailingDisk(fail_on))
    job.ops[0].status = Status.SUCCESS
    with pytest.raises(StorageError) as info:
        failing.replace_job(job)
    assert "No space left" in str(info.value)
    assert (queue / f"job-{job.id}").read_bytes() == before
    assert not [n for n in queue_files(queue) if n.endswith(".tmp")]


def test_failed_batch_reports_per_job(tmp_path: Path) -> None:
    class FailJobTwo(Disk):
        """Fails the rename that would put job 2 in place (batches write in parallel)."""

        def replace(self, src: str, dst: str) -> None:
            if dst.endswith("/job-2"):
                raise OSError(errno.EIO, "I/O error")
            super().replace(src, dst)

    FileJobStore(str(tmp_path / "q")).allocate_ids(3)
    store = FileJobStore(str(tmp_path / "q"), disk=FailJobTwo())
    results = store.create_jobs([make_job(1), make_job(2), make_job(3)])
    assert [r is None for r in results] == [True, False, True]
    assert sorted(job.id for job in store.load_jobs()) == [1, 3]
    assert not (tmp_path / "q" / "job-2").exists()
    assert not [n for n in queue_files(tmp_path / "q") if n.endswith(".tmp")]


def test_a_batch_larger_than_the_writer_threads_reports_each_job_in_order(
    tmp_path: Path,
) -> None:
    class FailJobTwentyThree(Disk):
        def replace(self, src: str, dst: str) -> None:
            if dst.endswith("/job-23"):
                raise OSError(errno.EIO, "I/O error")
            super().replace(src, dst)

    FileJobStore(str(tmp_path / "q")).allocate_ids(40)
    store = FileJobStore(str(tmp_path / "q"), disk=FailJobTwentyThree())
    results = store.create_jobs([make_job(i) for i in range(1, 41)])
    assert [i for i, r in enumerate(results, 1) if r is not None] == [23]
    assert sorted(job.id for job in store.load_jobs()) == [i for i in range(1, 41) if i != 23]


def test_temp_files_cleaned_at_start(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    (queue / ".job-3.123.0.tmp").write_text("{half")
    store = FileJobStore(str(queue))
    assert ".job-3.123.0.tmp" in queue_files(queue)  # not before it owns the queue
    list(store.load_jobs())
    assert ".job-3.123.0.tmp" not in queue_files(queue)


def test_archive_layout(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, *(make_job(i, Status.SUCCESS) for i in (5, 9999, 10000, 123456)))
    store.archive_jobs([5, 9999, 10000, 123456])
    assert (queue / "archive" / "0" / "job-5").is_file()
    assert (queue / "archive" / "0" / "job-9999").is_file()
    assert (queue / "archive" / "1" / "job-10000").is_file()
    assert (queue / "archive" / "12" / "job-123456").is_file()
    assert not list(queue.glob("job-*"))


@pytest.mark.parametrize(
    "content", [b"", b'{"id": 4, "ops": [', b"\xff\xfe", b"[1, 2]", b'{"id": 99, "ops": []}']
)
def test_corrupt_files_moved_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, make_job(3), make_job(5))
    (queue / "job-4").write_bytes(content)
    store = FileJobStore(str(queue))
    assert sorted(job.id for job in store.load_jobs()) == [3, 5]
    assert (queue / "corrupt" / "job-4").read_bytes() == content
    assert "job-4" in caplog.text and "corrupt" in caplog.text


def test_file_holding_another_id_is_corrupt(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, make_job(3))
    os.rename(queue / "job-3", queue / "job-8")
    assert list(FileJobStore(str(queue)).load_jobs()) == []
    assert (queue / "corrupt" / "job-8").exists()


def test_foreign_files_ignored(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    (queue / "README").write_text("hello")
    (queue / "job-abc").write_text("x")
    assert list(FileJobStore(str(queue)).load_jobs()) == []
    assert (queue / "README").exists()


def test_job_files_are_private(tmp_path: Path) -> None:
    store = FileJobStore(str(tmp_path / "q"))
    create(store, make_job(1))
    assert stat.S_IMODE(os.stat(tmp_path / "q" / "job-1").st_mode) == 0o600


def test_unknown_version_refused(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    assert (queue / "version").read_text() == "2\n"
    (queue / "version").write_text("7\n")
    with pytest.raises(JobQueueError, match=r"version '7'.*not supported"):
        FileJobStore(str(queue))


@pytest.fixture
def lock_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "lock")


def test_lock_refuses_second_owner_naming_the_pid(lock_path: str) -> None:
    first = QueueLock(lock_path)
    first.acquire()
    with pytest.raises(JobQueueError, match=rf"pid {os.getpid()}"):
        QueueLock(lock_path).acquire()
    first.release()
    second = QueueLock(lock_path)
    second.acquire()  # free again after release
    second.release()
    second.release()


def _touch(path: Path, age: float, content: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_prune_keeps_the_directories_archiving_may_use_next(tmp_path: Path) -> None:
    """archive/0: an old and a recent job; 1: only an old job; 2: empty; 3: an old
    non-job file; 4 and 5: old jobs, but 5 holds the newest id handed out (serial
    50123) and 4 the one before, so both stay; 7: an old job, and the live job
    70001 archives there next, so it stays too."""
    queue = tmp_path / "queue"
    archive = queue / "archive"
    day = 86400
    _touch(archive / "0" / "job-1", 30 * day)
    _touch(archive / "0" / "job-2", 3 * day)
    _touch(archive / "1" / "job-10001", 22 * day)
    (archive / "2").mkdir(parents=True)
    _touch(archive / "3" / "notes", 40 * day)
    for name in ("4/job-40000", "5/job-50000", "7/job-70000"):
        _touch(archive / name, 25 * day)
    _touch(queue / "job-70001", 0)
    _touch(queue / "serial", 0, "50123\n")
    result = FileJobStore(str(queue), owner=False).prune_archive(21 * day, time.time())
    assert (result.jobs, result.directories, result.failures) == (5, 2, [])
    left = sorted(str(p.relative_to(archive)) for p in archive.rglob("*"))
    assert left == ["0", "0/job-2", "3", "3/notes", "4", "5", "7"]


def test_prune_stops_when_its_time_is_up(tmp_path: Path) -> None:
    store = FileJobStore(str(tmp_path / "queue"))
    create(store, *(make_job(i, Status.SUCCESS) for i in (1, 10001)))
    store.archive_jobs([1, 10001])
    result = store.prune_archive(0, time.time() + 60, budget=0)
    assert result.unfinished and result.jobs == 0
    assert store.prune_archive(0, time.time() + 60).jobs == 2


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


def test_a_second_daemon_s_file_leadership_names_the_first(tmp_path: Path) -> None:
    queue = str(tmp_path / "queue")
    first = FileJobStore(queue).leadership("a")
    assert first.acquire(0)
    second = FileJobStore(queue, owner=False).leadership("b")
    assert not second.acquire(0)
    assert second.holder() == f"pid {os.getpid()}"
    first.release()
    assert second.acquire(0)
    second.release()


def test_maintenance_handle_changes_nothing_it_does_not_have_to(tmp_path: Path) -> None:
    with pytest.raises(JobQueueError, match="no such directory"):
        FileJobStore(str(tmp_path / "missing"), owner=False)
    assert not (tmp_path / "missing").exists()
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    (queue / ".job-3.123.0.tmp").write_text("{half")  # the owner's write in progress
    handle = FileJobStore(str(queue), owner=False)
    assert (queue / ".job-3.123.0.tmp").exists()
    with pytest.raises(JobQueueError):
        handle.allocate_ids(1)


def test_a_clean_stop_writes_back_the_serial(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue), id_block=1000)
    assert store.allocate_ids(3) == [1, 2, 3]
    assert int((queue / "serial").read_text()) >= 1003
    store.release_unused_ids()
    assert (queue / "serial").read_text() == "3\n"


def test_pause_text() -> None:
    assert format_pause(1700000000.0) == "1700000000"
    assert format_pause(1700000000.25) == "1700000000.25"
    assert pause_until("1700000000", now=1600000000) == 1700000000.0
    assert pause_until("1700000000", now=1700000000) is None  # over
    assert pause_until(None, now=0) is None
    assert pause_until("soon", now=0) is None
    assert pause_until("inf", now=0) is None


class FailingDirSync(Disk):
    def fsync_dir(self, path: str) -> None:
        raise OSError(errno.EIO, "I/O error")


def test_a_setting_whose_removal_fails_stays(tmp_path: Path) -> None:
    queue = str(tmp_path / "queue")
    FileJobStore(queue).write_setting(WATCHER_PAUSE, "42")
    store = FileJobStore(queue, disk=FailingDirSync())
    with pytest.raises(StorageError, match="Cannot remove"):
        store.write_setting(WATCHER_PAUSE, None)
    assert store.read_setting(WATCHER_PAUSE) == "42"


# -- hand-damaged and hostile queue directories (issue 14, items 5 and 6) ------------------


def _archived_queue(tmp_path: Path, *job_ids: int) -> Path:
    """A queue whose only jobs are ``job_ids``, all archived."""
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, *(make_job(job_id, Status.SUCCESS) for job_id in job_ids))
    assert store.archive_jobs(job_ids) == (sorted(job_ids), None)
    return queue


def test_a_lost_serial_continues_above_the_archive(tmp_path: Path) -> None:
    queue = _archived_queue(tmp_path, 2, 20_001)
    (queue / "archive" / "5").mkdir()  # a higher sub-directory that pruning emptied
    (queue / "serial").unlink(missing_ok=True)
    store = FileJobStore(str(queue))
    assert list(store.load_jobs()) == []
    assert store.allocate_ids(2) == [20_002, 20_003]


def test_the_archive_is_not_read_whole_for_the_serial(tmp_path: Path) -> None:
    """Only the highest sub-directory holding a job is listed (a lower one may be huge)."""
    queue = _archived_queue(tmp_path, 7, 10_003)
    (queue / "serial").unlink(missing_ok=True)
    listed: list[str] = []
    real_listdir = os.listdir

    def listdir(path: str) -> list[str]:
        listed.append(os.path.relpath(path, queue))
        return real_listdir(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "listdir", listdir)
        store = FileJobStore(str(queue))
        assert list(store.load_jobs()) == []
    assert store.allocate_ids(1) == [10_004]
    assert os.path.join("archive", "0") not in listed


def test_archiving_never_replaces_an_archived_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = _archived_queue(tmp_path, 2)
    archived = (queue / "archive" / "0" / "job-2").read_bytes()
    store = FileJobStore(str(queue))
    create(store, make_job(2, Status.ERROR), make_job(3, Status.SUCCESS))  # an id seen again
    assert store.archive_jobs([2, 3]) == ([3], None)
    assert (queue / "archive" / "0" / "job-2").read_bytes() == archived
    assert sorted(job.id for job in store.load_jobs()) == [2]  # it stays live
    assert "Job 2 stays live" in caplog.text


def test_archiving_without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link-then-unlink fallback keeps the same promise."""
    from jobqueue import safeio

    monkeypatch.setattr(safeio, "_renameat2", lambda: None)
    queue = _archived_queue(tmp_path, 2, 4)
    archived = (queue / "archive" / "0" / "job-2").read_bytes()
    store = FileJobStore(str(queue))
    create(store, make_job(2, Status.ERROR))
    assert store.archive_jobs([2]) == ([], None)
    assert (queue / "archive" / "0" / "job-2").read_bytes() == archived
    assert os.stat(queue / "archive" / "0" / "job-4").st_nlink == 1


def test_an_archiving_cut_between_link_and_unlink_is_completed(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, make_job(3, Status.SUCCESS), make_job(4, Status.SUCCESS))
    (queue / "archive" / "0").mkdir()
    os.link(queue / "job-3", queue / "archive" / "0" / "job-3")  # then the crash
    store = FileJobStore(str(queue))
    assert [job.id for job in store.load_jobs()] == [4]
    assert not (queue / "job-3").exists()
    assert store.is_archived(3) and store.read_job(3) == make_job(3, Status.SUCCESS)
    os.link(queue / "job-4", queue / "archive" / "0" / "job-4")
    assert store.archive_jobs([4]) == ([4], None)  # the same, found while archiving
    assert not (queue / "job-4").exists()


GOOD_JOB = Job.new(1, [{"OP_ID": "OP_TEST_DELAY", "duration": 0}], [1, 0]).to_dict()


def _job_text(job_id: object) -> bytes:
    """A well-formed job whose id is ``job_id`` (any JSON value, spelled as given)."""
    text = json.dumps({**GOOD_JOB, "id": "ID"})
    return text.replace('"ID"', str(job_id)).encode()


def _plant_fifo(path: Path) -> None:
    os.mkfifo(path)


def _plant_link_to_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _plant_directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("x")


@pytest.mark.parametrize(
    ("name", "plant", "reason"),
    [
        ("job-1", lambda path: path.write_bytes(_job_text("1e999")), "not inf"),
        ("job-2", lambda path: path.write_bytes(_job_text("2.7")), "not 2.7"),
        ("job-1", lambda path: path.write_bytes(_job_text("true")), "not True"),
        ("job-7", lambda path: path.write_bytes(_job_text('"007"')), "leading zeros"),
        ("job-7", lambda path: path.write_bytes(_job_text("-7")), "positive"),
        ("job-002", lambda path: path.write_bytes(_job_text("2")), "not a job file name"),
        ("job-0", lambda path: path.write_bytes(_job_text("0")), "not a job file name"),
        ("job-9", _plant_fifo, "not a regular file but a FIFO"),
        ("job-8", _plant_link_to_zero, "not a regular file but a symbolic link"),
        ("job-6", _plant_directory, "not a regular file but a directory"),
    ],
)
def test_damaged_job_files_go_to_corrupt(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    plant: Callable[[Path], None],
    reason: str,
) -> None:
    queue = tmp_path / "queue"
    create(FileJobStore(str(queue)), make_job(5))
    plant(queue / name)
    loader = threading.Thread(target=lambda: loaded.extend(FileJobStore(str(queue)).load_jobs()))
    loaded: list[Job] = []
    loader.start()
    loader.join(10)
    assert not loader.is_alive(), "loading hangs"
    assert [job.id for job in loaded] == [5]
    assert not os.path.lexists(queue / name)
    assert os.path.lexists(queue / "corrupt" / name)
    assert f"Job file {name} is corrupt" in caplog.text and reason in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_job_file_of_another_user_goes_to_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = tmp_path / "queue"
    create(FileJobStore(str(queue)), make_job(5), make_job(6))
    os.chown(queue / "job-6", 65534, 65534)
    assert [job.id for job in FileJobStore(str(queue)).load_jobs()] == [5]
    assert (queue / "corrupt" / "job-6").exists()
    assert "owned by uid 65534" in caplog.text


def test_a_name_taken_in_corrupt_is_kept(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    for content in (b"first", b"second", b"third"):
        (queue / "job-4").write_bytes(content)
        assert list(FileJobStore(str(queue)).load_jobs()) == []
    corrupt = queue / "corrupt"
    assert [(corrupt / name).read_bytes() for name in ("job-4", "job-4.1", "job-4.2")] == [
        b"first",
        b"second",
        b"third",
    ]


@pytest.mark.parametrize("name", ["serial", "version"])
def test_a_fifo_for_a_queue_file_is_refused_not_waited_for(tmp_path: Path, name: str) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue)).allocate_ids(1)
    (queue / name).unlink()
    os.mkfifo(queue / name)
    with pytest.raises(JobQueueError, match="not a regular file but a FIFO"):
        FileJobStore(str(queue))


def test_a_directory_named_like_a_temp_file_does_not_stop_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    (queue / "x.tmp").mkdir()
    store = FileJobStore(str(queue))
    assert list(store.load_jobs()) == []
    create(store, make_job(1))
    assert "Cannot remove" in caplog.text and "x.tmp" in caplog.text


def test_reading_a_fifo_in_the_archive_fails_at_once(tmp_path: Path) -> None:
    queue = _archived_queue(tmp_path, 2)
    os.mkfifo(queue / "archive" / "0" / "job-3")
    store = FileJobStore(str(queue), owner=False)
    with pytest.raises(StorageError, match="Cannot read job 3: not a regular file but a FIFO"):
        store.read_job(3)
    assert store.read_job(2) == make_job(2, Status.SUCCESS)


def test_filter_rules_are_files_written_like_jobs(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    store.replace_filter({"uuid": RULE_UUIDS[0], "action": "PAUSE"})
    path = queue / "filters" / RULE_UUIDS[0]
    assert stat.S_IMODE(path.stat().st_mode) == constants.FILE_MODE
    assert [p.name for p in path.parent.iterdir()] == [RULE_UUIDS[0]]  # no temp file left
    (path.parent / "notes.txt").write_text("not a rule")
    (path.parent / RULE_UUIDS[1]).write_text("{broken")
    assert [rule["uuid"] for rule in FileJobStore(str(queue)).load_filters()] == [RULE_UUIDS[0]]
    assert (path.parent / RULE_UUIDS[1]).exists()  # left for the operator, not deleted


def test_a_failed_filter_write_keeps_the_old_rule(tmp_path: Path) -> None:
    queue = str(tmp_path / "queue")
    FileJobStore(queue).replace_filter({"uuid": RULE_UUIDS[0], "priority": 1})
    store = FileJobStore(queue, disk=FailingDisk("fsync"))
    with pytest.raises(StorageError):
        store.replace_filter({"uuid": RULE_UUIDS[0], "priority": 2})
    assert FileJobStore(queue).load_filters() == [{"uuid": RULE_UUIDS[0], "priority": 1}]


def _write_output(store: JobStore, job_id: int, data: bytes = b"out") -> None:
    stream = store.open_output(job_id, 0, "stdout")
    stream.append(data)
    stream.close()


def _finished_with_output(store: JobStore, *job_ids: int) -> None:
    """Finished jobs ``job_ids``, each with b"out" on stdout."""
    create(store, *(make_job(i, Status.SUCCESS) for i in job_ids))
    for job_id in job_ids:
        _write_output(store, job_id)


def test_output_files_are_private_and_follow_the_archive(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, make_job(12345, Status.SUCCESS))
    _write_output(store, 12345)
    live = queue / "output" / "12345" / "0.stdout"
    assert stat.S_IMODE(live.stat().st_mode) == 0o600
    assert stat.S_IMODE(live.parent.stat().st_mode) == 0o700
    store.archive_jobs([12345])
    assert not live.parent.exists()
    assert (queue / "archive" / "1" / "output-12345" / "0.stdout").read_bytes() == b"out"


def test_start_settles_output_left_by_a_crash(tmp_path: Path) -> None:
    """Job 1 was archived but not its output (a crash in between); job 2 is gone."""
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    _finished_with_output(store, 1, 2, 3)
    os.makedirs(queue / "archive" / "0")
    os.replace(queue / "job-1", queue / "archive" / "0" / "job-1")
    os.unlink(queue / "job-2")
    reopened = FileJobStore(str(queue))
    assert sorted(job.id for job in reopened.load_jobs()) == [3]
    assert sorted(os.listdir(queue / "output")) == ["3"]
    assert (queue / "archive" / "0" / "output-1" / "0.stdout").is_file()
    assert reopened.read_output(1, 0, "stdout", 0, 10) == b"out"


def test_prune_deletes_output_only_without_its_job_and_old(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    archive = queue / "archive" / "0"
    day = 86400
    _touch(archive / "job-1", 30 * day)
    _touch(archive / "output-1" / "0.stdout", 30 * day)
    _touch(archive / "job-2", 1 * day)
    _touch(archive / "output-2" / "0.stdout", 30 * day)  # its job is recent: kept
    _touch(archive / "output-3" / "0.stdout", 0)  # being archived: its job comes next
    for name in ("output-1", "output-2", "output-3"):
        stamp = time.time() - (0 if name == "output-3" else 30 * day)
        os.utime(archive / name, (stamp, stamp))
    result = FileJobStore(str(queue), owner=False).prune_archive(21 * day, time.time())
    assert (result.jobs, result.failures) == (1, [])
    assert sorted(os.listdir(archive)) == ["job-2", "output-2", "output-3"]


def test_output_reads_neither_follow_links_nor_block(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, make_job(1, Status.RUNNING))
    _write_output(store, 1, b"mine")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for you")
    (queue / "output" / "1" / "0.stderr").symlink_to(secret)
    os.mkfifo(queue / "output" / "1" / "1.stdout")
    assert store.output_sizes(1) == {(0, "stdout"): 4}
    for op_index, stream in ((0, "stderr"), (1, "stdout")):
        with pytest.raises(StorageError):
            store.read_output(1, op_index, stream, 0, 100)
        with pytest.raises(StorageError):
            store.open_output(1, op_index, stream)
    assert secret.read_bytes() == b"not for you"


# -- the etcd store's output: files on the daemon's own host --------------------------------

OpenEtcd = Callable[..., Any]


def test_an_etcd_handle_without_an_output_directory_keeps_none(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    """The cleaner's maintenance handle keeps no output and reads none, not even this host's."""
    prefix = unique_prefix()
    daemon = open_etcd_store(etcd_member.endpoints, prefix, output_dir=str(tmp_path / "output"))
    create(daemon, make_job(1, Status.RUNNING))
    _write_output(daemon, 1)
    maintenance = open_etcd_store(etcd_member.endpoints, prefix, owner=False)
    with pytest.raises(StorageError, match="keeps no command output") as raised:
        maintenance.open_output(1, 0, "stdout")
    assert raised.value.args[1] == errno.ENOTSUP
    assert maintenance.output_sizes(1) == {}
    assert maintenance.read_output(1, 0, "stdout", 0, 10) == b""
    assert daemon.read_output(1, 0, "stdout", 0, 10) == b"out"


def test_etcd_output_stays_private_on_the_host_and_follows_the_archive(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    output = tmp_path / "output"
    store = open_etcd_store(etcd_member.endpoints, unique_prefix(), output_dir=str(output))
    create(store, make_job(12345, Status.SUCCESS))
    _write_output(store, 12345, b"kept on this host")
    live = output / "12345" / "0.stdout"
    assert live.read_bytes() == b"kept on this host"
    assert stat.S_IMODE(live.stat().st_mode) == 0o600
    assert {stat.S_IMODE(path.stat().st_mode) for path in (output, live.parent)} == {0o700}
    keys = list(store.kv.range_prefix(store.keys.root))
    assert not [item.key for item in keys if b"kept on this host" in item.value]  # not in etcd
    assert store.archive_jobs([12345]) == ([12345], None)
    assert not live.parent.exists()
    archived = output / "archive" / "1" / "output-12345"
    assert (archived / "0.stdout").read_bytes() == b"kept on this host"
    assert {stat.S_IMODE(path.stat().st_mode) for path in archived.parents[:2]} == {0o700}
    assert store.read_output(12345, 0, "stdout", 5, 100) == b"on this host"


def test_an_etcd_start_settles_output_left_by_a_crash(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    """Job 1 was archived in etcd but not its output (a crash in between); job 2 is gone."""
    prefix, output = unique_prefix(), tmp_path / "output"
    endpoints = etcd_member.endpoints
    store = open_etcd_store(endpoints, prefix, output_dir=str(output))
    _finished_with_output(store, 1, 2, 3)
    in_etcd_only = open_etcd_store(endpoints, prefix)  # moves jobs, never output
    assert in_etcd_only.archive_jobs([1]) == ([1], None)
    assert in_etcd_only.discard_jobs([2]) == ([2], None)

    leader = open_etcd_store(endpoints, prefix)
    assert leader.leadership("leader").acquire(0)
    standby = open_etcd_store(endpoints, prefix, output_dir=str(output))
    standby.leadership("standby")
    assert [job.id for job in standby.load_jobs()] == [3]
    assert sorted(os.listdir(output)) == ["1", "2", "3"]  # only a leading owner settles
    leader.leadership("leader").release()

    reopened = open_etcd_store(endpoints, prefix, output_dir=str(output))
    assert [job.id for job in reopened.load_jobs()] == [3]
    assert sorted(os.listdir(output)) == ["3", "archive"]
    assert (output / "archive" / "0" / "output-1" / "0.stdout").read_bytes() == b"out"
    assert reopened.read_output(1, 0, "stdout", 0, 10) == b"out"
    assert reopened.output_sizes(2) == {}


def test_etcd_pruning_deletes_the_output_of_jobs_etcd_no_longer_has(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    now, day = time.time(), 86400.0
    when = [now - 30 * day]
    prefix, output = unique_prefix(), tmp_path / "output"
    endpoints = etcd_member.endpoints
    store = open_etcd_store(endpoints, prefix, output_dir=str(output), clock=lambda: when[0])
    _finished_with_output(store, 1, 2, 3, 4)
    store.archive_jobs([1])  # a month ago
    when[0] = now
    store.archive_jobs([2])  # just now
    store.kv.txn(fence=None, deletes=[store.keys.job(3)])  # archived and pruned elsewhere

    result = store.prune_archive(21 * day, now)
    assert (result.jobs, result.failures) == (1, [])
    assert sorted(os.listdir(output)) == ["4", "archive"]  # live job 4 keeps its output
    assert os.listdir(output / "archive" / "0") == ["output-2"]
    assert store.read_output(2, 0, "stdout", 0, 10) == b"out"
    assert store.output_sizes(1) == {} and store.output_sizes(3) == {}

    # The cleaner prunes etcd alone (the daemon was down); the next pruning here follows.
    maintenance = open_etcd_store(endpoints, prefix, owner=False)
    assert maintenance.prune_archive(0, now + 1).jobs == 1
    assert (output / "archive" / "0" / "output-2").is_dir()
    again = store.prune_archive(21 * day, now + 1)
    assert (again.jobs, again.directories, again.failures) == (0, 1, [])
    assert os.listdir(output / "archive") == []


def test_a_standby_tidies_only_its_own_output_of_jobs_etcd_no_longer_has(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    """Output this host made as master, of jobs the new master has since pruned, goes."""
    prefix, output = unique_prefix(), tmp_path / "output"
    endpoints = etcd_member.endpoints
    was_master = open_etcd_store(endpoints, prefix, output_dir=str(output))
    _finished_with_output(was_master, 1, 2, 3)
    assert was_master.archive_jobs([2]) == ([2], None)
    was_master.kv.txn(fence=None, deletes=[was_master.keys.job(3)])  # pruned by the new master
    leader = open_etcd_store(endpoints, prefix)
    assert leader.leadership("new master").acquire(0)
    standby = open_etcd_store(endpoints, prefix, output_dir=str(output))
    standby.leadership("this host")
    revision = standby.kv.revision()
    result = standby.tidy_local_output()
    assert result.failures == []
    assert sorted(os.listdir(output)) == ["1", "archive"]
    assert os.listdir(output / "archive" / "0") == ["output-2"]
    assert standby.kv.revision() == revision  # etcd untouched
    assert FileJobStore(str(tmp_path / "queue")).tidy_local_output().failures == []
