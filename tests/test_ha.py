"""Roles: standby and master on one store, takeover and stepping down, in one process.

Two daemons share a memory store (a ``MemoryBacking``), as two hosts share
etcd; each has its own view of the jobs, its own ``Roles`` and a stand-in
for its LUXI server that records what it would serve. The real-daemon
failover tests on a real etcd cluster are in ``test_ha_etcd.py``.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.daemon import Core, build_core, start_core
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import JobQueueError, NotMasterError, StorageError
from jobqueue.ha import Roles
from jobqueue.jobreader import JobReader, stored_status
from jobqueue.livejobs import LiveJobs
from jobqueue.locking import LockManager
from jobqueue.lus import builtin_registry
from jobqueue.metrics import Metrics
from jobqueue.standby import StandbyQueue, StoreMirror
from jobqueue.storage.base import PruneResult
from jobqueue.storage.memory import MemoryBacking, MemoryJobStore
from tests.polling import poll_until

WAIT = 15.0
LONG = {"OP_ID": "OP_TEST_DELAY", "duration": 60}
QUICK = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


class Stop:
    """A stop request, as the daemon's signal handlers make one."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.now = threading.Event()

    def again(self) -> str:
        return "stop again"


class Node:
    """One daemon: a store handle, roles running in a thread, what it serves."""

    def __init__(
        self,
        name: str,
        backing: MemoryBacking,
        *,
        standby_allowed: bool = True,
        tidy_interval: float = 3600.0,
    ) -> None:
        registry = builtin_registry()
        self.name = name
        self.store = MemoryJobStore(backing)
        self.leadership = self.store.leadership(name)
        self.live = LiveJobs(registry.summarize)
        self.served: list[tuple[Any, Any]] = []
        self.terms: list[Core] = []
        self.stop = Stop()
        self.metrics = Metrics()
        reader = JobReader(
            self.live,
            self.store,
            LockManager(),
            DependencyManager(functools.partial(stored_status, self.live, self.store)),
            registry.summarize,
        )

        def make_term(message: str) -> Core:
            core = build_core(self.store, registry, live=self.live, name=name, metrics=self.metrics)
            start_core(core, 2, message)
            self.terms.append(core)
            return core

        self.roles = Roles(
            self.store,
            self.leadership,
            StoreMirror(self.store, self.live),
            StandbyQueue(self.store, self.leadership.holder, self.live, metrics=self.metrics),
            reader,
            make_term=make_term,
            serve=lambda queue, reader: self.served.append((queue, reader)),
            standby_allowed=standby_allowed,
            recovery_message=constants.MSG_FAILED_OVER,
            shutdown_timeout=5,
            kill_grace=1,
            logger=logging.getLogger(f"test.ha.{name}"),
            metrics=self.metrics,
            tidy_interval=tidy_interval,
        )
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"roles-{name}")

    def _run(self) -> None:
        try:
            self.roles.run(self.stop)
        except BaseException as err:  # reported by the test
            self.failure = err

    def start(self) -> Node:
        self.thread.start()
        return self

    @property
    def queue(self) -> Any:
        assert self.served, f"{self.name} serves nothing yet"
        return self.served[-1][0]

    @property
    def reader(self) -> Any:
        return self.served[-1][1]

    def is_master(self) -> bool:
        return bool(self.served) and not isinstance(self.queue, StandbyQueue)

    def is_standby(self) -> bool:
        return bool(self.served) and isinstance(self.queue, StandbyQueue)

    def status(self, job_id: int) -> Any:
        return self.reader.query_jobs([job_id], ["status"])[0][0]

    def halt(self) -> None:
        self.stop.requested.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"{self.name} did not stop"


def wait(condition: Any, what: str) -> None:
    assert poll_until(condition, WAIT), f"timed out waiting for {what}"


@pytest.fixture
def pair() -> Iterator[tuple[Node, Node]]:
    backing = MemoryBacking()
    first = Node("first", backing).start()
    wait(first.is_master, "the first node to lead")
    second = Node("second", backing).start()
    wait(second.is_standby, "the second node to stand by")
    yield first, second
    for node in (first, second):
        node.stop.requested.set()
    for node in (first, second):
        node.thread.join(WAIT)


def test_a_standby_serves_reads_and_refuses_changes_naming_the_master(
    pair: tuple[Node, Node],
) -> None:
    first, second = pair
    job_id = first.queue.submit_job([QUICK])
    wait(lambda: second.status(job_id) == "success", "the standby to see the job finish")
    with pytest.raises(NotMasterError, match="the master is first") as info:
        second.queue.submit_job([QUICK])
    assert info.value.args[1] == "first"
    with pytest.raises(NotMasterError):
        second.queue.cancel_job(job_id)
    assert second.queue.query_config_values(["role", "master", "drain_flag", "busy_workers"]) == [
        "standby",
        "first",
        False,
        0,
    ]
    assert first.queue.query_config_values(["role", "master"]) == ["master", "first"]
    counts = ["live_opcodes", "max_opcodes", "live_opcode_bytes", "max_opcode_bytes"]
    assert second.queue.query_config_values(counts) == first.queue.query_config_values(counts)
    assert second.queue.query_config_values(counts)[0] == 1
    until = int(time.time()) + 600
    first.queue.set_watcher_pause(until)
    assert second.queue.query_config_values(["watcher_pause"]) == [until]
    with pytest.raises(NotMasterError):
        second.queue.set_watcher_pause(None)


def test_a_watch_on_the_standby_hears_the_master_s_changes(pair: tuple[Node, Node]) -> None:
    first, second = pair
    job_id = first.queue.submit_job([{**LONG, "duration": 0.2}])
    wait(lambda: second.live.entry(job_id) is not None, "the standby to see the job")
    heard = threading.Event()
    with second.live.watch(job_id, heard.set) as watch:
        assert heard.wait(WAIT)
        wait(lambda: watch.latest is None or watch.latest.is_finalized, "the end to reach it")


def test_takeover_when_the_master_s_lease_runs_out(pair: tuple[Node, Node]) -> None:
    first, second = pair
    running = first.queue.submit_job([LONG])
    wait(lambda: first.status(running) == "running", "the long job to run")
    queued = first.queue.submit_many_jobs([[{**QUICK, "depends": [[running, []]]}]])[0][1]
    assert role_metrics(second) == ("standby", 0, 0)
    first.leadership.expire()  # as if it had been paused past its lease
    wait(second.is_master, "the standby to take over")
    assert role_metrics(second) == ("master", 1, 0)  # one take-over
    # The job the old master was running ends in error: it never runs twice.
    wait(lambda: second.status(running) == "error", "the running job to fail over")
    (result,) = second.reader.query_jobs([running], ["opresult"])[0]
    assert result == [constants.MSG_FAILED_OVER]
    wait(lambda: second.status(queued) == "success", "its dependent to run on the new master")
    # The old master stepped down: it serves as standby, killed its opcode, wrote nothing.
    wait(first.is_standby, "the old master to stand by")
    assert role_metrics(first) == ("standby", 0, 1)  # one lead lost
    wait(lambda: not first.terms[0].pool.has_running_tasks(), "its opcode to be killed")
    stored = second.store.read_job(running)
    assert stored is not None and stored.ops[0].result == constants.MSG_FAILED_OVER
    with pytest.raises(NotMasterError, match="the master is second"):
        first.queue.submit_job([QUICK])
    assert second.queue.submit_job([QUICK]) > queued  # ids are never reused


def role_metrics(node: Node) -> tuple[str, float, float]:
    """(role, take-overs, leads lost) as the node's QueryMetrics says."""
    families = {f["name"]: f["samples"] for f in node.queue.query_metrics()["families"]}
    (role,) = [labels[0] for labels, value in families["jobqueue_role"] if value == 1]
    takeovers = sum(value for _, value in families["jobqueue_takeovers"])
    lost = sum(value for _, value in families["jobqueue_leads_lost"])
    return role, takeovers, lost


def test_a_stopped_master_hands_over_at_once(pair: tuple[Node, Node]) -> None:
    first, second = pair
    before = first.queue.submit_job([QUICK])
    wait(lambda: first.status(before) == "success", "the job to run")
    first.halt()
    wait(second.is_master, "the standby to take over")
    assert second.queue.submit_job([QUICK]) == before + 1  # the unused ids were given back


def test_no_standby_means_fail_at_start_naming_the_holder() -> None:
    backing = MemoryBacking()
    first = Node("first", backing).start()
    try:
        wait(first.is_master, "the first node to lead")
        lonely = Node("lonely", backing, standby_allowed=False)
        with pytest.raises(JobQueueError, match=r"in use by another daemon \(first\)"):
            lonely.roles.run(lonely.stop)
        assert lonely.served == []
    finally:
        first.halt()


def test_a_standby_tidies_its_own_output_now_and_then_and_survives_a_failure() -> None:
    backing = MemoryBacking()
    master = Node("master", backing, tidy_interval=0.01)
    standby = Node("standby", backing, tidy_interval=0.01)
    calls = {master.name: 0, standby.name: 0}

    def counting(node: Node) -> Any:
        def tidy() -> PruneResult:
            calls[node.name] += 1
            if calls[node.name] == 1:
                raise StorageError("etcd is away", errno.ETIMEDOUT)
            return PruneResult(failures=["cannot delete x: Permission denied"])

        return tidy

    for node in (master, standby):
        node.store.tidy_local_output = counting(node)  # type: ignore[method-assign]
    try:
        master.start()
        wait(master.is_master, "the first node to lead")
        standby.start()
        wait(lambda: calls[standby.name] >= 3, "the standby to tidy again after a failure")
        assert standby.is_standby() and standby.failure is None
        assert calls[master.name] == 0  # a master prunes through PruneArchive instead
    finally:
        for node in (master, standby):
            node.halt()
