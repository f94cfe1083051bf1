"""The server's loop-side fan-out of job changes to WaitForJobChange callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from jobqueue.luxi.jobwaits import JobWaits

WAIT = 5.0
SHORT = 0.2


class Source:
    """A watch source like the queue's: one callback list per job, called from any thread."""

    def __init__(self) -> None:
        self.watches: dict[int, list[SourceWatch]] = {}
        self.opened = 0

    def watch(self, job_id: int, on_change: Callable[[], None]) -> SourceWatch:
        self.opened += 1
        watch = SourceWatch(self, job_id, on_change)
        self.watches.setdefault(job_id, []).append(watch)
        return watch

    def publish(self, job_id: int, state: Any) -> None:
        for watch in list(self.watches.get(job_id, ())):
            watch.latest = state
            watch.on_change()


class SourceWatch:
    def __init__(self, source: Source, job_id: int, on_change: Callable[[], None]) -> None:
        self.source, self.job_id, self.on_change = source, job_id, on_change
        self.latest: Any = None

    def close(self) -> None:
        self.source.watches[self.job_id].remove(self)


def run(scenario: Callable[[JobWaits, Source], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        source = Source()
        await scenario(JobWaits(source.watch, asyncio.get_running_loop()), source)

    asyncio.run(asyncio.wait_for(main(), 4 * WAIT))


def from_another_thread(action: Callable[[], None]) -> None:
    thread = threading.Thread(target=action)
    thread.start()
    thread.join()


def test_a_change_from_another_thread_wakes_the_waiter_with_the_new_state() -> None:
    async def scenario(waits: JobWaits, source: Source) -> None:
        with waits.waiter(7) as waiter:
            assert waiter.latest is None
            from_another_thread(lambda: source.publish(7, "running"))
            assert await waiter.wait(WAIT)
            assert waiter.latest == "running"
            assert not await waiter.wait(SHORT)  # reported once
        assert source.watches[7] == []

    run(scenario)


def test_a_change_before_wait_is_not_missed() -> None:
    async def scenario(waits: JobWaits, source: Source) -> None:
        first, second = waits.waiter(3), waits.waiter(3)
        source.publish(3, "x")
        assert await first.wait(WAIT)
        assert await second.wait(0)
        first.close()
        second.close()

    run(scenario)


def test_many_waiters_share_one_watch_and_one_hand_off_per_change() -> None:
    async def scenario(waits: JobWaits, source: Source) -> None:
        loop = asyncio.get_running_loop()
        scheduled = 0
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal scheduled
            scheduled += 1
            return real(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        waiters = [waits.waiter(9) for _ in range(500)]
        assert source.opened == 1 and waits.waiter_count() == 500
        from_another_thread(lambda: [source.publish(9, n) for n in range(3)])
        assert all(await asyncio.gather(*(waiter.wait(WAIT) for waiter in waiters)))
        assert scheduled == 1  # three changes before the loop ran: one wake-up
        for waiter in waiters:
            assert waiter.latest == 2
            waiter.close()
        assert waits.waiter_count() == 0 and source.watches[9] == []

    run(scenario)


def test_other_jobs_do_not_wake() -> None:
    async def scenario(waits: JobWaits, source: Source) -> None:
        with waits.waiter(1) as one, waits.waiter(2) as two:
            source.publish(2, "done")
            assert await two.wait(WAIT)
            assert not await one.wait(0)

    run(scenario)


def test_wake_all_wakes_everyone() -> None:
    async def scenario(waits: JobWaits, source: Source) -> None:
        waiters = [waits.waiter(job_id) for job_id in range(10)]
        pending = asyncio.gather(*(waiter.wait(WAIT) for waiter in waiters))
        waits.wake_all()
        assert all(await pending)
        for waiter in waiters:
            waiter.close()
            waiter.close()  # idempotent

    run(scenario)
