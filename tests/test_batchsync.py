"""Batches of new job files made durable by one sync of the file system (syncfs).

The order that makes it safe: every file's data is written into a spare,
one ``syncfs`` makes all of it durable, only then are the spares renamed to
``job-N``, and a directory sync that began after the last rename precedes
any answer. What fails fails its jobs, and leaves no job file behind.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobqueue.constants import Status
from jobqueue.errors import StorageError
from jobqueue.model import Job
from jobqueue.storage import layout
from jobqueue.storage.durable import PythonDirectory, filesystem_sync_refusal
from jobqueue.storage.files import Disk, FileJobStore
from jobqueue.storage.jobwriter import Choice
from tests.daemon_helper import Daemon, wait_until
from tests.grouping import start_behind_a_held_write
from tests.queue_files import load_jobs

DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
#: A batch of new jobs (one sync for all of them: ``filecreate``), small enough to be quick.
BATCH = 40

pytestmark = pytest.mark.skipif(
    filesystem_sync_refusal() is not None, reason=f"{filesystem_sync_refusal()}"
)


def make_jobs(first: int, count: int) -> list[Job]:
    return [Job.new(n, [DELAY0], [1000 + n, 0]) for n in range(first, first + count)]


def job_files(queue: Path) -> set[str]:
    return {name for name in os.listdir(queue) if layout.job_id_of(name) is not None}


class RecordingDisk(Disk):
    """Records the steps of the writes (with the file each is about) and fails one on demand.

    ``fail``: a step (``write``, ``fsync``, ``syncfs``, ``rename``, ``fsync_dir``)
    that raises EIO, for the ``fail_nth`` time it is made (0: every time).
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail: str | None = None
        self.fail_nth = 0
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _step(self, step: str, name: str) -> None:
        with self._lock:
            self.counts[step] = self.counts.get(step, 0) + 1
            if step == self.fail and self.fail_nth in (0, self.counts[step]):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            self.log.append((step, name))

    def write(self, fd: int, data: bytes) -> int:
        self._step("write", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._step("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        super().fsync(fd)

    def sync_filesystem(self, fd: int) -> None:
        self._step("syncfs", "")
        super().sync_filesystem(fd)

    def replace(self, src: str, dst: str) -> None:
        self._step("rename", f"{os.path.basename(src)} {os.path.basename(dst)}")
        super().replace(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._step("fsync_dir", "")
        super().fsync_dir(path)

    def steps(self, step: str) -> list[int]:
        return [i for i, (s, _) in enumerate(self.log) if s == step]


def open_store(tmp_path: Path, **options: object) -> tuple[FileJobStore, RecordingDisk]:
    disk = RecordingDisk()
    store = FileJobStore(str(tmp_path / "q"), disk=disk, spare_reserve=0, **options)  # type: ignore[arg-type]
    store.load_jobs()
    store.write_method()  # starts the writer, which syncs the directory once
    disk.log.clear()
    disk.counts.clear()
    return store, disk


def test_a_large_batch_is_written_then_synced_once_then_named(tmp_path: Path) -> None:
    store, disk = open_store(tmp_path)
    jobs = make_jobs(1, BATCH)
    assert store.create_jobs(jobs) == [None] * BATCH
    (syncfs,) = disk.steps("syncfs")
    writes, renames = disk.steps("write"), disk.steps("rename")
    assert len(writes) == len(renames) == BATCH
    assert max(writes) < syncfs < min(renames)
    assert max(renames) < max(disk.steps("fsync_dir"))  # the names themselves made durable
    # What was written into each spare is what its rename put in place.
    written = {name for step, name in disk.log if step == "write"}
    assert {pair.split()[0] for step, pair in disk.log if step == "rename"} == written
    assert not [name for step, name in disk.log if step == "fsync" and name in written]
    reopened = FileJobStore(str(tmp_path / "q"), owner=False)
    assert {job.id: job for job in reopened.load_jobs()} == {job.id: job for job in jobs}


def test_a_single_job_syncs_its_file_and_two_share_one_sync(tmp_path: Path) -> None:
    store, disk = open_store(tmp_path)
    assert store.create_jobs(make_jobs(1, 1)) == [None]
    assert disk.steps("syncfs") == []
    assert len(disk.steps("fsync")) == 1
    assert store.create_jobs(make_jobs(2, 2)) == [None] * 2
    assert len(disk.steps("syncfs")) == 1
    assert len(disk.steps("fsync")) == 1
    assert job_files(tmp_path / "q") == {"job-1", "job-2", "job-3"}


def test_jobs_submitted_during_a_write_share_the_next_sync_and_wait_for_it(
    tmp_path: Path,
) -> None:
    class HeldDisk(RecordingDisk):
        """Once ``armed``, the first write waits for ``release``."""

        def __init__(self) -> None:
            super().__init__()
            self.armed = False
            self.first_write = threading.Event()
            self.release = threading.Event()

        def write(self, fd: int, data: bytes) -> int:
            if self.armed and not self.first_write.is_set():
                self.first_write.set()
                assert self.release.wait(30)
            return super().write(fd, data)

    disk = HeldDisk()
    store = FileJobStore(str(tmp_path / "q"), disk=disk, spare_reserve=0)
    store.load_jobs()
    store.write_method()
    disk.log.clear()
    disk.armed = True
    results: dict[int, object] = {}

    def create(job: Job) -> None:
        (results[job.id],) = store.create_jobs([job])
        with disk._lock:
            disk.log.append(("returned", layout.job_file_name(job.id)))

    threads = [threading.Thread(target=create, args=(job,)) for job in make_jobs(1, 6)]
    start_behind_a_held_write(store._new_files._grouped, disk.first_write, threads)
    disk.release.set()
    for thread in threads:
        thread.join(30)
    assert results == dict.fromkeys(range(1, 7))
    assert len(disk.steps("fsync")) == 1  # the first job alone
    assert len(disk.steps("syncfs")) == 1  # the five others together
    for job_id in range(1, 7):
        name = layout.job_file_name(job_id)
        (renamed,) = [i for i, (_, pair) in enumerate(disk.log) if pair.endswith(f" {name}")]
        (returned,) = [i for i, entry in enumerate(disk.log) if entry == ("returned", name)]
        assert any(renamed < i < returned for i in disk.steps("fsync_dir"))
    assert len(job_files(tmp_path / "q")) == 6


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"sync_batches": False}, "as asked"),
        ({"write_method": Choice.RENAME}, "no spare files"),
    ],
)
def test_a_batch_syncs_each_file_where_asked_or_without_spares(
    tmp_path: Path, options: dict[str, object], why: str
) -> None:
    store, disk = open_store(tmp_path, **options)
    assert store.write_method().endswith(f"batches of new files: a sync per file ({why})")
    assert store.create_jobs(make_jobs(1, BATCH)) == [None] * BATCH
    assert disk.steps("syncfs") == []
    assert len(disk.steps("fsync")) == BATCH
    assert len(job_files(tmp_path / "q")) == BATCH


def test_a_file_system_that_refuses_syncfs_gets_a_sync_per_file(tmp_path: Path) -> None:
    class NoSyncfs(RecordingDisk):
        def sync_filesystem(self, fd: int) -> None:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    store = FileJobStore(str(tmp_path / "q"), disk=NoSyncfs(), spare_reserve=0)
    store.load_jobs()
    assert store.write_method().endswith(
        "batches of new files: a sync per file (syncfs fails here (Operation not permitted))"
    )
    assert store.create_jobs(make_jobs(1, 3)) == [None] * 3


def test_a_batch_whose_write_raises_leaves_no_job_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = open_store(tmp_path)
    real = PythonDirectory.create_many

    def renames_then_raises(self: PythonDirectory, *args: Any) -> Any:
        real(self, *args)
        raise MemoryError

    monkeypatch.setattr(PythonDirectory, "create_many", renames_then_raises)
    with pytest.raises(MemoryError):
        store.create_jobs(make_jobs(1, 3))
    assert job_files(tmp_path / "q") == set()
    monkeypatch.undo()
    assert store.create_jobs(make_jobs(1, 3)) == [None] * 3


def test_the_method_says_a_batch_is_synced_once(tmp_path: Path) -> None:
    store, _ = open_store(tmp_path)
    assert store.write_method().endswith("batches of new files: one file-system sync (syncfs)")


@pytest.mark.parametrize("step", ["syncfs", "fsync_dir"])
def test_a_failed_sync_fails_the_whole_batch_and_leaves_no_job_file(
    tmp_path: Path, step: str
) -> None:
    store, disk = open_store(tmp_path)
    disk.fail = step
    results = store.create_jobs(make_jobs(1, BATCH))
    assert all(isinstance(r, StorageError) and r.args[1] == errno.EIO for r in results)
    assert job_files(tmp_path / "q") == set()
    assert len(disk.steps("rename")) == (0 if step == "syncfs" else BATCH)
    disk.fail = None
    assert store.create_jobs(make_jobs(1, BATCH)) == [None] * BATCH  # the ids were never used
    assert len(job_files(tmp_path / "q")) == BATCH


@pytest.mark.parametrize("step", ["write", "rename"])
def test_a_failed_write_or_rename_fails_only_its_job(tmp_path: Path, step: str) -> None:
    store, disk = open_store(tmp_path)
    disk.fail, disk.fail_nth = step, 7
    results = store.create_jobs(make_jobs(1, BATCH))
    failed = [n for n, r in enumerate(results, 1) if r is not None]
    assert failed == [7]
    assert isinstance(results[6], StorageError)
    assert job_files(tmp_path / "q") == {f"job-{n}" for n in range(1, BATCH + 1) if n != 7}
    assert len(disk.steps("syncfs")) == 1


@pytest.mark.parametrize(
    ("release", "usable"),
    [
        ("6.18.44-fc-v782", True),
        ("5.8.0", True),
        ("5.10.0-28-amd64", True),
        ("5.7.19", False),
        ("4.19.0-25-amd64", False),
        ("3.10.0-1160.el7.x86_64", False),
    ],
)
def test_syncfs_is_used_only_where_it_reports_write_back_errors(release: str, usable: bool) -> None:
    refusal = filesystem_sync_refusal(release)
    assert (refusal is None) == usable
    if not usable:
        assert refusal == f"Linux {release} does not report write-back errors through syncfs"


# -- the daemon ------------------------------------------------------------------------------


def test_an_acknowledged_batch_survives_a_kill(
    daemon_factory: Callable[..., Daemon],
) -> None:
    first = daemon_factory(workers=1).start()
    assert "batches of new files: one file-system sync (syncfs)" in first.log()
    client = first.client()
    blocker = client.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 60}])
    wait_until(lambda: client.query_jobs([blocker], ["status"]) == [["running"]], what="blocker")
    answers = client.submit_many_jobs([[DELAY0]] * BATCH)
    assert all(ok for ok, _ in answers)
    ids = [job_id for _, job_id in answers]
    first.kill9()
    on_disk = load_jobs(Path(first.paths.queue_dir))
    assert {job_id: on_disk[job_id].status for job_id in ids} == dict.fromkeys(ids, "queued")
    second = daemon_factory(workers=2).start()
    assert [second.wait_job(job_id) for job_id in ids] == ["success"] * BATCH
    assert second.wait_job(blocker) == Status.ERROR  # it was running at the kill


def test_the_daemon_syncs_each_file_when_asked(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("--batch-sync", "files").start()
    assert "batches of new files: a sync per file (as asked)" in daemon.log()
    answers = daemon.client().submit_many_jobs([[DELAY0]] * BATCH)
    assert [daemon.wait_job(job_id) for _, job_id in answers] == ["success"] * BATCH
