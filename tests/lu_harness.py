"""The queue fixtures and helpers of the LU and queue tests: started queues on files
(``make_queue``, ``queue``), bounded waits on a job's status, opcode builders and
job runners, for ``test_lus``, ``test_lus_command``, ``test_lus_queue``,
``test_controls`` and ``test_query``; and ``group_is_gone`` for the tests that
check a command's process group is gone (``test_children``, ``test_daemon_e2e``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.children import ProcessGroups
from jobqueue.daemon import Core, build_core, start_core
from jobqueue.livejobs import Limits
from jobqueue.locking import LockAttemptTimeoutStrategy
from jobqueue.lus import builtin_registry
from jobqueue.storage.files import FileJobStore
from tests.polling import poll_until
from tests.queue_harness import QueueUnderTest

#: Upper bound for waiting on anything that should happen soon.
WAIT = 15.0
#: What "promptly" means for cancel, kill and timeouts.
PROMPT = 5.0
FINAL = ("success", "error", "canceled")


MakeQueue = Callable[..., QueueUnderTest]


@pytest.fixture
def make_queue(tmp_path: Path) -> Iterator[MakeQueue]:
    """Build started queues on files under tmp_path; all are shut down afterwards."""
    cores: list[Core] = []

    def make(
        *,
        workers: int = 4,
        max_jobs: int = constants.DEFAULT_MAX_JOBS,
        queue_dir: Path | None = None,
        strategy_factory: Callable[[], LockAttemptTimeoutStrategy] | None = None,
        processes: ProcessGroups | None = None,
    ) -> QueueUnderTest:
        registry = builtin_registry()
        store = FileJobStore(str(queue_dir or tmp_path / "queue"))
        extra: dict[str, Any] = {}
        if strategy_factory is not None:
            extra["strategy_factory"] = strategy_factory
        core = build_core(
            store,
            registry,
            limits=Limits(jobs=max_jobs),
            kill_grace=1.0,
            processes=processes,
            logger=logging.getLogger("test.queue"),
            **extra,
        )
        cores.append(core)
        start_core(core, workers)
        return QueueUnderTest(core)

    yield make
    for core in cores:
        core.queue.prepare_shutdown()
        core.queue.kill_running()  # long test commands must not hold up the join
        core.stop()


@pytest.fixture
def queue(make_queue: MakeQueue) -> QueueUnderTest:
    return make_queue()


def wait_for_status(
    queue: QueueUnderTest, job_id: int, statuses: Iterable[str] | str, timeout: float = WAIT
) -> str:
    """Poll the job's status until it is one of ``statuses``; return it.

    A bounded poll of a condition: fails the test after ``timeout`` seconds.
    """
    wanted = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        (row,) = queue.query_jobs([job_id], ["status"])
        if row[0] in wanted:
            return str(row[0])
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} is {row[0]}, not {sorted(wanted)}, after {timeout}s"
            )
        time.sleep(0.01)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """``poll_until`` with this module's default bound."""
    return poll_until(predicate, timeout, interval=0.01)


FIELDS = ["id", "status", "opstatus", "opresult", "oplog", "start_ts", "end_ts", "comment"]


def info(queue: QueueUnderTest, job_id: int) -> dict[str, Any]:
    (row,) = queue.query_jobs([job_id], FIELDS)
    return dict(zip(FIELDS, row, strict=True))


def run_job(
    queue: QueueUnderTest, ops: list[dict[str, Any]], timeout: float = WAIT
) -> dict[str, Any]:
    """Submit a job, wait until it is finished, return its fields."""
    job_id = queue.submit_job(ops)
    wait_for_status(queue, job_id, FINAL, timeout)
    return info(queue, job_id)


def log_of(job: dict[str, Any], op_index: int = 0, log_type: str | None = None) -> list[Any]:
    """The messages logged by one opcode, optionally of one type only."""
    return [e[3] for e in job["oplog"][op_index] if log_type is None or e[2] == log_type]


def stamp(value: list[int]) -> float:
    return value[0] + value[1] / 1_000_000


def py(code: str, *args: str) -> list[str]:
    """argv running ``code`` in this Python (no site import: faster start)."""
    return [sys.executable, "-S", "-c", code, *args]


def command(argv: list[str], **params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_COMMAND_RUN", "argv": argv, **params}


def dummy(**params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DUMMY", **params}


def delay(duration: float, **params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DELAY", "duration": duration, **params}


def start_blocker(queue: QueueUnderTest, **params: Any) -> int:
    """A job that runs until it is killed; returns once it runs."""
    job_id = queue.submit_job([delay(60, **params)])
    wait_for_status(queue, job_id, "running")
    return job_id


def kill(queue: QueueUnderTest, job_id: int) -> None:
    assert queue.cancel_job(job_id, kill=True)[0]
    assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"


def group_is_gone(pgid: int) -> bool:
    """No process of group ``pgid`` is alive (zombies awaiting their reaper count as gone)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            return False
    return True
