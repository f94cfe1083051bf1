"""Spare files made ahead of need: the reserve's thread, a batch's own spares, the option."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from jobqueue.constants import Status
from jobqueue.model import Job
from jobqueue.storage import layout
from jobqueue.storage.files import FileJobStore
from jobqueue.storage.jobwriter import Choice
from jobqueue.storage.spares import SparePool, SpareReserve, make_spares
from tests.daemon_helper import Daemon, state_dir_under, wait_until

DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
LOG = logging.getLogger("test-spares")


def make_job(job_id: int, status: Status = Status.QUEUED) -> Job:
    job = Job.new(job_id, [DELAY0], [1000 + job_id, 0])
    job.ops[0].status = status
    return job


def spare_inodes(queue: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in queue.iterdir() if layout.is_spare_name(p.name)}


def reserve_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "spare-reserve"]


@pytest.mark.parametrize("choice", [Choice.AUTO, Choice.PYTHON])
def test_new_jobs_take_the_reserve_which_is_refilled_once_idle(
    tmp_path: Path, choice: Choice
) -> None:
    queue = tmp_path / "q"
    store = FileJobStore(str(queue), write_method=choice, spare_reserve=8)
    try:
        list(store.load_jobs())  # starts the writer, and with it the reserve
        wait_until(lambda: len(spare_inodes(queue)) >= 8, what="a full reserve")
        made = set(spare_inodes(queue).values())
        store.create_jobs([make_job(1)])
        store.create_jobs([make_job(2), make_job(3), make_job(4)])
        taken = {(queue / f"job-{n}").stat().st_ino for n in range(1, 5)}
        assert taken <= made  # no new job file made an inode of its own
        wait_until(lambda: len(spare_inodes(queue)) >= 8, what="the reserve refilled")
        for job_id in range(1, 5):
            store.replace_job(make_job(job_id, Status.SUCCESS))
            assert store.read_job(job_id) == make_job(job_id, Status.SUCCESS)
    finally:
        store.close()
    assert reserve_threads() == []


def test_a_batch_makes_the_spares_it_lacks_before_writing(tmp_path: Path) -> None:
    queue = tmp_path / "q"
    store = FileJobStore(str(queue), write_method=Choice.PYTHON)  # no reserve
    try:
        list(store.load_jobs())
        store.create_jobs([make_job(n) for n in range(1, 21)])
        assert sorted(job.id for job in store.load_jobs()) == list(range(1, 21))
        assert spare_inodes(queue) == {}  # every made spare became a job file
        assert reserve_threads() == []
    finally:
        store.close()


def test_refill_waits_for_an_idle_queue_and_stop_ends_it(tmp_path: Path) -> None:
    pool = SparePool([], 0)
    reserve = SpareReserve(str(tmp_path), pool, 4, LOG, idle=3600)
    wait_until(lambda: pool.free() == 4, what="the first fill (nothing was written yet)")
    for _ in range(4):
        pool.take()
    reserve.wake()  # a write just now: the refill waits an hour
    reserve.stop()  # ...but stop does not
    assert pool.free() == 0
    assert len(list(tmp_path.iterdir())) == 4
    assert reserve_threads() == []


def test_refill_of_a_reserve_makes_only_what_is_missing(tmp_path: Path) -> None:
    pool = SparePool([], 0)
    assert make_spares(str(tmp_path), pool, 3) == 3
    reserve = SpareReserve(str(tmp_path), pool, 5, LOG, idle=0)
    try:
        wait_until(lambda: pool.free() == 5, what="two more spares")
        taken = [pool.take()[0] for _ in range(5)]
        reserve.wake()
        wait_until(lambda: pool.free() == 5, what="the reserve refilled")
    finally:
        reserve.stop()
    assert len(list(tmp_path.iterdir())) == 10
    assert not set(taken) & {pool.take()[0] for _ in range(5)}


def test_a_refused_refill_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = tmp_path / "gone"  # making a file there fails: ENOENT
    pool = SparePool([], 0)
    caplog.set_level(logging.WARNING, logger=LOG.name)
    reserve = SpareReserve(str(gone), pool, 4, LOG, idle=0)
    try:
        wait_until(lambda: caplog.records, what="the refusal logged")
        reserve.wake()
        reserve.wake()
    finally:
        reserve.stop()
    assert [r.getMessage() for r in caplog.records] == [
        f"Cannot make spare files in {gone}; new job files are made as they come"
    ]
    assert pool.free() == 0


def test_daemon_keeps_the_spares_its_option_asks_for(tmp_path: Path) -> None:
    state = state_dir_under(tmp_path)
    queue = state / "queue"
    daemon = Daemon(state, "--spare-files", "6", workers=1).start()
    try:
        wait_until(lambda: len(spare_inodes(queue)) == 6, what="6 spare files")
        made = set(spare_inodes(queue).values())
        job_id = daemon.client().submit_job([DELAY0])
        assert (queue / f"job-{job_id}").stat().st_ino in made
        wait_until(lambda: len(spare_inodes(queue)) == 6, what="the spare taken replaced")
    finally:
        daemon.stop()
