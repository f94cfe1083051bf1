"""Storage: one contract for both stores, then what only files can show."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.errors import JobQueueError, StorageError
from jobqueue.model import Job
from jobqueue.queuelock import QueueLock
from jobqueue.storage import Disk, FileJobStore, JobStore, MemoryJobStore


def make_job(job_id: int, status: Status = Status.QUEUED) -> Job:
    job = Job.new(job_id, [{"OP_ID": "OP_TEST_DELAY", "duration": 1}], [1000 + job_id, 0])
    if status != Status.QUEUED:
        job.ops[0].status = status
        job.end_timestamp = [2000, 0] if status in constants.FINALIZED else None
    return job


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "file":
        return FileJobStore(str(tmp_path / "queue"))
    return MemoryJobStore()


class TestStoreContract:
    """Every JobStore implementation must pass these."""

    def test_ids_are_unique_and_increasing(self, store: JobStore) -> None:
        first = store.allocate_ids(3)
        second = store.allocate_ids(1)
        assert first == sorted(first) and len(set(first + second)) == 4
        assert second[0] > first[-1]

    def test_write_read_round_trip(self, store: JobStore) -> None:
        (job_id,) = store.allocate_ids(1)
        job = make_job(job_id)
        job.add_log(0, "message", "hi", [5, 6])
        store.write_job(job)
        restored = store.read_job(job_id)
        assert restored is not None and restored.to_dict() == job.to_dict()
        assert restored.log_serial == 1

    def test_read_missing_is_none(self, store: JobStore) -> None:
        assert store.read_job(12345) is None

    def test_index_follows_writes(self, store: JobStore) -> None:
        ids = store.allocate_ids(2)
        store.write_jobs([make_job(i) for i in ids])
        assert store.live_ids() == ids and store.live_count() == 2
        job = make_job(ids[0], Status.SUCCESS)
        store.write_job(job)
        entry = store.index_entry(ids[0])
        assert entry is not None and entry.status == Status.SUCCESS
        assert entry.summary == ["TEST_DELAY"]
        assert [e.id for e in store.index_entries([ids[1], 999])] == [ids[1]]

    def test_archive_moves_and_lookup_still_works(self, store: JobStore) -> None:
        ids = store.allocate_ids(2)
        store.write_jobs([make_job(i, Status.SUCCESS) for i in ids])
        assert store.archive_jobs([*ids, 999]) == ids
        assert store.live_ids() == [] and store.archived_ids() == ids
        archived = store.read_job(ids[0])
        assert archived is not None and archived.status == Status.SUCCESS
        assert store.archive_job(ids[0]) is False  # no longer live

    def test_load_returns_unfinished_and_indexes_all(self, store: JobStore) -> None:
        ids = store.allocate_ids(3)
        store.write_jobs(
            [make_job(ids[0]), make_job(ids[1], Status.ERROR), make_job(ids[2], Status.RUNNING)]
        )
        unfinished = store.load()
        assert [job.id for job in unfinished] == [ids[0], ids[2]]
        assert store.live_ids() == ids

    def test_drain_flag(self, store: JobStore) -> None:
        assert not store.is_drained()
        store.set_drained(True)
        assert store.is_drained()
        store.set_drained(False)
        store.set_drained(False)
        assert not store.is_drained()


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
    store.write_job(make_job(500))
    (tmp_path / "q" / "serial").write_text("3\n")
    store = FileJobStore(str(tmp_path / "q"))
    store.load()
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
    store.write_job(job)
    before = (queue / f"job-{job.id}").read_bytes()
    failing = FileJobStore(str(queue), disk=FailingDisk(fail_on))
    failing.load()
    job.ops[0].status = Status.SUCCESS
    with pytest.raises(StorageError) as info:
        failing.write_job(job)
    assert "No space left" in str(info.value)
    assert (queue / f"job-{job.id}").read_bytes() == before
    assert not [n for n in queue_files(queue) if n.endswith(".tmp")]
    entry = failing.index_entry(job.id)
    assert entry is not None and entry.status == Status.QUEUED  # not reported as changed


def test_failed_batch_reports_per_job(tmp_path: Path) -> None:
    class FailJobTwo(Disk):
        """Fails the rename that would put job 2 in place (batches write in parallel)."""

        def replace(self, src: str, dst: str) -> None:
            if dst.endswith("/job-2"):
                raise OSError(errno.EIO, "I/O error")
            super().replace(src, dst)

    FileJobStore(str(tmp_path / "q")).allocate_ids(3)
    store = FileJobStore(str(tmp_path / "q"), disk=FailJobTwo())
    results = store.write_jobs([make_job(1), make_job(2), make_job(3)])
    assert [r is None for r in results] == [True, False, True]
    assert store.live_ids() == [1, 3]
    assert not (tmp_path / "q" / "job-2").exists()
    assert not [n for n in queue_files(tmp_path / "q") if n.endswith(".tmp")]


def test_temp_files_cleaned_at_start(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    (queue / ".job-3.123.0.tmp").write_text("{half")
    FileJobStore(str(queue))
    assert ".job-3.123.0.tmp" not in queue_files(queue)


def test_archive_layout(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    store.write_jobs([make_job(i, Status.SUCCESS) for i in (5, 9999, 10000, 123456)])
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
    store.write_jobs([make_job(3), make_job(5)])
    (queue / "job-4").write_bytes(content)
    store = FileJobStore(str(queue))
    assert [job.id for job in store.load()] == [3, 5]
    assert (queue / "corrupt" / "job-4").read_bytes() == content
    assert "job-4" in caplog.text and "corrupt" in caplog.text


def test_file_holding_another_id_is_corrupt(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    store.write_job(make_job(3))
    os.rename(queue / "job-3", queue / "job-8")
    assert FileJobStore(str(queue)).load() == []
    assert (queue / "corrupt" / "job-8").exists()


def test_foreign_files_ignored(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    (queue / "README").write_text("hello")
    (queue / "job-abc").write_text("x")
    assert FileJobStore(str(queue)).load() == []
    assert (queue / "README").exists()


def test_job_files_are_private(tmp_path: Path) -> None:
    store = FileJobStore(str(tmp_path / "q"))
    store.write_job(make_job(1))
    assert stat.S_IMODE(os.stat(tmp_path / "q" / "job-1").st_mode) == 0o600


def test_unknown_version_refused(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    FileJobStore(str(queue))
    assert (queue / "version").read_text() == "1\n"
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
