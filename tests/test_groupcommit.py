"""Group commit: concurrent calls written together, each answered with its own results."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest

from jobqueue.storage.groupcommit import GroupCommit
from tests.grouping import gathered, start_behind_a_held_write


class HeldWrite:
    """A write function that records its calls; the first one waits for ``release``."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], str]] = []  # (items, writing thread's name)
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.fail_with: BaseException | None = None

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.calls.append((list(items), threading.current_thread().name))
        if len(self.calls) == 1:
            self.first_started.set()
            assert self.release.wait(30)
        if self.fail_with is not None:
            raise self.fail_with
        return [item * 10 for item in items]


def call_in_thread(
    commit: GroupCommit[int, int], items: list[int], name: str, outcomes: dict[str, object]
) -> threading.Thread:
    """A thread (not started) that calls ``commit`` and keeps what it got in ``outcomes``."""

    def call() -> None:
        try:
            outcomes[name] = commit(items)
        except Exception as err:
            outcomes[name] = err

    return threading.Thread(target=call, name=name)


def start_held_group(
    write: HeldWrite, late: dict[str, list[int]]
) -> tuple[GroupCommit[int, int], list[threading.Thread], dict[str, object]]:
    """A first call held in its write, then the ``late`` calls gathered behind it."""
    commit = GroupCommit(write)
    outcomes: dict[str, object] = {}
    calls = {"first": [1], **late}
    threads = [call_in_thread(commit, items, name, outcomes) for name, items in calls.items()]
    start_behind_a_held_write(commit, write.first_started, threads)
    return commit, threads, outcomes


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()


def test_a_lone_call_is_written_at_once_by_its_own_thread() -> None:
    write = HeldWrite()
    write.release.set()
    commit = GroupCommit(write)
    assert commit([1, 2]) == [10, 20]
    assert write.calls == [([1, 2], threading.current_thread().name)]
    assert commit([]) == []  # nothing to write: no call
    assert len(write.calls) == 1


def test_calls_arriving_during_a_write_are_written_next_in_one_call() -> None:
    write = HeldWrite()
    late = {"b": [2, 3], "c": [4], "d": [5, 6, 7]}
    _, threads, outcomes = start_held_group(write, late)
    write.release.set()
    join(threads)
    assert outcomes == {"first": [10], "b": [20, 30], "c": [40], "d": [50, 60, 70]}
    (first_items, first_thread), (group_items, group_thread) = write.calls
    assert (first_items, first_thread) == ([1], "first")
    # In the order the callers came, written by the first of them, not by "first".
    assert group_items == [2, 3, 4, 5, 6, 7]
    assert group_thread == "b"


def test_a_failed_write_fails_every_call_of_its_group_and_the_next_works() -> None:
    write = HeldWrite()
    write.fail_with = OSError(5, "Input/output error")
    commit, threads, outcomes = start_held_group(write, {"b": [2], "c": [3]})
    write.release.set()
    join(threads)
    assert all(outcome is write.fail_with for outcome in outcomes.values())
    write.fail_with = None
    assert commit([4]) == [40]


def test_a_write_with_too_few_results_fails_its_calls() -> None:
    commit: GroupCommit[int, int] = GroupCommit(lambda items: list(items)[1:])
    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        commit([1, 2])
    assert GroupCommit(lambda items: list(items))([3]) == [3]


def test_many_threads_each_get_exactly_their_results() -> None:
    written: list[int] = []  # the size of each write
    lock = threading.Lock()

    def write(items: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        with lock:
            written.append(len(items))
        return [(caller, value + 1) for caller, value in items]

    commit = GroupCommit(write)
    wrong: list[str] = []
    submitted = [0] * 16

    def caller(number: int) -> None:
        chooser = random.Random(number)
        for round_number in range(200):
            items = [(number, round_number * 100 + k) for k in range(chooser.randint(1, 4))]
            submitted[number] += len(items)
            if commit(items) != [(number, value + 1) for _, value in items]:
                wrong.append(f"thread {number}, round {round_number}")

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    join(threads)
    assert wrong == []
    assert sum(written) == sum(submitted)  # every item written exactly once
    assert gathered(commit) == 0
    assert not commit._writing
