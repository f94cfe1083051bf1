"""The job-file write path: spare files and exchange, the fallback, the compiled helper,
and the order of durable steps against what the queue publishes and acknowledges."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.constants import Status
from jobqueue.daemon import build_core, start_core
from jobqueue.errors import StorageError
from jobqueue.lus import builtin_registry
from jobqueue.model import Job
from jobqueue.storage import layout, startrecords
from jobqueue.storage.base import decode_job
from jobqueue.storage.durable import helper_built
from jobqueue.storage.files import Disk, FileJobStore, read_whole_version
from jobqueue.storage.jobwriter import MAX_REUSED_SPARES, Choice
from tests.daemon_helper import wait_until

#: Every write path: the compiled helper (when built), its Python twin, the fallback.
PATHS = [
    pytest.param(
        Choice.AUTO,
        marks=pytest.mark.skipif(not helper_built(), reason="the C helper was not built"),
        id="compiled",
    ),
    pytest.param(Choice.PYTHON, id="python"),
    pytest.param(Choice.RENAME, id="rename"),
]
DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


def make_job(job_id: int, status: Status = Status.QUEUED) -> Job:
    job = Job.new(job_id, [DELAY0], [1000 + job_id, 0])
    job.ops[0].status = status
    return job


def inodes(queue: Path) -> dict[str, int]:
    """Inode of every plain file in the queue directory, by name."""
    return {p.name: p.stat().st_ino for p in queue.iterdir() if p.is_file()}


def spares(queue: Path) -> list[str]:
    return sorted(name for name in os.listdir(queue) if layout.is_spare_name(name))


@pytest.fixture(params=PATHS)
def method(request: pytest.FixtureRequest) -> Choice:
    choice: Choice = request.param
    return choice


def test_the_method_is_chosen_once_and_logged(
    tmp_path: Path, method: Choice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = FileJobStore(str(tmp_path / "q"), write_method=method)
    expected = {
        Choice.AUTO: "exchange with spare files (renameat2 RENAME_EXCHANGE), compiled helper",
        Choice.PYTHON: "exchange with spare files (renameat2 RENAME_EXCHANGE), Python",
        Choice.RENAME: "rename of temporary files (Python); exchange: not asked for",
    }[method]
    assert store.write_method().split(";")[:-1] == expected.split(";")
    assert f"are written by {expected}" in caplog.text


def test_writes_round_trip_and_leave_no_temp(tmp_path: Path, method: Choice) -> None:
    queue = tmp_path / "q"
    store = FileJobStore(str(queue), write_method=method)
    assert store.create_jobs([make_job(1)]) == [None]
    assert store.create_jobs([make_job(2), make_job(3, Status.RUNNING)]) == [None, None]
    for status in (Status.RUNNING, Status.SUCCESS):
        store.replace_job(make_job(2, status))
    assert store.read_job(2) == make_job(2, Status.SUCCESS)
    assert store.read_job(1) == make_job(1)
    assert not [name for name in os.listdir(queue) if name.endswith(layout.TEMP_SUFFIX)]
    if method == Choice.RENAME:
        assert spares(queue) == []
    assert sorted(job.id for job in FileJobStore(str(queue)).load_jobs()) == [1, 2, 3]


@pytest.mark.parametrize("choice", [p for p in PATHS if p.id != "rename"])
def test_exchange_churns_no_inode(tmp_path: Path, choice: Choice) -> None:
    """Replacing jobs moves inodes between names; it neither makes nor frees any."""
    queue = tmp_path / "q"
    store = FileJobStore(str(queue), write_method=choice)
    store.create_jobs([make_job(1), make_job(2)])
    store.replace_job(make_job(1, Status.RUNNING))  # stocks the pool
    before = set(inodes(queue).values())
    for status in (Status.WAITING, Status.RUNNING, Status.SUCCESS):
        store.replace_job(make_job(1, status))
        store.replace_job(make_job(2, status))
        assert set(inodes(queue).values()) == before
    # A new job takes a spare's inode instead of a new one.
    spare_inodes = {inodes(queue)[name] for name in spares(queue)}
    store.create_jobs([make_job(3)])
    assert inodes(queue)["job-3"] in spare_inodes


def test_spares_are_never_jobs_and_are_reused_at_start(tmp_path: Path) -> None:
    queue = tmp_path / "q"
    store = FileJobStore(str(queue), write_method=Choice.PYTHON)
    store.create_jobs([make_job(1)])
    for _ in range(3):
        store.replace_job(make_job(1, Status.RUNNING))
    kept = spares(queue)
    assert kept
    # Leftovers of a crash: a spare holding a whole old job, a half-written one, many more.
    (queue / kept[0]).write_bytes((queue / "job-1").read_bytes())
    for number in range(1000, 1000 + MAX_REUSED_SPARES):
        (queue / layout.spare_file_name(number)).write_bytes(b'{"id": 1, "op')
    reopened = FileJobStore(str(queue), write_method=Choice.PYTHON)
    assert [job.id for job in reopened.load_jobs()] == [1]
    assert not (queue / "corrupt").exists()
    assert len(spares(queue)) <= MAX_REUSED_SPARES
    before = set(inodes(queue).values())
    reopened.replace_job(make_job(1, Status.SUCCESS))
    assert set(inodes(queue).values()) == before  # a leftover spare was reused
    assert reopened.read_job(1) == make_job(1, Status.SUCCESS)


class FailingDisk(Disk):
    """Fails one step (``write``, ``fsync``, ``exchange``, ``fsync_dir``) while ``armed``."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.armed = False

    def _maybe_fail(self, step: str) -> None:
        if self.armed and step == self.step:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def write(self, fd: int, data: bytes) -> int:
        self._maybe_fail("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync")
        super().fsync(fd)

    def exchange(self, path_a: str, path_b: str) -> None:
        self._maybe_fail("exchange")
        super().exchange(path_a, path_b)

    def fsync_dir(self, path: str) -> None:
        self._maybe_fail("fsync_dir")
        super().fsync_dir(path)


@pytest.mark.parametrize("step", ["write", "fsync", "exchange", "fsync_dir"])
def test_a_failed_exchange_write_keeps_the_old_version(tmp_path: Path, step: str) -> None:
    queue = tmp_path / "q"
    disk = FailingDisk(step)
    store = FileJobStore(str(queue), disk=disk)
    assert "exchange" in store.write_method()
    store.create_jobs([make_job(1)])
    store.replace_job(make_job(1, Status.RUNNING))
    before = (queue / "job-1").read_bytes()
    disk.armed = True
    with pytest.raises(StorageError, match="Input/output error"):
        store.replace_job(make_job(1, Status.SUCCESS))
    assert (queue / "job-1").read_bytes() == before
    disk.armed = False
    if step == "fsync_dir":
        # The spare that was swapped back holds the unreported version; it is not
        # rewritten until a directory sync begun after the failure succeeded.
        aside = {name for name in spares(queue) if (queue / name).read_bytes() != before}
        assert len(aside) == 1
        store.replace_job(make_job(1, Status.ERROR))
    store.replace_job(make_job(1, Status.SUCCESS))
    assert store.read_job(1) == make_job(1, Status.SUCCESS)


# -- the order of durable steps ------------------------------------------------------------


class RecordingDisk(Disk):
    """Records every step of every job write, in order, in a log shared with the queue."""

    def __init__(self, log: list[tuple[str, str]], lock: threading.Lock) -> None:
        self.log = log
        self.lock = lock

    def record(self, event: str, name: str) -> None:
        with self.lock:
            self.log.append((event, name))

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self.record("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))

    def datasync(self, fd: int) -> None:
        """A start record synced is ("start", job-N): durable without a rename."""
        super().datasync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        version = startrecords.decode_record(Path(path).read_bytes())
        if version is None:
            self.record("fsync", os.path.basename(path))
        else:
            self.record("start", layout.job_file_name(decode_job(version).id))

    def replace(self, src: str, dst: str) -> None:
        super().replace(src, dst)
        self.record("rename", os.path.basename(dst))

    def exchange(self, path_a: str, path_b: str) -> None:
        super().exchange(path_a, path_b)
        self.record("rename", os.path.basename(path_b))

    def fsync_dir(self, path: str) -> None:
        self.record("dir-sync-begins", "")
        super().fsync_dir(path)
        self.record("dir-sync-ends", "")


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Any, list[tuple[str, str]], threading.Lock]]:
    """A started queue on a ``RecordingDisk``; its publications go to the same log."""
    log: list[tuple[str, str]] = []
    lock = threading.Lock()
    store = FileJobStore(str(tmp_path / "q"), disk=RecordingDisk(log, lock))
    core = build_core(store, builtin_registry())
    publish = core.live.publish

    def recording_publish(jobs: Any) -> None:
        jobs = list(jobs)
        with lock:
            log.extend(("publish", layout.job_file_name(job.id)) for job in jobs)
        publish(jobs)

    core.live.publish = recording_publish  # type: ignore[method-assign]
    start_core(core, 4)
    yield core, log, lock
    core.queue.prepare_shutdown()
    core.stop()


def check_order(log: list[tuple[str, str]], announced: str) -> int:
    """Each ``announced`` event of a job comes after the job's matching rename and after a
    directory sync that began after that rename, or after its start record was synced;
    returns how many were checked."""
    renames: dict[str, list[int]] = {}
    starts: set[int] = set()
    checked = 0
    for index, (event, name) in enumerate(log):
        if event in ("rename", "start"):
            renames.setdefault(name, []).append(index)
        if event == "start":
            starts.add(index)
        if event != announced:
            continue
        seen = sum(1 for e, n in log[:index] if e == announced and n == name)
        assert len(renames.get(name, [])) > seen, f"{announced} {name} before its rename"
        rename_at = renames[name][seen]
        if rename_at in starts:  # durable once synced: nothing renamed
            checked += 1
            continue
        synced = [
            i
            for i, (e, _) in enumerate(log[rename_at:index], rename_at)
            if e == "dir-sync-begins" and ("dir-sync-ends", "") in log[i:index]
        ]
        assert synced, f"{announced} {name} (#{seen + 1}) before a directory sync after its rename"
        checked += 1
    return checked


def test_nothing_is_published_or_acknowledged_before_its_directory_sync(
    recorded: tuple[Any, list[tuple[str, str]], threading.Lock],
) -> None:
    core, log, lock = recorded
    queue = core.queue
    job_ids = [queue.submit_job([DELAY0, DELAY0]) for _ in range(5)]
    with lock:
        log.extend(("ack", layout.job_file_name(job_id)) for job_id in job_ids)
    for size in (10, 40):  # parallel syncs; one sync of the file system (test_batchsync)
        results = queue.submit_many_jobs([[DELAY0] for _ in range(size)])
        with lock:
            log.extend(("ack", layout.job_file_name(job_id)) for _, job_id in results)
        job_ids += [job_id for _, job_id in results]
    wait_until(
        lambda: all(core.live.status_of(i) == Status.SUCCESS for i in job_ids), what="all jobs"
    )
    queue.cancel_job(queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 60}]))
    with lock:
        events = list(log)
    assert check_order(events, "ack") == 55
    # Per two-opcode job: submitted, running, first done, running, done (at least).
    assert check_order(events, "publish") >= 5 * 5 + 50 * 3
    assert sum(event == "start" for event, _ in events) >= 5 * 2 + 50  # each opcode's start


def test_the_order_check_catches_a_publication_before_the_sync() -> None:
    log = [
        ("rename", "job-1"),
        ("publish", "job-1"),
        ("dir-sync-begins", ""),
        ("dir-sync-ends", ""),
    ]
    with pytest.raises(AssertionError, match="before a directory sync"):
        check_order(log, "publish")
    early = [("dir-sync-begins", ""), ("rename", "job-1"), ("dir-sync-ends", ""), ("ack", "job-1")]
    with pytest.raises(AssertionError, match="before a directory sync"):
        check_order(early, "ack")


def test_without_the_compiled_helper_python_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobqueue.storage.jobwriter.compiled_directory", lambda fd: None)
    store = FileJobStore(str(tmp_path / "q"))
    assert store.write_method().split(";")[0].endswith(", Python")
    store.create_jobs([make_job(1)])
    store.replace_job(make_job(1, Status.SUCCESS))
    assert store.read_job(1) == make_job(1, Status.SUCCESS)


class NoExchangeDisk(Disk):
    """A file system that cannot exchange names (as overlayfs or an old kernel)."""

    def exchange(self, path_a: str, path_b: str) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))


def test_without_exchange_the_fallback_is_chosen(tmp_path: Path) -> None:
    queue = tmp_path / "q"
    store = FileJobStore(str(queue), disk=NoExchangeDisk())
    assert store.write_method() == (
        "rename of temporary files (Python); exchange: not supported here (Invalid argument)"
        "; batches of new files: a sync per file (no spare files)"
    )
    assert spares(queue) == []
    store.create_jobs([make_job(1)])
    store.replace_job(make_job(1, Status.SUCCESS))
    assert store.read_job(1) == make_job(1, Status.SUCCESS)
    assert spares(queue) == []


def test_a_read_that_raced_a_replacement_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name moved on to another inode while the reader read: it reads again."""
    path, other = tmp_path / "job-1", tmp_path / "job-2"
    path.write_bytes(b"whole")
    other.write_bytes(b"other")
    real_lstat = os.lstat
    calls: list[Any] = []

    def lstat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        calls.append(target)
        return real_lstat(other if len(calls) == 1 else target, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    assert read_whole_version(str(path)) == b"whole"
    assert len(calls) == 2


def test_another_process_s_feed_sees_an_exchange(tmp_path: Path) -> None:
    owner = FileJobStore(str(tmp_path / "q"))
    owner.create_jobs([make_job(1)])
    owner.replace_job(make_job(1, Status.RUNNING))  # stocks the spares
    assert "exchange" in owner.write_method()
    feed = FileJobStore(str(tmp_path / "q"), owner=False).change_feed()
    seen = threading.Event()
    feed.start(lambda job_id: seen.set() if job_id == 1 else None)
    try:
        owner.replace_job(make_job(1, Status.SUCCESS))
        assert seen.wait(10)
    finally:
        feed.stop()


def test_only_regular_spares_are_reused(tmp_path: Path) -> None:
    """A directory or a link under a spare's name is never written through."""
    queue = tmp_path / "q"
    FileJobStore(str(queue)).create_jobs([make_job(1)])
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (queue / layout.spare_file_name(500)).symlink_to(victim)
    (queue / layout.spare_file_name(501)).mkdir()
    store = FileJobStore(str(queue))
    for status in (Status.RUNNING, Status.WAITING, Status.SUCCESS):
        store.replace_job(make_job(1, status))
    assert store.read_job(1) == make_job(1, Status.SUCCESS)
    assert victim.read_bytes() == b"keep"
    assert not os.path.lexists(queue / layout.spare_file_name(500))
    assert (queue / layout.spare_file_name(501)).is_dir()  # logged, left alone
