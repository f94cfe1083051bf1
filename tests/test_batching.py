"""SubmitJob calls in batches (``jobqueue.luxi.batching``), against a fake queue.

The loop is a real asyncio loop in the test's thread, as the server's loop
thread calls ``add``; the runner is a real thread of a real executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.luxi import protocol
from jobqueue.luxi.batching import SubmissionBatches
from jobqueue.luxi.connection import Answer, error_answer
from jobqueue.submission import JobSubmission

WAIT = 5.0


class BlockingQueue:
    """``submit_each`` that records each batch, can hold one until told, and answers ids.

    ``answers[n]`` replaces the results of batch ``n`` (from 0); ``raising[n]``
    is raised by it instead.
    """

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.threads: list[int] = []  # the thread that submitted each batch
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.answers: dict[int, list[Any]] = {}
        self.raising: dict[int, BaseException] = {}
        self._next_id = 100
        self._lock = threading.Lock()

    def submit_each(self, submissions: list[JobSubmission]) -> list[Any]:
        with self._lock:
            number = len(self.batches)
            self.batches.append([item.ops for item in submissions])
            self.threads.append(threading.get_ident())
            gate, self.gate = self.gate, None  # held by the first batch to come only
            self.entered.set()
        if gate is not None:
            assert gate.wait(WAIT)
        if number in self.raising:
            raise self.raising[number]
        if number in self.answers:
            return self.answers[number]
        with self._lock:
            ids = list(range(self._next_id, self._next_id + len(submissions)))
            self._next_id += len(submissions)
        return ids


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=True)


def make_batches(
    executor: concurrent.futures.Executor,
    failures: list[Any],
    gather: float = 0.0,
    gather_at_most: int = 100,
    largest_batched: int = 1 << 20,
) -> SubmissionBatches:
    def failure(connection: Any, err: Exception) -> Answer:
        failures.append((connection, err))
        return error_answer(err)

    return SubmissionBatches(
        executor,
        encode=lambda result: protocol.encode_success(result, 1 << 20),
        failure=failure,
        gather=gather,
        gather_at_most=gather_at_most,
        largest_batched=largest_batched,
    )


def result_of(answer: Answer) -> tuple[bool, Any]:
    return protocol.parse_response(b"".join(answer).rstrip(b"\x03"))


async def call(
    batches: SubmissionBatches, queue: Any, name: str, size: int = 0
) -> asyncio.Future[Answer]:
    """Call with a request of ``size`` bytes; the name stands for the connection and the job."""
    future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    batches.add(name, future, JobSubmission([name], None), queue, size)  # type: ignore[arg-type]
    return future


def one_then_three(
    batches: SubmissionBatches, queue: BlockingQueue, gate: threading.Event
) -> list[Answer]:
    """Call "a"; while its batch is held at ``gate``, call "b", "c", "d"; then let go.

    The answers of all four, once they have come.
    """
    return asyncio.run(calling_one_then_three(batches, queue, gate))


async def calling_one_then_three(
    batches: SubmissionBatches, queue: BlockingQueue, gate: threading.Event
) -> list[Answer]:
    """``one_then_three`` in a running loop."""
    first = await call(batches, queue, "a")
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, queue.entered.wait, WAIT)
    later = [await call(batches, queue, name) for name in ("b", "c", "d")]
    gate.set()
    return await asyncio.wait_for(asyncio.gather(first, *later), WAIT)


def held_then_last(
    batches: SubmissionBatches,
    queue: BlockingQueue,
    gate: threading.Event,
    held: tuple[str, ...],
    last: str,
) -> tuple[set[Any], list[Answer]]:
    """After ``one_then_three``, call ``held``, then ``last`` 0.2 s later.

    Returns the answers of ``held`` that came within those 0.2 s, and the
    answers of every call once they have all come.
    """

    async def scenario() -> tuple[set[Any], list[Answer]]:
        await calling_one_then_three(batches, queue, gate)
        again = [await call(batches, queue, name) for name in held]
        early, _ = await asyncio.wait(again, timeout=0.2)
        again.append(await call(batches, queue, last))
        return early, await asyncio.wait_for(asyncio.gather(*again), WAIT)

    return asyncio.run(scenario())


def test_calls_arriving_during_a_write_are_submitted_together(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [])

    answers = one_then_three(batches, queue, gate)
    assert queue.batches == [[["a"]], [["b"], ["c"], ["d"]]]
    assert [result_of(answer) for answer in answers] == [(True, n) for n in (100, 101, 102, 103)]


def test_each_call_gets_its_own_result_or_refusal(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    failures: list[Any] = []
    batches = make_batches(executor, failures)
    refusal = errors.OpPrereqError("bad opcode", errors.ECODE_INVAL)
    queue.answers[1] = [7, refusal, 9]

    answers = one_then_three(batches, queue, gate)
    assert [result_of(answer) for answer in answers] == [
        (True, 100),
        (True, 7),
        (False, ["OpPrereqError", ["bad opcode", "wrong_input"]]),
        (True, 9),
    ]
    assert failures == [("c", refusal)]  # the refusal went to that caller's connection


#: Request sizes of a test with ``largest_batched=100``: a batched call, a large one.
SIZES = pytest.mark.parametrize("size", [100, 101], ids=["batched", "large"])


@SIZES
@pytest.mark.parametrize(
    "breakage", ["raises", "wrong count"], ids=["queue raises", "wrong number of results"]
)
def test_a_failed_batch_answers_each_of_its_calls_and_later_ones_are_served(
    executor: concurrent.futures.ThreadPoolExecutor, breakage: str, size: int
) -> None:
    queue = BlockingQueue()
    failures: list[Any] = []
    batches = make_batches(executor, failures, largest_batched=100)
    if breakage == "raises":
        queue.raising[0] = RuntimeError("disk on fire")
    else:
        queue.answers[0] = [1, 2, 3]  # three results for one call

    async def scenario() -> tuple[Answer, Answer]:
        broken = await asyncio.wait_for(await call(batches, queue, "a", size), WAIT)
        served = await asyncio.wait_for(await call(batches, queue, "b", size), WAIT)
        return broken, served

    broken, served = asyncio.run(scenario())
    success, result = result_of(broken)
    assert not success and result[0] == "GenericError"
    assert result_of(served) == (True, 100)
    assert [connection for connection, _ in failures] == ["a"]


@SIZES
def test_a_call_after_the_executor_stopped_is_refused(
    executor: concurrent.futures.ThreadPoolExecutor, size: int
) -> None:
    queue = BlockingQueue()
    failures: list[Any] = []
    batches = make_batches(executor, failures, largest_batched=100)
    executor.shutdown(wait=True)

    async def scenario() -> Answer:
        return await asyncio.wait_for(await call(batches, queue, "a", size), WAIT)

    success, result = result_of(asyncio.run(scenario()))
    assert not success and result[0] == "LuxiError"
    assert queue.batches == []


def test_a_batch_that_fails_as_a_whole_is_reported_once(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    queue.raising[1] = RuntimeError("disk on fire")  # the second batch: b, c, d
    failures: list[Any] = []
    batches = make_batches(executor, failures)

    answers = one_then_three(batches, queue, gate)
    assert result_of(answers[0]) == (True, 100)
    assert {result_of(answer)[1][0] for answer in answers[1:]} == {"GenericError"}
    assert [connection for connection, _ in failures] == ["b"]


class Interrupted(BaseException):
    """Not an ``Exception``: what a batch must not swallow (as ``SystemExit``)."""


def test_a_batch_interrupted_by_a_base_exception_answers_its_calls_and_those_behind_it(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()  # holds the batch of "a" alone
    queue.raising[0] = Interrupted()
    batches = make_batches(executor, [])

    async def scenario() -> tuple[Answer, Answer]:
        interrupted = await call(batches, queue, "a")
        assert await asyncio.get_running_loop().run_in_executor(None, queue.entered.wait, WAIT)
        behind = await call(batches, queue, "b")  # waits behind it
        gate.set()
        return await asyncio.wait_for(interrupted, WAIT), await asyncio.wait_for(behind, WAIT)

    interrupted, behind = asyncio.run(scenario())
    assert result_of(interrupted) == (
        False,
        ["LuxiError", ["Submission interrupted (Interrupted)"]],
    )
    assert result_of(behind) == (True, 100)  # without another call to start a runner


# -- gathering the last batch's callers -------------------------------------------
# The runner may wait far longer than WAIT here, so a test that ends within
# WAIT shows that the wait was cut short, or never began.
LONG_GATHER = 20 * WAIT


def test_the_runner_waits_for_the_last_batchs_callers_to_call_again(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], gather=LONG_GATHER)

    # Batches a, then b c d; then b and c call again, and "d" last: the batch goes.
    early, answers = held_then_last(batches, queue, gate, held=("b", "c"), last="d")
    assert early == set()
    assert queue.batches == [[["a"]], [["b"], ["c"], ["d"]], [["b"], ["c"], ["d"]]]
    assert [result_of(answer) for answer in answers] == [(True, n) for n in (104, 105, 106)]


def test_a_new_caller_does_not_end_the_wait_but_joins_the_batch(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], gather=LONG_GATHER)

    # "e" is new; "d" is still away until last.
    early, answers = held_then_last(batches, queue, gate, held=("b", "c", "e"), last="d")
    assert early == set()
    assert queue.batches[-1] == [["b"], ["c"], ["e"], ["d"]]
    assert len(answers) == 4


def test_after_a_batch_of_one_call_the_runner_does_not_wait(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    batches = make_batches(executor, [], gather=LONG_GATHER)

    async def scenario() -> list[Answer]:
        return [await asyncio.wait_for(await call(batches, queue, name), WAIT) for name in "abc"]

    answers = asyncio.run(scenario())  # each call alone: answered within WAIT, not LONG_GATHER
    assert queue.batches == [[["a"]], [["b"]], [["c"]]]
    assert [result_of(answer) for answer in answers] == [(True, n) for n in (100, 101, 102)]


def test_a_caller_that_does_not_come_back_is_waited_for_until_the_gathering_ends(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], gather=2.0)  # from the answers of b, c, d

    # "b" is held for c and d; "d" is gone, so with "c" back both wait out the gathering.
    early, answers = held_then_last(batches, queue, gate, held=("b",), last="c")
    assert early == set()
    assert queue.batches[-1] == [["b"], ["c"]]
    assert [result_of(answer) for answer in answers] == [(True, 104), (True, 105)]


def test_callers_coming_back_after_the_gathering_ended_are_not_held(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], gather=1.0)

    async def scenario() -> set[Any]:
        await calling_one_then_three(batches, queue, gate)
        await asyncio.sleep(1.05)  # past the gathering: waiting for c and d is over
        answered, _ = await asyncio.wait([await call(batches, queue, "b")], timeout=0.9)
        return answered

    answered = asyncio.run(scenario())
    assert len(answered) == 1  # not held for a whole gathering of its own
    assert queue.batches[-1] == [["b"]]


def test_enough_calls_waiting_end_the_wait(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], gather=LONG_GATHER, gather_at_most=2)

    async def scenario() -> list[Answer]:
        await calling_one_then_three(batches, queue, gate)
        again = [await call(batches, queue, name) for name in ("b", "c")]  # "d" is still away
        return await asyncio.wait_for(asyncio.gather(*again), WAIT)

    answers = asyncio.run(scenario())
    assert [result_of(answer) for answer in answers] == [(True, 104), (True, 105)]
    assert queue.batches[-1] == [["b"], ["c"]]


def test_a_large_request_is_submitted_alone_beside_a_held_batch(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], largest_batched=100)

    async def scenario() -> tuple[Answer, list[Answer], bool]:
        held = await call(batches, queue, "a")
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, queue.entered.wait, WAIT)
        small = await call(batches, queue, "b", size=100)  # waits for the next batch
        large = await call(batches, queue, "big", size=101)  # does not
        alone = await asyncio.wait_for(large, WAIT)  # while "a" is still held
        small_waited = not small.done()
        gate.set()
        return alone, await asyncio.wait_for(asyncio.gather(held, small), WAIT), small_waited

    alone, others, small_waited = asyncio.run(scenario())
    assert queue.batches == [[["a"]], [["big"]], [["b"]]]
    assert queue.threads[1] != threading.get_ident()  # not on the loop's thread
    assert small_waited
    ids = [result_of(answer) for answer in (alone, *others)]
    assert sorted(ids) == [(True, 100), (True, 101), (True, 102)]


def test_a_large_request_of_a_caller_of_the_last_batch_ends_the_wait_for_it(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], gather=LONG_GATHER, largest_batched=100)

    async def scenario() -> list[Answer]:
        await calling_one_then_three(batches, queue, gate)  # the last batch: b, c, d
        again = [await call(batches, queue, name) for name in ("b", "c")]
        again.append(await call(batches, queue, "d", size=101))  # "d" is back, alone
        return await asyncio.wait_for(asyncio.gather(*again), WAIT)

    answers = asyncio.run(scenario())  # within WAIT: nobody waited for "d" to join
    assert sorted(queue.batches[2:]) == [[["b"], ["c"]], [["d"]]]
    assert all(result_of(answer)[0] for answer in answers)


def test_large_requests_are_submitted_one_at_a_time_beside_the_batches(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    queue = BlockingQueue()
    queue.gate = gate = threading.Event()
    batches = make_batches(executor, [], largest_batched=100)

    async def scenario() -> tuple[bool, Answer, list[Answer]]:
        held = await call(batches, queue, "big1", size=101)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, queue.entered.wait, WAIT)
        later = [await call(batches, queue, name, size=101) for name in ("big2", "big3")]
        small = await asyncio.wait_for(await call(batches, queue, "s"), WAIT)
        large_waited = not any(future.done() for future in later)
        gate.set()
        return large_waited, small, await asyncio.wait_for(asyncio.gather(held, *later), WAIT)

    large_waited, small, large = asyncio.run(scenario())
    assert large_waited  # behind "big1", although threads were free
    assert queue.batches == [[["big1"]], [["s"]], [["big2"]], [["big3"]]]
    assert len(set(queue.threads[2:] + queue.threads[:1])) == 1  # one runner of large calls
    assert all(result_of(answer)[0] for answer in (small, *large))
