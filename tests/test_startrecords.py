"""Start records: an opcode's start in a start file, newer than its job file until replaced."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.errors import StorageError
from jobqueue.model import Job
from jobqueue.storage import files, layout, startrecords
from jobqueue.storage.base import decode_job_and_serial
from jobqueue.storage.durable import PythonDirectory
from jobqueue.storage.files import Disk, FileJobStore
from jobqueue.storage.startrecords import (
    BLOCK,
    MAX_RECORD,
    StartFiles,
    decode_record,
    encode_record,
)
from tests.queue_files import load_jobs


def queued(job_id: int) -> Job:
    return Job.new(job_id, [{"OP_ID": "OP_TEST_DELAY", "duration": 1}], [1000, 0])


def started(job: Job) -> Job:
    job.ops[0].status = Status.RUNNING
    job.ops[0].exec_timestamp = job.start_timestamp = [1001, 0]
    return job


def ended(job: Job) -> Job:
    job.ops[0].status = Status.SUCCESS
    job.ops[0].end_timestamp = job.end_timestamp = [1002, 0]
    return job


def on_file(queue: Path, job_id: int) -> tuple[Status, int]:
    """The status and write serial in ``job-N`` itself, start records ignored."""
    job, serial = decode_job_and_serial((queue / layout.job_file_name(job_id)).read_bytes())
    return job.status, serial


def start_files(queue: Path) -> list[Path]:
    return sorted(path for path in queue.iterdir() if layout.is_start_name(path.name))


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    return tmp_path / "queue"


def crashed(queue: Path) -> FileJobStore:
    """A new owner of ``queue`` (the previous one is simply dropped, as by kill -9)."""
    return FileJobStore(str(queue))


# -- the record format -------------------------------------------------------------------


def test_a_record_is_padded_to_whole_blocks_and_read_back() -> None:
    version = b'{"id":1}\n'
    data = encode_record(version)
    assert len(data) == BLOCK
    assert data.startswith(b"jobqueue-start 9 ") and data.endswith(b" ")
    assert decode_record(data) == version
    assert decode_record(data + b"an older, longer record's tail") == version
    big = encode_record(b"x" * (BLOCK + 1))
    assert len(big) == 2 * BLOCK and decode_record(big) == b"x" * (BLOCK + 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:20],  # cut short
        lambda data: data[:30] + b"X" + data[31:],  # one byte of the version changed
        lambda data: b" " * 14 + data[14:],  # the header erased (a failed write's undo)
        lambda data: b"jobqueue-start 99999 00000000\n" + data[30:],  # a bad header
    ],
)
def test_a_torn_or_erased_record_holds_nothing(damage: object) -> None:
    data = encode_record(b'{"id":12345,"ops":[]}\n')
    assert callable(damage)
    assert decode_record(damage(data)) is None


# -- the store ---------------------------------------------------------------------------


def test_a_start_is_newer_than_the_job_file_until_the_next_replace(queue: Path) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    assert store.create_jobs([queued(1)]) == [None]
    store.record_start(started(queued(1)))
    assert on_file(queue, 1) == (Status.QUEUED, 1)  # job-1 itself is untouched
    assert store.read_job(1) == started(queued(1))
    assert [job.status for job in crashed(queue).load_jobs()] == [Status.RUNNING]

    store = crashed(queue)
    list(store.load_jobs())
    store.replace_job(ended(started(queued(1))))
    assert on_file(queue, 1) == (Status.SUCCESS, 3)
    assert [job.status for job in crashed(queue).load_jobs()] == [Status.SUCCESS]


def test_a_freed_start_file_is_reused_and_its_old_record_counts_for_nothing(
    queue: Path,
) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(1), queued(2)])
    store.record_start(started(queued(1)))
    store.replace_job(ended(started(queued(1))))
    assert len(start_files(queue)) == 1  # free again, still holding job 1's start
    store.record_start(started(queued(2)))
    assert len(start_files(queue)) == 1  # the same file, rewritten in place
    jobs = {job.id: job.status for job in crashed(queue).load_jobs()}
    assert jobs == {1: Status.SUCCESS, 2: Status.RUNNING}


def test_a_stale_record_beside_a_newer_job_file_is_not_loaded(queue: Path) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(1)])
    store.record_start(started(queued(1)))
    stale = start_files(queue)[0].read_bytes()
    store.replace_job(ended(started(queued(1))))
    start_files(queue)[0].write_bytes(stale)  # as if the file had not been reused yet
    assert [job.status for job in crashed(queue).load_jobs()] == [Status.SUCCESS]


def test_a_torn_record_is_ignored_and_its_file_reused(queue: Path) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(1)])
    store.record_start(started(queued(1)))
    path = start_files(queue)[0]
    data = path.read_bytes()
    path.write_bytes(data[:40] + b"#" + data[41:])  # a crash in the middle of its write
    store = crashed(queue)
    assert [job.status for job in store.load_jobs()] == [Status.QUEUED]
    store.record_start(started(queued(1)))
    assert start_files(queue) == [path]


def test_records_of_jobs_that_are_not_live_count_for_nothing(queue: Path) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(1), queued(2)])
    store.record_start(started(queued(1)))
    store.record_start(started(queued(2)))
    store.replace_job(ended(started(queued(1))))
    assert store.archive_jobs([1]) == ([1], None)
    os.unlink(queue / "job-2")  # gone by hand while its start record is there
    store = crashed(queue)
    assert list(store.load_jobs()) == []
    assert store.read_job(1) == ended(started(queued(1)))  # the archived version


def test_a_store_opened_for_maintenance_reads_the_records_and_changes_nothing(
    queue: Path,
) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(store.allocate_ids(1)[0])])
    store.record_start(started(queued(1)))
    before = {path.name: path.read_bytes() for path in queue.iterdir() if path.is_file()}
    reader = FileJobStore(str(queue), owner=False)
    assert [job.status for job in reader.load_jobs()] == [Status.RUNNING]
    assert reader.read_job(1) == started(queued(1))
    assert {p.name: p.read_bytes() for p in queue.iterdir() if p.is_file()} == before


def test_a_maintenance_store_reads_its_start_files_once_per_read_jobs_after_the_files(
    queue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(job_id) for job_id in store.allocate_ids(3)])
    store.record_start(started(queued(1)))
    store.record_start(started(queued(3)))
    store.replace_job(ended(started(queued(3))))
    assert store.archive_jobs([3]) == ([3], None)
    reads: list[str] = []
    real_records, real_version = startrecords.read_records, files.read_whole_version
    monkeypatch.setattr(
        startrecords, "read_records", lambda d: reads.append("records") or real_records(d)
    )
    monkeypatch.setattr(
        files, "read_whole_version", lambda p: reads.append("file") or real_version(p)
    )
    reader = FileJobStore(str(queue), owner=False)
    jobs = reader.read_jobs([1, 2, 3, 4])
    assert jobs == [started(queued(1)), queued(2), ended(started(queued(3))), None]
    # As read_job does: a start recorded while the files are read is not missed.
    assert reads.count("records") == 1 and reads[-1] == "records"
    reads.clear()
    assert reader.read_jobs([3, 4]) == [ended(started(queued(3))), None]
    assert "records" not in reads  # no live job asked for: no start file read


def test_a_store_that_did_not_load_the_job_numbers_its_writes_above_the_stored_ones(
    queue: Path,
) -> None:
    first = FileJobStore(str(queue))
    first.create_jobs([queued(1)])
    first.replace_job(queued(1))
    first.replace_job(queued(1))
    assert on_file(queue, 1) == (Status.QUEUED, 3)
    second = FileJobStore(str(queue))  # writes without loading (no load_jobs)
    second.record_start(started(queued(1)))
    assert [job.status for job in crashed(queue).load_jobs()] == [Status.RUNNING]


def test_a_version_too_large_for_a_record_replaces_the_job_file(queue: Path) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(1)])
    big = started(queued(1))
    big.ops[0].log.append([1, [1001, 0], "message", "x" * MAX_RECORD])
    store.record_start(big)
    assert on_file(queue, 1)[0] == Status.RUNNING
    assert start_files(queue) == []


def test_the_owner_marks_a_version_1_queue_2_and_a_maintenance_store_does_not(
    queue: Path,
) -> None:
    store = FileJobStore(str(queue))
    store.create_jobs([queued(1)])
    (queue / "version").write_text("1\n")
    FileJobStore(str(queue), owner=False).read_job(1)
    assert (queue / "version").read_text() == "1\n"
    store = FileJobStore(str(queue))
    assert [job.id for job in store.load_jobs()] == [1]
    assert (queue / "version").read_text() == f"{constants.QUEUE_FORMAT_VERSION}\n" == "2\n"


def test_a_job_file_without_a_write_serial_is_older_than_any_record(queue: Path) -> None:
    store = FileJobStore(str(queue))
    store.create_jobs([queued(1)])
    (queue / "job-1").write_text(json.dumps(queued(1).to_dict()) + "\n")  # a version-1 file
    store = crashed(queue)
    list(store.load_jobs())
    store.record_start(started(queued(1)))
    assert [job.status for job in crashed(queue).load_jobs()] == [Status.RUNNING]


def test_something_else_under_a_start_file_name_is_never_opened_and_is_removed(
    queue: Path,
) -> None:
    store = FileJobStore(str(queue))
    store.create_jobs([queued(1)])
    os.mkfifo(queue / layout.start_file_name(3))
    os.symlink("/dev/zero", queue / layout.start_file_name(4))
    (queue / layout.start_file_name(2)).write_bytes(b" " * (MAX_RECORD + 2 * BLOCK))
    store = crashed(queue)
    assert [job.status for job in store.load_jobs()] == [Status.QUEUED]
    assert start_files(queue) == []
    store.record_start(started(queued(1)))
    assert [path.name for path in start_files(queue)] == [layout.start_file_name(5)]


# -- failures ----------------------------------------------------------------------------


class FailingSync(Disk):
    """A disk whose ``fdatasync`` fails while ``failing`` is set."""

    failing = False

    def datasync(self, fd: int) -> None:
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().datasync(fd)


def test_a_failed_start_keeps_the_previous_version_and_erases_its_record(queue: Path) -> None:
    disk = FailingSync()
    store = FileJobStore(str(queue), disk=disk)
    list(store.load_jobs())
    store.create_jobs([queued(1), queued(2)])
    store.record_start(started(queued(2)))
    store.replace_job(ended(started(queued(2))))  # its start file is free, job 2's record in it
    disk.failing = True
    with pytest.raises(StorageError, match="Cannot record the start of job 1: Input/output"):
        store.record_start(started(queued(1)))
    assert store.read_job(1) == queued(1)
    assert [decode_record(path.read_bytes()) for path in start_files(queue)] == [None]
    jobs = {job.id: job.status for job in crashed(queue).load_jobs()}
    assert jobs == {1: Status.QUEUED, 2: Status.SUCCESS}
    disk.failing = False
    store.record_start(started(queued(1)))
    jobs = {job.id: job.status for job in crashed(queue).load_jobs()}
    assert jobs == {1: Status.RUNNING, 2: Status.SUCCESS}


def test_a_new_start_file_is_durable_before_it_holds_a_record(tmp_path: Path) -> None:
    steps: list[str] = []

    class Recording(Disk):
        def datasync(self, fd: int) -> None:
            super().datasync(fd)
            steps.append("datasync")

        def fsync_dir(self, path: str) -> None:
            super().fsync_dir(path)
            steps.append("fsync_dir")

    disk = Recording()
    directory = PythonDirectory(disk, str(tmp_path))

    def overwrite(name: str, data: bytes) -> None:
        assert directory.overwrite(name, data) is None

    files = StartFiles(str(tmp_path), disk, overwrite, logging.getLogger("test"))
    files.adopt([], {})
    files.write(7, 2, b'{"id":7}\n')
    assert steps == ["datasync", "fsync_dir", "datasync"]  # made, named, then written
    assert files.newest(7) == (2, b'{"id":7}\n')
    steps.clear()
    files.release(7)
    files.write(8, 2, b'{"id":8}\n')
    assert steps == ["datasync"]  # reused: one flush
    assert files.count() == (0, 1)


def test_the_records_are_read_by_anyone_from_the_directory(queue: Path) -> None:
    store = FileJobStore(str(queue))
    list(store.load_jobs())
    store.create_jobs([queued(1)])
    store.record_start(started(queued(1)))
    found = startrecords.read_records(str(queue))
    assert list(found.records) == [path.name for path in start_files(queue)]
    assert load_jobs(queue)[1].status == Status.RUNNING  # the tests' own reader
