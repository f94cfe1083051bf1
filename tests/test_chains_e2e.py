"""Chained jobs, priority changes, cancel and kill, against the real daemon."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.constants import MSG_CANCELED
from jobqueue.model import merge_time
from tests.daemon_helper import Daemon, wait_until

DUMMY = {"OP_ID": "OP_TEST_DUMMY"}
DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


def gated(gate: Path, *, locks: list[str] | None = None) -> dict[str, Any]:
    """An opcode that runs until ``gate`` exists (at most 60 s)."""
    script = (
        "import os, sys, time\n"
        "deadline = time.time() + 60\n"
        f"while not os.path.exists({str(gate)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.01)\n"
    )
    return {"OP_ID": "OP_COMMAND_RUN", "argv": [sys.executable, "-c", script], "locks": locks or []}


def status(daemon: Daemon, job_id: int) -> str:
    (row,) = daemon.client().query_jobs([job_id], ["status"])
    return str(row[0])


def times(daemon: Daemon, job_ids: list[int]) -> list[tuple[float, float]]:
    """(when the first opcode began executing, when the job ended) per job.

    A job's own start_ts is when a worker first picked it up, which for a
    dependent job is before its dependencies finished; execution is what
    must be ordered.
    """
    rows = daemon.client().query_jobs(job_ids, ["opexec", "end_ts"])
    return [(merge_time(opexec[0]), merge_time(end)) for opexec, end in rows]


def test_chain_of_200_runs_strictly_in_order(daemon: Daemon) -> None:
    jobs = [[DUMMY]] + [[{**DUMMY, "depends": [[-1, ["success"]]]}] for _ in range(199)]
    results = daemon.client().submit_many_jobs(jobs)
    ids = [job_id for ok, job_id in results if ok]
    assert len(ids) == 200
    assert daemon.wait_job(ids[-1], timeout=60) == "success"
    spans = times(daemon, ids)
    for (_, previous_end), (start, _) in itertools.pairwise(spans):
        assert start >= previous_end
    (row,) = daemon.client().query_jobs([ids[5]], ["ops"])
    assert row[0][0]["depends"] == [[ids[4], ["success"]]]  # relative id resolved


def test_fan_in_waits_without_holding_a_worker(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(workers=2).start()
    client = daemon.client()
    gate = tmp_path / "gate"
    parents = [gated(gate)] + [DELAY0] * 99
    parent_ids = [job_id for _, job_id in client.submit_many_jobs([[op] for op in parents])]
    fan_in = client.submit_job([{**DUMMY, "depends": [[i, []] for i in parent_ids]}])
    wait_until(
        lambda: all(status(daemon, i) == "success" for i in parent_ids[1:]),
        timeout=60,
        what="the ungated parents",
    )
    wait_until(lambda: status(daemon, fan_in) == "waiting", what="the fan-in job to wait")
    locks = client.query("lock", ["name", "pending"], None)["data"]
    assert [[0, f"job/{parent_ids[0]}"], [0, [["job", [str(fan_in)]]]]] in locks
    # One worker runs the gated parent; the fan-in job holds none, so this job runs now.
    extra = client.submit_job([DELAY0])
    assert daemon.wait_job(extra) == "success"
    assert status(daemon, fan_in) == "waiting"
    gate.touch()
    assert daemon.wait_job(fan_in) == "success"
    fan_in_start = times(daemon, [fan_in])[0][0]
    assert all(end <= fan_in_start for _, end in times(daemon, parent_ids))


def test_restart_in_the_middle_of_a_chain(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = daemon_factory().start()
    gate = tmp_path / "gate"
    chain = [[DUMMY]] * 3 + [[gated(gate)]] + [[DUMMY]] * 6
    jobs = [chain[0]] + [[{**job[0], "depends": [[-1, []]]}] for job in chain[1:]]
    ids = [job_id for _, job_id in first.client().submit_many_jobs(jobs)]
    wait_until(lambda: status(first, ids[3]) == "running", what="the gated job to run")
    first.kill9()
    second = daemon_factory().start()
    assert second.wait_job(ids[-1]) == "success"
    statuses = [row[0] for row in second.client().query_jobs(ids, ["status"])]
    assert statuses == ["success"] * 3 + ["error"] + ["success"] * 6
    spans = times(second, ids[4:])
    for (_, previous_end), (start, _) in itertools.pairwise(spans):
        assert start >= previous_end


def test_dependency_outcomes(daemon: Daemon) -> None:
    client = daemon.client()
    failing = client.submit_job([{"OP_ID": "OP_TEST_JQUEUE", "fail": True}])
    assert daemon.wait_job(failing) == "error"
    wrong = client.submit_job([{**DUMMY, "depends": [[failing, ["success"]]]}])
    any_status = client.submit_job([{**DUMMY, "depends": [[failing, []]]}])
    wanted_error = client.submit_job([{**DUMMY, "depends": [[str(failing), ["error"]]]}])
    assert daemon.wait_job(wrong) == "error"
    (row,) = client.query_jobs([wrong], ["opresult"])
    assert row[0][0][0] == "OpExecError"
    assert f"job {failing} finished with status 'error'" in row[0][0][1][0]
    assert daemon.wait_job(any_status) == "success"
    assert daemon.wait_job(wanted_error) == "success"


def test_dependency_on_archived_job(daemon: Daemon) -> None:
    client = daemon.client()
    parent = client.submit_job([DUMMY])
    assert daemon.wait_job(parent) == "success"
    assert client.archive_job(parent)
    child = client.submit_job([{**DUMMY, "depends": [[parent, ["success"]]]}])
    assert daemon.wait_job(child) == "success"


def test_dependencies_can_only_name_existing_jobs(daemon: Daemon) -> None:
    client = daemon.client()
    last = client.submit_job([DUMMY])
    with pytest.raises(errors.OpPrereqError, match=f"{last + 1} does not exist"):
        client.submit_job([{**DUMMY, "depends": [[last + 1, []]]}])
    with pytest.raises(errors.OpPrereqError, match="only allowed in SubmitManyJobs"):
        client.submit_job([{**DUMMY, "depends": [[-1, []]]}])
    results = client.submit_many_jobs([[{**DUMMY, "depends": [[-1, []]]}]])
    assert results[0][0] is False and "Unable to resolve relative job ID -1" in results[0][1]


def test_priority_change_reorders_queued_jobs(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(workers=1).start()
    client = daemon.client()
    gate = tmp_path / "gate"
    blocker = client.submit_job([gated(gate)])
    wait_until(lambda: status(daemon, blocker) == "running")
    first, second, third = (client.submit_job([DUMMY]) for _ in range(3))
    ok, message = client.change_job_priority(third, -10)
    assert ok and f"job {third}" in message
    (row,) = client.query_jobs([third], ["priority", "oppriority"])
    assert row == [-10, [-10]]
    gate.touch()
    for job_id in (first, second, third):
        daemon.wait_job(job_id)
    starts = dict(
        zip(
            (first, second, third),
            (start for start, _ in times(daemon, [first, second, third])),
            strict=True,
        )
    )
    assert sorted(starts, key=starts.__getitem__) == [third, first, second]
    assert client.change_job_priority(third, 0) == [False, f"Job {third} has already finished"]
    assert client.change_job_priority(10**9, 0) == [False, f"Job {10**9} not found"]
    with pytest.raises(errors.OpPrereqError, match="Invalid priority"):
        client.change_job_priority(first, 3)


class TestCancel:
    def test_queued_is_canceled_at_once(
        self, daemon_factory: Callable[..., Daemon], tmp_path: Path
    ) -> None:
        daemon = daemon_factory(workers=1).start()
        client = daemon.client()
        gate = tmp_path / "gate"
        client.submit_job([gated(gate)])
        queued = client.submit_job([DUMMY])
        dependent = client.submit_job([{**DUMMY, "depends": [[queued, ["success"]]]}])
        assert client.cancel_job(queued) == [True, f"Job {queued} canceled"]
        assert status(daemon, queued) == "canceled"
        (row,) = client.query_jobs([queued], ["opresult", "start_ts"])
        assert row == [[MSG_CANCELED], None]
        gate.touch()
        assert daemon.wait_job(dependent) == "canceled"  # canceled dependency cancels it
        assert client.cancel_job(queued)[0] is False

    def test_waiting_for_dependency(self, daemon: Daemon, tmp_path: Path) -> None:
        client = daemon.client()
        parent = client.submit_job([gated(tmp_path / "gate")])
        child = client.submit_job([{**DUMMY, "depends": [[parent, []]]}])
        wait_until(lambda: status(daemon, child) == "waiting")
        assert client.cancel_job(child) == [True, f"Job {child} will be canceled"]
        assert daemon.wait_job(child, timeout=5) == "canceled"
        names = [row[0][1] for row in client.query("lock", ["name"], None)["data"]]
        assert f"job/{parent}" not in names  # no waiter left behind
        (tmp_path / "gate").touch()

    def test_waiting_for_lock_is_prompt(self, daemon: Daemon, tmp_path: Path) -> None:
        client = daemon.client()
        holder = client.submit_job([gated(tmp_path / "gate", locks=["db"])])
        wait_until(lambda: status(daemon, holder) == "running")
        waiter = client.submit_job([gated(tmp_path / "never", locks=["db"])])
        wait_until(lambda: status(daemon, waiter) == "waiting")
        started = time.monotonic()
        assert client.cancel_job(waiter)[0] is True
        assert daemon.wait_job(waiter, timeout=5) == "canceled"
        assert time.monotonic() - started < 3  # not after its lock-attempt timeout
        (tmp_path / "gate").touch()
        assert daemon.wait_job(holder) == "success"

    def test_running_needs_kill(self, daemon: Daemon) -> None:
        client = daemon.client()
        job_id = client.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 60}, DUMMY])
        wait_until(lambda: status(daemon, job_id) == "running")
        ok, message = client.cancel_job(job_id)
        assert not ok and "kill" in message
        assert client.cancel_job(job_id, True) == [True, f"Job {job_id} will be killed"]
        assert daemon.wait_job(job_id, timeout=5) == "canceled"
        (row,) = client.query_jobs([job_id], ["opstatus", "opresult"])
        assert row == [["canceled", "canceled"], [MSG_CANCELED, MSG_CANCELED]]

    def test_kill_command_ignoring_sigterm(
        self, daemon_factory: Callable[..., Daemon], tmp_path: Path
    ) -> None:
        daemon = daemon_factory("--kill-grace", "1").start()
        client = daemon.client()
        script = (
            "import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen(['sleep', '60'])\n"
            "print(os.getpgid(0), flush=True)\n"
            "time.sleep(60)\n"
        )
        job_id = client.submit_job(
            [{"OP_ID": "OP_COMMAND_RUN", "argv": [sys.executable, "-c", script]}]
        )

        def pgid() -> int | None:
            (row,) = client.query_jobs([job_id], ["oplog"])
            lines = [entry[3] for entry in row[0][0] if entry[2] == "stdout"]
            return int(lines[0]) if lines else None

        group = wait_until(pgid, what="the command to print its process group")
        started = time.monotonic()
        assert client.cancel_job(job_id, True)[0] is True
        assert daemon.wait_job(job_id, timeout=10) == "canceled"
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 5.0  # SIGTERM ignored, SIGKILL after the 1 s grace

        def group_gone() -> bool:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(group_gone, timeout=5, what="the process group to be gone")

    def test_finished_job_cannot_be_canceled(self, daemon: Daemon) -> None:
        client = daemon.client()
        job_id = client.submit_job([DUMMY])
        daemon.wait_job(job_id)
        assert client.cancel_job(job_id) == [False, f"Job {job_id} has already finished"]
        assert client.cancel_job(10**9) == [False, f"Job {10**9} not found"]
