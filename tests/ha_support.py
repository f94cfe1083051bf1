"""Two real daemons on one real etcd cluster, and clients that follow the master.

Each daemon has its own state directory (its sockets, log and command
records) and shares the queue in etcd under one prefix. ``Submitters`` are
16 client threads that submit jobs to whichever daemon is the master now,
as an operator's scripts would when told "the master is X"; they record
every acknowledged id with the tag it was submitted under. The ``pair`` fixture
starts two such daemons on a 3-member cluster, the first leading; ``recording_job``
and ``check_nothing_lost_nothing_run_twice`` check what a failover did to the jobs
(for ``test_ha_etcd`` and the failover soak test).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants, errors
from jobqueue.luxi.client import Client
from tests.daemon_helper import Daemon, state_dir_under, wait_until
from tests.etcd_cluster import EtcdCluster

#: Seconds a master's lease outlives its last renewal in these tests.
LEASE_TTL = 2


def etcd_daemon(
    root: Path, name: str, cluster: EtcdCluster, prefix: str, *extra: str, workers: int = 4
) -> Daemon:
    """A daemon (not started) on ``cluster`` under ``prefix``, its state in ``root/name``."""
    (root / name).mkdir(parents=True, exist_ok=True)
    state = state_dir_under(root / name)
    return Daemon(
        state,
        "--store",
        "etcd",
        "--etcd-endpoints",
        ",".join(cluster.endpoints),
        "--etcd-prefix",
        prefix,
        "--etcd-lease-ttl",
        str(LEASE_TTL),
        "--etcd-timeout",
        "1",
        "--shutdown-timeout",
        "5",
        "--kill-grace",
        "1",
        *extra,
        workers=workers,
    )


def role(daemon: Daemon) -> tuple[str, Any] | None:
    """``(role, master)`` as the daemon answers it, None when it does not answer."""
    try:
        with Client(daemon.paths.query_socket, timeout=5) as client:
            found = client.query_config_values(["role", "master"])
    except errors.GenericError:
        return None
    return found[0], found[1]


def role_of(daemon: Daemon) -> str:
    """``master``, ``standby``, or "" when the daemon does not answer."""
    answer = role(daemon)
    return "" if answer is None else str(answer[0])


def wait_master(daemon: Daemon, timeout: float = 30) -> None:
    wait_until(lambda: role_of(daemon) == "master", timeout, "a master")


class Submitters:
    """Client threads submitting ``make_job(tag)`` to the master among ``daemons``.

    Each thread submits at most once every ``pace`` seconds (0: as fast as it
    is answered), so that a long storm's backlog stays within what the
    workers can run before the test ends.
    """

    def __init__(
        self,
        daemons: list[Daemon],
        make_job: Callable[[str], list[Any]],
        threads: int = 16,
        pace: float = 0.0,
    ):
        self.daemons = daemons
        self.make_job = make_job
        self.pace = pace
        self.lock = threading.Lock()
        self.acked: dict[int, str] = {}  # id -> tag
        self.refusals: dict[str, int] = {}
        self.unexpected: list[BaseException] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(number,), name=f"submitter-{number}")
            for number in range(threads)
        ]

    def start(self) -> Submitters:
        for thread in self.threads:
            thread.start()
        return self

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, number: int) -> None:
        sequence = 0
        while not self.stopping.is_set():
            tag = f"t{number}-{sequence}"
            sequence += 1
            began = time.monotonic()
            for daemon in self.daemons:
                if self._submit(daemon, tag):
                    break
            else:
                self.stopping.wait(0.05)  # no master right now: a failover is under way
            self.stopping.wait(self.pace - (time.monotonic() - began))

    def _submit(self, daemon: Daemon, tag: str) -> bool:
        """True once ``tag`` was acknowledged (or refused for good) by this daemon."""
        try:
            with Client(daemon.paths.master_socket, timeout=10) as client:
                job_id = client.submit_job(self.make_job(tag))
        except (errors.NotMasterError, errors.NoMasterError, errors.ConnectionClosed):
            return False
        except (errors.JobQueueError, errors.LuxiError) as err:  # etcd trouble, a closing daemon
            with self.lock:
                self.refusals[type(err).__name__] = self.refusals.get(type(err).__name__, 0) + 1
            return False
        except BaseException as err:  # reported by the test
            with self.lock:
                self.unexpected.append(err)
            return True
        with self.lock:
            assert job_id not in self.acked, f"id {job_id} acknowledged twice"
            self.acked[job_id] = tag
        return True


def wait_count(submitters: Submitters, at_least: int, timeout: float = 60) -> None:
    wait_until(lambda: submitters.count() >= at_least, timeout, f"{at_least} acknowledged jobs")


def elapsed_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` holds (a bounded poll); fails after ``timeout``."""
    started = time.monotonic()
    wait_until(condition, timeout, "the condition")
    return time.monotonic() - started


FINAL = frozenset({"success", "error", "canceled"})


class Pair:
    """The cluster, the queue's prefix, and two daemons: ``first`` leads at the start."""

    def __init__(self, cluster: EtcdCluster, first: Daemon, second: Daemon, prefix: str) -> None:
        self.cluster, self.first, self.second, self.prefix = cluster, first, second, prefix

    @property
    def daemons(self) -> list[Daemon]:
        return [self.first, self.second]


@pytest.fixture
def pair(tmp_path: Path, etcd_factory: Callable[..., EtcdCluster]) -> Iterator[Pair]:
    cluster = etcd_factory(3)
    prefix = f"/jobqueue/test-{uuid.uuid4().hex[:8]}"
    first = etcd_daemon(tmp_path, "a", cluster, prefix)
    second = etcd_daemon(tmp_path, "b", cluster, prefix)
    first.start()
    wait_master(first)
    second.start()
    assert role(second) == ("standby", role(first)[1])  # type: ignore[index]
    yield Pair(cluster, first, second, prefix)
    for daemon in (first, second):
        if daemon.proc is not None and daemon.proc.poll() is None:
            with_signal(daemon, signal.SIGCONT)
            daemon.kill9()


def with_signal(daemon: Daemon, signum: int) -> None:
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signum)


def recording_job(runs: Path) -> Callable[[str], list[Any]]:
    """Jobs that append their id to ``runs`` when they run: a job run twice shows twice."""

    def make(tag: str) -> list[Any]:
        script = f'echo "$JOBQUEUE_JOB_ID" >> {runs}; sleep 0.05'
        return [{"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", script], "comment": tag}]

    return make


def all_final(daemon: Daemon, job_ids: list[int], timeout: float = 60) -> list[list[Any]]:
    """The rows of ``job_ids`` once all have ended; within the test's own time limit,
    a failure names the jobs that did not end."""
    client = daemon.client()
    last: list[list[Any]] = []

    def rows() -> list[list[Any]] | None:
        last[:] = client.query_jobs(job_ids, ["status", "comment", "opresult"])
        return last if all(row[0] in FINAL for row in last) else None

    try:
        return list(wait_until(rows, timeout, "every acknowledged job to end"))
    except AssertionError:
        unended = {i: row[0] for i, row in zip(job_ids, last, strict=True) if row[0] not in FINAL}
        raise AssertionError(f"jobs not ended after {timeout} s: {unended}") from None


def check_nothing_lost_nothing_run_twice(
    master: Daemon, submitters: Submitters, runs: Path, timeout: float = 60
) -> dict[str, int]:
    """Every acknowledged job is there under its own tag; none ran twice; failed-over
    ones say so. Returns the count of each final status."""
    assert submitters.unexpected == []
    ids = sorted(submitters.acked)
    rows = all_final(master, ids, timeout)
    statuses: dict[str, int] = {}
    for job_id, (status, comment, opresult) in zip(ids, rows, strict=True):
        assert comment == submitters.acked[job_id], f"job {job_id} is not what was acknowledged"
        statuses[status] = statuses.get(status, 0) + 1
        if status == "error":
            assert opresult == [constants.MSG_FAILED_OVER], (job_id, opresult)
    ran = runs.read_text().split() if runs.exists() else []
    twice = sorted({job_id for job_id in ran if ran.count(job_id) > 1})
    assert twice == [], f"jobs run twice: {twice}"
    return statuses
