"""Worker pools under test and task payloads that block, for the tests of
``jobqueue.workerpool`` (``test_workerpool``, ``test_workerpool_slots``): the
``make_pool`` fixture (pools terminated at the end of the test), ``Gate`` (a payload
that signals it started, then blocks until opened), ``run_callable``,
``pool_threads`` and a bounded ``wait_until``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobqueue.workerpool import WorkerPool
from tests.polling import poll_until

#: Upper bound for any single wait in these tests; none should come close.
WAIT = 2.0

MakePool = Callable[..., WorkerPool]


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """``poll_until`` with this module's default bound."""
    return poll_until(predicate, timeout)


@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    """Build pools that are terminated at the end of the test."""
    pools: list[WorkerPool] = []

    def make(num_workers: int, run_task: Callable[[Any], None], name: str = "Tw") -> WorkerPool:
        pool = WorkerPool(name, num_workers, run_task, logger=logging.getLogger("test.workerpool"))
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()


class Gate:
    """A task payload that signals it started, then blocks until opened."""

    def __init__(self, on_open: Callable[[], None] | None = None) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()
        self.on_open = on_open

    def __call__(self) -> None:
        self.started.set()
        assert self.opened.wait(WAIT), "gate never opened"
        if self.on_open is not None:
            self.on_open()


def run_callable(payload: Any) -> None:
    """A run_task for pools whose payloads are callables."""
    payload()


def pool_threads(prefix: str) -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith(prefix)]
