"""SubmitManyJobs never stores a job whose dependency in the same call was refused."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobqueue.daemon import Core, build_core, start_core
from jobqueue.lus import builtin_registry
from jobqueue.queue import JobQueue
from jobqueue.storage.files import Disk, FileJobStore

DUMMY = {"OP_ID": "OP_TEST_DUMMY"}


class FailJob(Disk):
    """Fails the rename that would put one job's file in place."""

    def __init__(self) -> None:
        self.failing: str | None = None
        self.failing_dir_syncs: list[bool] = []  # per coming directory sync: fail it?

    def fsync_dir(self, path: str) -> None:
        if self.failing_dir_syncs and self.failing_dir_syncs.pop(0):
            raise OSError(errno.EIO, "Input/output error")
        super().fsync_dir(path)

    def replace(self, src: str, dst: str) -> None:
        if self.failing is not None and dst.endswith(f"/{self.failing}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        super().replace(src, dst)


@pytest.fixture
def disk() -> FailJob:
    return FailJob()


@pytest.fixture
def make_queue(tmp_path: Path, disk: FailJob) -> Iterator[Callable[..., JobQueue]]:
    made: list[Core] = []

    def make(max_jobs: int = 100) -> JobQueue:
        store = FileJobStore(str(tmp_path / "queue"), disk=disk)
        core = build_core(store, builtin_registry(), max_jobs=max_jobs)
        start_core(core, 0)  # no workers, nothing runs: only submission is under test
        made.append(core)
        return core.queue

    yield make
    for core in made:
        core.queue.prepare_shutdown()
        core.stop()


def test_dependent_of_a_job_refused_for_room_is_refused(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue(max_jobs=1)
    queue.submit_job([DUMMY])
    results = queue.submit_many_jobs([[DUMMY], [{**DUMMY, "depends": [[-1, []]]}], [DUMMY]])
    assert results[0][0] is False and "full" in results[0][1]
    assert results[1][0] is False
    assert "of this submission was refused" in results[1][1]
    assert results[2][0] is False and "full" in results[2][1]
    assert queue.live.count() == 1


def test_dependent_of_a_job_whose_write_failed_is_withdrawn(
    make_queue: Callable[..., JobQueue], disk: FailJob, tmp_path: Path
) -> None:
    queue = make_queue()
    first = queue.submit_job([DUMMY])
    disk.failing = f"job-{first + 1}"  # the next job's file cannot be written
    results = queue.submit_many_jobs(
        [
            [DUMMY],
            [{**DUMMY, "depends": [[-1, ["success"]]]}],
            [{**DUMMY, "depends": [[-1, []]]}],  # depends on the withdrawn one: also refused
            [DUMMY],
        ]
    )
    assert [ok for ok, _ in results] == [False, False, False, True]
    assert "No space left on device" in results[0][1]
    assert f"Dependency job {first + 1} of this submission was refused" in results[1][1]
    assert f"Dependency job {first + 2} of this submission was refused" in results[2][1]
    files = sorted(p.name for p in (tmp_path / "queue").glob("job-*"))
    assert files == sorted([f"job-{first}", f"job-{results[3][1]}"])
    assert queue.live.ids() == [first, results[3][1]]


def test_a_withdrawn_job_whose_removal_was_not_synced_is_still_refused(
    make_queue: Callable[..., JobQueue], disk: FailJob, tmp_path: Path
) -> None:
    """Its file is gone (if not durably): acknowledging it would promise a lost job."""
    queue = make_queue()
    first = queue.submit_job([DUMMY])
    disk.failing = f"job-{first + 1}"
    disk.failing_dir_syncs = [False, True]  # the batch's sync works, the withdrawal's fails
    results = queue.submit_many_jobs([[DUMMY], [{**DUMMY, "depends": [[-1, []]]}]])
    assert [ok for ok, _ in results] == [False, False]
    assert not (tmp_path / "queue" / f"job-{first + 2}").exists()
    assert queue.live.ids() == [first]
