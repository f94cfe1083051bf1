"""Storage: what only the file store can show. Ids and the serial, failed writes, the
archive's layout and pruning, corrupt files, the queue lock, and hand-damaged or
hostile queue directories.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.errors import JobQueueError, StorageError
from jobqueue.model import Job
from jobqueue.queuelock import QueueLock
from jobqueue.storage.base import WATCHER_PAUSE
from jobqueue.storage.files import Disk, FileJobStore
from tests.store_samples import RULE_UUIDS, create, make_job, touch


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


def test_a_new_job_that_cannot_be_encoded_is_refused_alone(tmp_path: Path) -> None:
    FileJobStore(str(tmp_path / "q")).allocate_ids(3)
    store = FileJobStore(str(tmp_path / "q"))
    unstorable = make_job(2)
    unstorable.ops[0].input["comment"] = {1, 2}  # a set: no JSON for it
    results = store.create_jobs([make_job(1), unstorable, make_job(3)])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StorageError) and "cannot be stored as JSON" in str(results[1])
    assert sorted(job.id for job in store.load_jobs()) == [1, 3]


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


def test_prune_keeps_the_directories_archiving_may_use_next(tmp_path: Path) -> None:
    """archive/0: an old and a recent job; 1: only an old job; 2: empty; 3: an old
    non-job file; 4 and 5: old jobs, but 5 holds the newest id handed out (serial
    50123) and 4 the one before, so both stay; 7: an old job, and the live job
    70001 archives there next, so it stays too."""
    queue = tmp_path / "queue"
    archive = queue / "archive"
    day = 86400
    touch(archive / "0" / "job-1", 30 * day)
    touch(archive / "0" / "job-2", 3 * day)
    touch(archive / "1" / "job-10001", 22 * day)
    (archive / "2").mkdir(parents=True)
    touch(archive / "3" / "notes", 40 * day)
    for name in ("4/job-40000", "5/job-50000", "7/job-70000"):
        touch(archive / name, 25 * day)
    touch(queue / "job-70001", 0)
    touch(queue / "serial", 0, "50123\n")
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
