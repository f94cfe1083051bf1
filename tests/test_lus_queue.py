"""The queue around the LUs, through a real JobQueue on files: processing, submission,
recovery after a restart, cancel, shutdown, priority, archive and queries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.errors import JobQueueDrainError, JobQueueError, JobQueueFull, OpPrereqError
from jobqueue.jobstep import Verdict
from jobqueue.locking import LockAttemptTimeoutStrategy
from tests import lu_harness
from tests.lu_harness import (
    FINAL,
    PROMPT,
    WAIT,
    MakeQueue,
    command,
    delay,
    dummy,
    info,
    kill,
    log_of,
    py,
    run_job,
    stamp,
    start_blocker,
    wait_for_status,
    wait_until,
)
from tests.queue_harness import QueueUnderTest

make_queue = lu_harness.make_queue  # the queue fixtures of the LU tests
queue = lu_harness.queue
RS_NORMAL, RS_UNKNOWN = 0, 1


class TestProcessing:
    def test_one_worker_per_job_even_if_enqueued_twice(
        self, queue: QueueUnderTest, caplog: pytest.LogCaptureFixture
    ) -> None:
        job_id = queue.submit_job([delay(0.3, repeat=1)])
        wait_for_status(queue, job_id, "running")
        with caplog.at_level(logging.ERROR, logger="test.queue"):
            queue.enqueue([job_id])
            queue.enqueue([job_id])
            assert wait_for_status(queue, job_id, FINAL) == "success"
            assert wait_until(lambda: queue.pool.stats()["queued"] == 0)
            assert wait_until(lambda: not queue.pool.has_running_tasks())
        assert log_of(info(queue, job_id)) == ["Test delay iteration 1/1"]
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

    def test_wake_up_while_parking_is_not_lost(
        self, queue: QueueUnderTest, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second worker that finds the job busy just as it is parked makes it run again.

        Regression: the "look again" flag was read before the job's run lock
        was released, so a notification arriving in between was lost and the
        job waited forever.
        """
        blocker = start_blocker(queue)
        job_id = queue.submit_job([dummy(depends=[[blocker, ["canceled"]]])])
        assert wait_until(lambda: job_id in queue.depmgr.waiting_jobs())
        assert wait_until(lambda: not queue._active[job_id].run_lock.locked())
        checks: list[int] = []
        real_check = queue.depmgr.check

        def counting_check(waiting_id: int, dep_id: int, wanted: Any) -> Any:
            if waiting_id == job_id:
                checks.append(dep_id)
            return real_check(waiting_id, dep_id, wanted)

        monkeypatch.setattr(queue.depmgr, "check", counting_check)
        active = queue._active[job_id]
        real_lock = active.run_lock

        class RacingLock:
            """Another worker fails to take the job just before it is let go."""

            fired = False

            def acquire(self, blocking: bool = True) -> bool:
                return real_lock.acquire(blocking)

            def release(self) -> None:
                if not self.fired:
                    self.fired = True
                    active.rerun = True  # what the other worker does
                real_lock.release()

            def locked(self) -> bool:
                return real_lock.locked()

        active.run_lock = RacingLock()  # type: ignore[assignment]
        queue.enqueue([job_id])
        assert wait_until(lambda: len(checks) >= 2, PROMPT), "the job was not looked at again"
        kill(queue, blocker)
        assert wait_for_status(queue, job_id, FINAL) == "success"

    def test_steps_report_verdicts(self, queue: QueueUnderTest) -> None:
        assert {verdict.value for verdict in Verdict} == {"defer", "waitdep", "finished"}
        job = run_job(queue, [dummy(result=n) for n in range(5)])
        assert job["opresult"] == [0, 1, 2, 3, 4]


class TestSubmission:
    def test_relative_dependencies(self, queue: QueueUnderTest) -> None:
        results = queue.submit_many_jobs(
            [
                [delay(0.1)],
                [dummy(result="b", depends=[[-1, ["success"]]])],
                [dummy(result="c", depends=[[-2, []], [-1, ["success"]]])],
            ]
        )
        assert [ok for ok, _ in results] == [True, True, True]
        first, second, third = (job_id for _, job_id in results)
        (ops,) = queue.query_jobs([third], ["ops"])[0]
        assert ops[0]["depends"] == [[first, []], [second, ["success"]]]
        (ops,) = queue.query_jobs([second], ["ops"])[0]
        assert ops[0]["depends"] == [[first, ["success"]]]
        for job_id in (first, second, third):
            assert wait_for_status(queue, job_id, FINAL) == "success"
        rows = queue.query_jobs([first, second, third], ["opexec", "end_ts"])
        (exec_second,), (exec_third,) = rows[1][0], rows[2][0]
        assert stamp(exec_second) >= stamp(rows[0][1])
        assert stamp(exec_third) >= max(stamp(rows[0][1]), stamp(rows[1][1]))

    def test_unresolvable_relative_dependency(self, queue: QueueUnderTest) -> None:
        results = queue.submit_many_jobs([[dummy(depends=[[-1, []]])], [dummy()]])
        assert results[0] == [False, "Unable to resolve relative job ID -1"]
        assert results[1][0] is True

    def test_relative_dependency_in_submit_job(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError, match="Relative"):
            queue.submit_job([dummy(depends=[[-1, []]])])

    def test_dependency_on_missing_job(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError, match="9999"):
            queue.submit_job([dummy(depends=[[9999, []]])])
        (result,) = queue.submit_many_jobs([[dummy(depends=[[9999, []]])]])
        assert result[0] is False and "9999" in result[1]
        assert queue.live.count() == 0

    def test_dependency_on_archived_job(self, queue: QueueUnderTest) -> None:
        done = run_job(queue, [dummy()])["id"]
        assert queue.archive_job(done)
        job = run_job(queue, [dummy(result="after", depends=[[done, ["success"]]])])
        assert job["opresult"] == ["after"]

    def test_failing_job_does_not_stop_the_others(self, queue: QueueUnderTest) -> None:
        results = queue.submit_many_jobs(
            [
                [dummy(result=1)],
                [{"OP_ID": "OP_NO_SUCH"}],
                [dummy(priority=5)],
                [],
                [dummy(result=4)],
            ]
        )
        assert [ok for ok, _ in results] == [True, False, False, False, True]
        assert "OP_NO_SUCH" in results[1][1]
        assert "priority" in results[2][1]
        for _, job_id in (results[0], results[4]):
            assert wait_for_status(queue, job_id, FINAL) == "success"
        assert queue.live.count() == 2

    def test_drained_queue(self, queue: QueueUnderTest) -> None:
        assert queue.set_drain_flag(True)
        assert queue.query_config_values(["drain_flag"]) == [True]
        with pytest.raises(JobQueueDrainError):
            queue.submit_job([dummy()])
        with pytest.raises(JobQueueDrainError):
            queue.submit_many_jobs([[dummy()]])
        job_id = queue.submit_job([dummy()], drained_ok=True)
        assert wait_for_status(queue, job_id, FINAL) == "success"
        queue.set_drain_flag(False)
        assert queue.submit_job([dummy()]) > job_id

    def test_drained_queue_fails_lu_jobs_not_the_lu(self, queue: QueueUnderTest) -> None:
        queue.set_drain_flag(True)
        job_id = queue.submit_job([dummy(submit_jobs=[[dummy()], [dummy()]])], drained_ok=True)
        wait_for_status(queue, job_id, FINAL)
        job = info(queue, job_id)
        assert job["status"] == "success"
        assert job["opresult"] == [{"jobs": [[False, constants.MSG_DRAINED]] * 2}]

    def test_queue_full(self, make_queue: MakeQueue) -> None:
        queue = make_queue(max_jobs=3)
        results = queue.submit_many_jobs([[dummy()] for _ in range(4)])
        assert [ok for ok, _ in results] == [True, True, True, False]
        assert results[3][1] == "The job queue is full (3 jobs)"
        with pytest.raises(JobQueueFull):
            queue.submit_job([dummy()])
        for _, job_id in results[:3]:
            wait_for_status(queue, job_id, FINAL)
        assert queue.auto_archive_jobs(-1, 10) == [3, 0]
        assert queue.submit_job([dummy()]) > results[2][1]

    def test_concurrent_submissions_never_overfill_the_queue(self, make_queue: MakeQueue) -> None:
        queue = make_queue(max_jobs=40, workers=0)
        start = threading.Barrier(16)

        def submit_ten() -> None:
            start.wait(WAIT)
            for _ in range(10):
                with contextlib.suppress(JobQueueFull):
                    queue.submit_job([dummy()])

        threads = [threading.Thread(target=submit_ten) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert queue.live.count() <= 40
        while True:  # no claimed slot is left behind: the queue fills up exactly
            try:
                queue.submit_job([dummy()])
            except JobQueueFull:
                break
        assert queue.live.count() == 40


def hand_written_job(job_id: int, op_statuses: list[str]) -> dict[str, Any]:
    """A job file as a previous daemon would have left it, written without the model."""
    ops = []
    for index, status in enumerate(op_statuses):
        started = status != "queued"
        ops.append(
            {
                "input": {"OP_ID": "OP_TEST_DUMMY", "result": f"{job_id}/{index}"},
                "status": status,
                "result": f"{job_id}/{index}" if status == "success" else None,
                "log": [],
                "priority": 0,
                "start_timestamp": [1_700_000_000, index] if started else None,
                "exec_timestamp": [1_700_000_001, index]
                if status in ("running", "success")
                else None,
                "end_timestamp": [1_700_000_002, index] if status == "success" else None,
            }
        )
    started = any(status != "queued" for status in op_statuses)
    return {
        "id": job_id,
        "ops": ops,
        "received_timestamp": [1_699_999_999, 0],
        "start_timestamp": [1_700_000_000, 0] if started else None,
        "end_timestamp": None,
    }


class TestRecovery:
    def test_restart(self, make_queue: MakeQueue, tmp_path: Path) -> None:
        queue_dir = tmp_path / "queue"
        first = make_queue(queue_dir=queue_dir)
        done = run_job(first, [dummy(result="before")])["id"]
        first.prepare_shutdown()
        first.shutdown()
        layouts = {
            "queued": ["queued", "queued"],
            "waiting": ["success", "waiting", "queued"],
            "running": ["success", "running", "queued"],
            "canceling": ["canceling", "canceling"],
        }
        ids = {}
        for offset, (name, op_statuses) in enumerate(layouts.items(), start=1):
            ids[name] = done + offset
            text = json.dumps(hand_written_job(ids[name], op_statuses))
            (queue_dir / f"job-{ids[name]}").write_text(text)

        second = make_queue(queue_dir=queue_dir)
        unclean = constants.MSG_UNCLEAN_SHUTDOWN
        running = info(second, ids["running"])
        assert running["opstatus"] == ["success", "error", "error"]
        assert running["opresult"] == [f"{ids['running']}/0", unclean, unclean]
        assert running["end_ts"] is not None
        canceling = info(second, ids["canceling"])
        assert canceling["opstatus"] == ["error", "error"]
        assert canceling["opresult"] == [unclean, unclean]
        for name in ("queued", "waiting"):
            assert wait_for_status(second, ids[name], FINAL) == "success"
        waiting = info(second, ids["waiting"])
        assert waiting["opresult"] == [f"{ids['waiting']}/{n}" for n in range(3)]
        assert info(second, ids["queued"])["opresult"] == [f"{ids['queued']}/{n}" for n in range(2)]
        assert info(second, done)["opresult"] == ["before"]
        assert second.submit_job([dummy()]) > max(ids.values())


class TestCancel:
    def test_cancel_queued_is_immediate(self, make_queue: MakeQueue) -> None:
        queue = make_queue(workers=1)
        blocker = start_blocker(queue)
        job_id = queue.submit_job([dummy(), dummy()])
        assert queue.cancel_job(job_id) == [True, f"Job {job_id} canceled"]
        job = info(queue, job_id)
        assert job["status"] == "canceled"
        assert job["opresult"] == [constants.MSG_CANCELED] * 2
        assert job["start_ts"] is None and job["end_ts"] is not None
        assert queue.cancel_job(job_id)[0] is False
        kill(queue, blocker)
        assert queue.cancel_job(12345) == [False, "Job 12345 not found"]

    def test_cancel_job_waiting_for_a_lock(self, make_queue: MakeQueue) -> None:
        def slow_strategy() -> LockAttemptTimeoutStrategy:
            return LockAttemptTimeoutStrategy(total=300, min_wait=30, max_wait=30)

        queue = make_queue(strategy_factory=slow_strategy)
        holder = queue.submit_job([command(py("import time; time.sleep(60)"), locks=["L"])])
        wait_for_status(queue, holder, "running")
        waiter = queue.submit_job([command(["true"], locks=["L"])])

        def queued_for_lock() -> bool:
            return any(
                entry["name"] == "L" and waiter in entry["pending"][0][1]
                for entry in queue.locks.lock_info()
                if entry["pending"]
            )

        assert wait_until(queued_for_lock)
        assert info(queue, waiter)["status"] == "waiting"
        started = time.monotonic()
        assert queue.cancel_job(waiter) == [True, f"Job {waiter} will be canceled"]
        assert wait_for_status(queue, waiter, FINAL, PROMPT) == "canceled"
        assert time.monotonic() - started < PROMPT
        assert info(queue, waiter)["opresult"] == [constants.MSG_CANCELED]
        assert info(queue, holder)["status"] == "running"
        kill(queue, holder)

    def test_cancel_job_waiting_for_a_dependency(self, queue: QueueUnderTest) -> None:
        blocker = start_blocker(queue)
        waiter = queue.submit_job([dummy(depends=[[blocker, []]])])
        wait_for_status(queue, waiter, "waiting")
        assert wait_until(lambda: waiter in queue.depmgr.waiting_jobs())
        rows = queue.query("lock", ["name", "mode", "owner", "pending"], None)["data"]
        values = [[value for _, value in row] for row in rows]
        assert [f"job/{blocker}", None, [], [["job", [str(waiter)]]]] in values
        assert ["cluster", "shared", [str(blocker)], []] in values
        assert queue.cancel_job(waiter)[0] is True
        assert wait_for_status(queue, waiter, FINAL, PROMPT) == "canceled"
        assert queue.depmgr.waiting_jobs() == set()
        kill(queue, blocker)

    def test_cancel_running(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(30)])
        wait_for_status(queue, job_id, "running")
        reply = queue.cancel_job(job_id)
        assert reply[0] is False and "running" in reply[1]
        assert info(queue, job_id)["status"] == "running"
        started = time.monotonic()
        assert queue.cancel_job(job_id, kill=True)[0] is True
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"
        assert time.monotonic() - started < PROMPT
        assert info(queue, job_id)["opresult"] == [constants.MSG_CANCELED]


class TestShutdown:
    def test_prepare_shutdown_sends_lock_waiters_back_to_queued(
        self, make_queue: MakeQueue
    ) -> None:
        def slow_strategy() -> LockAttemptTimeoutStrategy:
            return LockAttemptTimeoutStrategy(total=300, min_wait=30, max_wait=30)

        queue = make_queue(strategy_factory=slow_strategy)
        holder = queue.submit_job([command(py("import time; time.sleep(60)"), locks=["L"])])
        wait_for_status(queue, holder, "running")
        waiter = queue.submit_job([dummy(), command(["true"], locks=["L"])])
        assert wait_until(
            lambda: any(
                entry["name"] == "L" and entry["pending"] for entry in queue.locks.lock_info()
            )
        )
        queue.prepare_shutdown()
        assert wait_for_status(queue, waiter, "queued", PROMPT) == "queued"
        (row,) = queue.query_jobs([waiter], ["opstatus", "start_ts", "end_ts"])
        assert row[0] == ["success", "queued"]
        assert row[1] is not None and row[2] is None
        assert queue.query_config_values(["accepting_jobs"]) == [False]
        with pytest.raises(JobQueueError, match="shutting down"):
            queue.submit_job([dummy()])
        assert info(queue, holder)["status"] == "running"


class TestPriority:
    def test_change_priority_changes_start_order(self, make_queue: MakeQueue) -> None:
        queue = make_queue(workers=1)
        blocker = start_blocker(queue)
        low = [queue.submit_job([dummy(priority=constants.PRIO_LOW)]) for _ in range(3)]
        raised = low[2]
        reply = queue.change_job_priority(raised, constants.PRIO_HIGH)
        assert reply[0] is True
        assert queue.query_jobs([raised], ["priority", "oppriority"]) == [
            [constants.PRIO_HIGH, [constants.PRIO_HIGH]]
        ]
        kill(queue, blocker)
        for job_id in low:
            assert wait_for_status(queue, job_id, FINAL) == "success"
        starts = {job_id: stamp(info(queue, job_id)["start_ts"]) for job_id in low}
        assert sorted(low, key=starts.__getitem__) == [raised, low[0], low[1]]

    def test_change_priority_errors(self, queue: QueueUnderTest) -> None:
        done = run_job(queue, [dummy()])["id"]
        with pytest.raises(OpPrereqError):
            queue.change_job_priority(done, constants.PRIO_HIGHEST)
        assert queue.change_job_priority(done, constants.PRIO_HIGH)[0] is False
        assert queue.change_job_priority(4242, constants.PRIO_HIGH) == [
            False,
            "Job 4242 not found",
        ]


class TestArchive:
    def test_archive_job(self, queue: QueueUnderTest) -> None:
        done = run_job(queue, [dummy(result="old")])["id"]
        blocker = start_blocker(queue)
        assert queue.archive_job(blocker) is False
        assert queue.archive_job(done) is True
        assert queue.archive_job(done) is False
        assert done not in queue.live.ids()
        assert queue.store.archived_ids() == [done]
        assert queue.query_jobs([done], ["id", "status", "opresult"]) == [
            [done, "success", ["old"]]
        ]
        assert [row[0] for row in queue.query_jobs(None, ["id"])] == [blocker]
        found = queue.query("job", ["id", "status"], ["=", "id", done])
        assert found["data"] == [[[RS_NORMAL, done], [RS_NORMAL, "success"]]]
        live = queue.query("job", ["id"], None)["data"]
        assert live == [[[RS_NORMAL, blocker]]]
        archived = queue.query("job", ["id"], None, archived=True)["data"]
        assert archived == [[[RS_NORMAL, done]]]
        kill(queue, blocker)

    def test_auto_archive(self, queue: QueueUnderTest) -> None:
        finished = [run_job(queue, [dummy(fail=n == 1)])["id"] for n in range(3)]
        blocker = start_blocker(queue)
        assert queue.auto_archive_jobs(3600, 10) == [0, 0]
        assert queue.auto_archive_jobs(-1, 10) == [3, 0]
        assert queue.live.ids() == [blocker]
        assert queue.store.archived_ids() == finished
        kill(queue, blocker)
        assert queue.auto_archive_jobs(-1, 10) == [1, 0]
        assert queue.live.ids() == []


class TestQueries:
    def test_query_fields(self, queue: QueueUnderTest) -> None:
        every = queue.query_fields("job", None)["fields"]
        names = [field["name"] for field in every]
        assert names == sorted(names) and {"id", "status", "oplog"} <= set(names)
        assert all(set(field) == {"name", "title", "kind", "doc"} for field in every)
        some = queue.query_fields("job", ["status", "bogus"])["fields"]
        assert some[0]["name"] == "status" and some[0]["kind"] == "text"
        assert some[1]["name"] == "bogus" and some[1]["kind"] == "unknown"
        with pytest.raises(OpPrereqError):
            queue.query_fields("nodes", None)

    def test_query_filters(self, queue: QueueUnderTest) -> None:
        ok = run_job(queue, [dummy()])["id"]
        failed = run_job(queue, [dummy(fail=True)])["id"]
        canceled_job = queue.submit_job([dummy(depends=[[failed, ["success"]]])])
        wait_for_status(queue, canceled_job, FINAL)
        either = ["|", ["=", "status", "success"], ["=", "status", "error"]]
        result = queue.query("job", ["id", "status"], either)
        assert [field["name"] for field in result["fields"]] == ["id", "status"]
        assert result["data"] == [
            [[RS_NORMAL, ok], [RS_NORMAL, "success"]],
            [[RS_NORMAL, failed], [RS_NORMAL, "error"]],
            [[RS_NORMAL, canceled_job], [RS_NORMAL, "error"]],
        ]
        by_id = queue.query("job", ["id", "opstatus"], ["=", "id", failed])["data"]
        assert by_id == [[[RS_NORMAL, failed], [RS_NORMAL, ["error"]]]]
        negated = queue.query("job", ["id"], ["!", ["=", "status", "error"]])["data"]
        assert negated == [[[RS_NORMAL, ok]]]
        with pytest.raises(OpPrereqError):
            queue.query("job", ["id"], ["=", "no_such_field", 1])
        with pytest.raises(OpPrereqError):
            queue.query("job", ["id"], ["~~", "id", 1])

    def test_unknown_fields(self, queue: QueueUnderTest) -> None:
        job_id = run_job(queue, [dummy()])["id"]
        result = queue.query("job", ["id", "bogus"], None)
        assert result["fields"][1]["kind"] == "unknown"
        assert result["data"] == [[[RS_NORMAL, job_id], [RS_UNKNOWN, None]]]
        with pytest.raises(OpPrereqError, match="bogus"):
            queue.query_jobs([job_id], ["id", "bogus"])

    def test_query_jobs_shapes(self, queue: QueueUnderTest) -> None:
        job_id = run_job(queue, [delay(0, repeat=1), dummy(result=5)])["id"]
        fields = ["id", "status", "summary", "opstatus", "opresult", "priority", "oppriority"]
        assert queue.query_jobs([job_id, 999], fields) == [
            [
                job_id,
                "success",
                ["TEST_DELAY(0)", "TEST_DUMMY"],
                ["success"] * 2,
                [None, 5],
                0,
                [0, 0],
            ],
            [999] + [None] * (len(fields) - 1),  # Ganeti: the id of an unknown job, nulls
        ]
        (row,) = queue.query_jobs([job_id], ["received_ts", "start_ts", "end_ts", "oplog"])
        received, started, ended, oplog = row
        assert stamp(received) <= stamp(started) <= stamp(ended)
        (entry,) = oplog[0]
        assert entry[0] == 1 and entry[2:] == ["message", "Test delay iteration 1/1"]
        assert oplog[1] == []
