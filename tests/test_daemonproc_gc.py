"""The daemon's garbage-collector policy (``daemonproc.settle_gc``, ``FreezeSlowCollections``).

Freezing objects out of collections is only safe for objects that reference
counting frees on its own: the last test checks that the records of jobs
that ran, finished and were archived never end up in a reference cycle.
These tests change the test process's collector and put it back after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from jobqueue import daemonproc
from jobqueue.daemonproc import FreezeSlowCollections
from jobqueue.jobstep import ActiveJob, LogBacklog
from jobqueue.livejobs import IndexEntry
from jobqueue.model import Job, QueuedOpCode
from jobqueue.opcodes.record import OpCode
from tests.lu_harness import MakeQueue, wait_for_status
from tests.lu_harness import make_queue as make_queue  # the fixture

JOB_RECORDS = (Job, QueuedOpCode, OpCode, ActiveJob, LogBacklog, IndexEntry)


@pytest.fixture
def collector() -> Iterator[None]:
    """Nothing frozen before; afterwards the collector as it was: nothing frozen, the same
    callbacks, thresholds, debug flags, found garbage, and enabled or not."""
    if gc.get_freeze_count():
        pytest.skip("something in this process froze objects already")
    callbacks, threshold, debug = list(gc.callbacks), gc.get_threshold(), gc.get_debug()
    enabled, garbage = gc.isenabled(), list(gc.garbage)
    yield
    gc.callbacks[:] = callbacks
    gc.set_threshold(*threshold)
    gc.set_debug(debug)
    gc.garbage[:] = garbage
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.usefixtures("collector")
def test_only_a_slow_full_collection_freezes_what_it_left() -> None:
    clock = Clock()
    freeze = FreezeSlowCollections(0.05, clock=clock)
    for generation in (0, 1):  # young collections, however slow, change nothing
        freeze("start", {"generation": generation})
        clock.now += 1.0
        freeze("stop", {"generation": generation})
    freeze("start", {"generation": 2})
    clock.now += 0.049
    freeze("stop", {"generation": 2})
    assert freeze.freezes == 0 and gc.get_freeze_count() == 0
    kept = [[index] for index in range(1000)]  # tracked objects, alive
    freeze("start", {"generation": 2})
    clock.now += 0.06
    freeze("stop", {"generation": 2})
    assert freeze.freezes == 1 and gc.get_freeze_count() >= len(kept)


@pytest.mark.usefixtures("collector")
def test_freezing_from_within_a_real_collection_works() -> None:
    freeze = FreezeSlowCollections(0.0)  # every full collection is slow enough
    gc.disable()  # only the collection below, none of the allocations'
    gc.callbacks.append(freeze)
    alive = [{"n": index} for index in range(1000)]
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # the cycle was freed before the freeze
    assert freeze.freezes == 1 and gc.get_freeze_count() >= len(alive)
    assert gc.collect() == 0  # and collecting again still works


@pytest.mark.usefixtures("collector")
def test_settle_gc_installs_the_policy_once() -> None:
    daemonproc.settle_gc()
    daemonproc.settle_gc()
    installed = [cb for cb in gc.callbacks if isinstance(cb, FreezeSlowCollections)]
    assert len(installed) == 1 and gc.isenabled() and gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector")
def test_records_of_finished_and_archived_jobs_are_in_no_cycle(make_queue: MakeQueue) -> None:
    queue = make_queue(workers=2)
    delay = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
    logging = {"OP_ID": "OP_TEST_DUMMY", "messages": ["one", "two"]}
    failing = {"OP_ID": "OP_TEST_DUMMY", "fail": True}
    gc.collect()
    gc.disable()  # from here, only reference counting frees, until the collection below
    job_ids = [queue.submit_job([delay, logging]) for _ in range(20)]
    job_ids += [queue.submit_job([failing, delay]) for _ in range(5)]
    for job_id in job_ids:
        wait_for_status(queue, job_id, ("success", "error"))
    for job_id in job_ids:
        assert queue.archive_job(job_id)
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage
    gc.garbage.clear()
    gc.collect()
    in_cycles = [type(obj).__name__ for obj in gc.garbage if isinstance(obj, JOB_RECORDS)]
    assert in_cycles == []
