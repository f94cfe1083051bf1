"""Tests for jobqueue.watcher with real inotify events on a temporary queue directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.watcher import JobFileWatcher

#: Bound on every wait that should succeed, so a bug fails instead of hanging.
WAIT = 5.0
#: A wait that is expected to time out.
SHORT = 0.2


@pytest.fixture
def queue_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="jq", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def replace_job_file(queue_dir: str, job_id: int, content: str = "{}") -> None:
    """Write ``job-<id>`` the way storage does: temp file, then rename over it."""
    temp = os.path.join(queue_dir, f".job-{job_id}.tmp")
    with open(temp, "w", encoding="ascii") as handle:
        handle.write(content)
    os.replace(temp, os.path.join(queue_dir, f"job-{job_id}"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 4 * WAIT))


async def started(queue_dir: str) -> JobFileWatcher:
    watcher = JobFileWatcher(queue_dir, asyncio.get_running_loop())
    watcher.start()
    return watcher


def test_rename_replace_wakes_the_subscriber(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        with watcher.subscribe(7) as subscription:
            replace_job_file(queue_dir, 7)
            assert await subscription.wait(WAIT)
            # The change was reported once; nothing new has happened since.
            assert not await subscription.wait(SHORT)
            replace_job_file(queue_dir, 7)
            assert await subscription.wait(WAIT)
        watcher.stop()

    run(scenario())


def test_wait_times_out_without_a_change(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        with watcher.subscribe(1) as subscription:
            loop = asyncio.get_running_loop()
            begin = loop.time()
            assert not await subscription.wait(SHORT)
            assert loop.time() - begin >= SHORT * 0.9
            assert not await subscription.wait(0)
        watcher.stop()

    run(scenario())


def test_a_change_before_wait_is_not_missed(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        subscription, barrier = watcher.subscribe(3), watcher.subscribe(3)
        replace_job_file(queue_dir, 3)
        # Once the barrier has woken, the event was dispatched to both.
        assert await barrier.wait(WAIT)
        assert await subscription.wait(0)
        subscription.close()
        barrier.close()
        watcher.stop()

    run(scenario())


def test_other_jobs_and_other_names_do_not_wake(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        with watcher.subscribe(1) as subscription:
            replace_job_file(queue_dir, 11)  # job-11 is not job-1
            replace_job_file(queue_dir, 10)
            with open(os.path.join(queue_dir, "serial"), "w", encoding="ascii") as handle:
                handle.write("1\n")
            with open(os.path.join(queue_dir, "job-1.tmp"), "w", encoding="ascii") as handle:
                handle.write("{}")
            assert not await subscription.wait(SHORT)
        watcher.stop()

    run(scenario())


def test_archive_and_delete_wake(queue_dir: str) -> None:
    async def scenario() -> None:
        os.makedirs(os.path.join(queue_dir, "archive", "0"))
        replace_job_file(queue_dir, 5)
        replace_job_file(queue_dir, 6)
        watcher = await started(queue_dir)
        with watcher.subscribe(5) as archived, watcher.subscribe(6) as deleted:
            os.rename(os.path.join(queue_dir, "job-5"), os.path.join(queue_dir, "archive/0/job-5"))
            os.unlink(os.path.join(queue_dir, "job-6"))
            assert await archived.wait(WAIT)
            assert await deleted.wait(WAIT)
        watcher.stop()

    run(scenario())


def test_many_subscriptions_on_one_job_all_wake(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        subscriptions = [watcher.subscribe(9) for _ in range(500)]
        assert watcher.subscription_count() == 500
        replace_job_file(queue_dir, 9)
        woken = await asyncio.gather(*(sub.wait(WAIT) for sub in subscriptions))
        assert all(woken)
        for subscription in subscriptions:
            subscription.close()
        assert watcher.subscription_count() == 0
        watcher.stop()

    run(scenario())


def test_many_jobs_each_wake_only_their_waiter(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        subscriptions = {job_id: watcher.subscribe(job_id) for job_id in range(1, 501)}
        changed = set(range(1, 501, 2))
        for job_id in sorted(changed):
            replace_job_file(queue_dir, job_id)
        woken = await asyncio.gather(*(subscriptions[job_id].wait(WAIT) for job_id in changed))
        assert all(woken)
        for job_id, subscription in subscriptions.items():
            if job_id not in changed:
                assert not await subscription.wait(0)
            subscription.close()
        watcher.stop()

    run(scenario())


def test_close_unsubscribes(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        kept, closed = watcher.subscribe(4), watcher.subscribe(4)
        closed.close()
        closed.close()  # idempotent
        assert watcher.subscription_count() == 1
        replace_job_file(queue_dir, 4)
        assert await kept.wait(WAIT)
        assert not await closed.wait(0)
        kept.close()
        assert watcher.subscription_count() == 0
        watcher.stop()

    run(scenario())


def test_stop_closes_the_fd_and_wakes_waiters(queue_dir: str) -> None:
    async def scenario() -> None:
        before = open_fds()
        watcher = await started(queue_dir)
        assert watcher.running
        assert open_fds() == before + 1
        subscription = watcher.subscribe(2)
        waiting = asyncio.ensure_future(subscription.wait(WAIT))
        await asyncio.sleep(0)
        watcher.stop()
        assert await asyncio.wait_for(waiting, WAIT)
        assert not watcher.running
        assert open_fds() == before
        watcher.stop()  # idempotent
        subscription.close()

    run(scenario())


def test_start_twice_is_a_bug(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        with pytest.raises(errors.ProgrammerError):
            watcher.start()
        watcher.stop()

    run(scenario())


def test_missing_directory_is_an_error_and_leaks_nothing(queue_dir: str) -> None:
    async def scenario() -> None:
        before = open_fds()
        watcher = JobFileWatcher(os.path.join(queue_dir, "missing"), asyncio.get_running_loop())
        with pytest.raises(errors.JobQueueError, match="Cannot watch"):
            watcher.start()
        assert open_fds() == before
        assert not watcher.running

    run(scenario())


def test_generation_moves_with_every_batch_of_events_read(queue_dir: str) -> None:
    async def scenario() -> None:
        watcher = await started(queue_dir)
        with watcher.subscribe(7) as subscription:
            before = watcher.generation
            assert not await subscription.wait(SHORT)
            assert watcher.generation == before  # nothing read, nothing counted
            replace_job_file(queue_dir, 7)
            assert await subscription.wait(WAIT)
            after_change = watcher.generation
            assert after_change > before
            watcher.stop()  # wakes everyone: looks before and after must not be shared
            assert watcher.generation > after_change

    run(scenario())
