"""Driving a group commit (``jobqueue.storage.groupcommit``) from tests: calls gathered
behind a write the test holds."""

from __future__ import annotations

import threading
from typing import Any

from jobqueue.storage.groupcommit import GroupCommit
from tests.polling import poll_until


def gathered(commit: GroupCommit[Any, Any]) -> int:
    """How many calls wait in ``commit`` for the write in progress to end."""
    with commit._lock:
        return len(commit._gathering)


def start_behind_a_held_write(
    commit: GroupCommit[Any, Any], held: threading.Event, threads: list[threading.Thread]
) -> None:
    """Start ``threads[0]`` and wait for ``held`` (its write has begun and is held),
    then start each other thread once the ones before it wait in ``commit``."""
    threads[0].start()
    assert held.wait(30)
    for number, thread in enumerate(threads[1:], 1):
        thread.start()
        assert poll_until(lambda number=number: gathered(commit) == number, 30)
