"""What runs when, through a real JobQueue on files: filter rules, start times,
retries, time limits and the number of workers."""

# ruff: noqa: F811  (the queue fixtures of lu_harness are imported, then used by name)

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants, filters
from jobqueue.admission import stored_rules
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import JobRejected, NotMasterError, OpPrereqError
from jobqueue.jobreader import JobReader
from jobqueue.livejobs import LiveJobs
from jobqueue.locking import LockManager
from jobqueue.model import Job
from jobqueue.standby import StandbyQueue
from jobqueue.storage.files import FileJobStore
from jobqueue.storage.memory import MemoryBacking, MemoryJobStore
from tests.lu_harness import (  # noqa: F401
    FINAL,
    PROMPT,
    WAIT,
    MakeQueue,
    command,
    delay,
    info,
    make_queue,
    py,
    queue,
    stamp,
    start_blocker,
    wait_for_status,
    wait_until,
)
from tests.queue_harness import QueueUnderTest

RUNS = [["opcode", ["=", "OP_ID", "OP_COMMAND_RUN"]]]


def hold_of(queue: QueueUnderTest, job_id: int) -> Any:
    (row,) = queue.query_jobs([job_id], ["hold"])
    return row[0]


def fields(queue: QueueUnderTest, job_id: int, *names: str) -> list[Any]:
    (row,) = queue.query_jobs([job_id], list(names))
    return list(row)


def flaky(counter: Path, failures: int) -> list[str]:
    """A command that fails ``failures`` times, then succeeds (counting in ``counter``)."""
    code = (
        "import sys; p = sys.argv[1]\n"
        "try: n = int(open(p).read())\n"
        "except OSError: n = 0\n"
        "open(p, 'w').write(str(n + 1))\n"
        f"print('run', n + 1); sys.exit(1 if n < {failures} else 0)"
    )
    return py(code, str(counter))


class TestStartTimes:
    def test_a_scheduled_job_waits_without_a_worker(self, make_queue: MakeQueue) -> None:
        queue = make_queue(workers=1)
        start = time.time() + 1.0
        later = queue.submit_job([delay(0)], options={"start_at": start})
        now = queue.submit_job([delay(0)])
        assert wait_for_status(queue, now, "success") == "success"  # the one worker was free
        assert fields(queue, later, "status")[0] == "queued"
        assert hold_of(queue, later)["kind"] == "scheduled"
        assert wait_for_status(queue, later, FINAL, WAIT) == "success"
        (start_ts,) = fields(queue, later, "start_ts")
        assert stamp(start_ts) >= start

    def test_the_start_time_can_change_while_the_job_waits(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(0)], options={"start_at": time.time() + 3600})
        wait_until(lambda: hold_of(queue, job_id) is not None)
        assert queue.change_job_start(job_id, None)[0]
        assert wait_for_status(queue, job_id, FINAL) == "success"
        assert not queue.change_job_start(job_id, time.time())[0]  # finished: too late

    def test_a_scheduled_job_can_be_canceled(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(0)], options={"start_at": time.time() + 3600})
        assert queue.cancel_job(job_id)[0]
        assert wait_for_status(queue, job_id, FINAL) == "canceled"

    def test_a_bad_start_time_is_refused(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError):
            queue.submit_job([delay(0)], options={"start_at": "noon"})
        with pytest.raises(OpPrereqError):
            queue.change_job_start(1, 1e300)

    def test_the_start_time_survives_a_restart(self, make_queue: MakeQueue, tmp_path: Path) -> None:
        first = make_queue(queue_dir=tmp_path / "q")
        start = time.time() + 1.5
        job_id = first.submit_job([delay(0)], options={"start_at": start})
        first.core.queue.prepare_shutdown()
        first.core.stop()
        second = make_queue(queue_dir=tmp_path / "q")
        assert wait_for_status(second, job_id, FINAL) == "success"
        assert stamp(fields(second, job_id, "start_ts")[0]) >= start


class TestRetries:
    def test_a_flaky_command_succeeds_on_its_third_attempt(
        self, queue: QueueUnderTest, tmp_path: Path
    ) -> None:
        options = {"retries": 3, "retry_delay": 0.05, "retry_backoff": 2}
        job_id = queue.submit_job([command(flaky(tmp_path / "n", 2))], options=options)
        dependent = queue.submit_job([delay(0, depends=[[job_id, ["success"]]])])
        assert wait_for_status(queue, dependent, FINAL) == "success"
        status, attempt, attempts, log, end_ts = fields(
            queue, job_id, "status", "attempt", "attempts", "oplog", "end_ts"
        )
        assert status == "success" and attempt == 3
        assert [record["attempt"] for record in attempts] == [1, 2]
        assert all(record["error"][0] == "OpExecError" for record in attempts)
        messages = [entry[3] for entry in log[0]]
        assert [m for m in messages if m.startswith("run")] == ["run 1", "run 2", "run 3"]
        assert any(m.startswith("Attempt 1 of 4 failed") for m in messages)
        assert any(m.startswith("Attempt 2 of 4 failed") for m in messages)
        (dependent_exec,) = fields(queue, dependent, "opexec")
        assert stamp(dependent_exec[0]) >= stamp(end_ts)  # only after the final outcome
        assert (tmp_path / "n").read_text() == "3"

    def test_the_last_attempt_s_failure_finishes_the_job(
        self, queue: QueueUnderTest, tmp_path: Path
    ) -> None:
        job_id = queue.submit_job([command(flaky(tmp_path / "n", 9))], options={"retries": 1})
        assert wait_for_status(queue, job_id, FINAL) == "error"
        attempts, log = fields(queue, job_id, "attempts", "oplog")
        assert len(attempts) == 1 and (tmp_path / "n").read_text() == "2"
        assert log[0][-1][3].startswith("Attempt 2 of 2 failed")

    def test_a_canceled_job_is_not_retried(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(60)], options={"retries": 5})
        wait_for_status(queue, job_id, "running")
        assert queue.cancel_job(job_id, kill=True)[0]
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"
        assert fields(queue, job_id, "attempts")[0] == []

    def test_a_crash_counts_as_a_failed_attempt(
        self, make_queue: MakeQueue, tmp_path: Path
    ) -> None:
        queue_dir = tmp_path / "q"
        store = FileJobStore(str(queue_dir))
        (job_id,) = store.allocate_ids(1)
        job = Job.new(job_id, [delay(0)], [1, 0])
        job.retry = Job.from_dict({**job.to_dict(), "retry": {"retries": 1}}).retry
        job.ops[0].status, job.ops[0].start_timestamp = constants.Status.RUNNING, [2, 0]
        job.start_timestamp = [2, 0]
        assert store.create_jobs([job]) == [None]
        queue = make_queue(queue_dir=queue_dir)
        assert wait_for_status(queue, job_id, FINAL) == "success"
        attempts, log = fields(queue, job_id, "attempts", "oplog")
        assert attempts[0]["error"] == ["OpExecError", [constants.MSG_UNCLEAN_SHUTDOWN]]
        assert log[0][0][3].startswith("Attempt 1 of 2 failed: Unclean master daemon shutdown")


class TestTimeLimits:
    def test_a_job_past_its_limit_is_canceled_and_its_command_killed(
        self, queue: QueueUnderTest
    ) -> None:
        job_id = queue.submit_job([command(["sleep", "60"])], options={"timeout": 0.5})
        started = time.monotonic()
        assert wait_for_status(queue, job_id, FINAL, WAIT) == "canceled"
        assert time.monotonic() - started < 30
        (result,) = fields(queue, job_id, "opresult")
        assert "time limit of 0.5s was reached" in json.dumps(result)

    def test_lock_waits_count(self, queue: QueueUnderTest) -> None:
        holder = queue.submit_job([command(["sleep", "60"], locks=["x"])])
        wait_for_status(queue, holder, "running")
        job_id = queue.submit_job([command(["true"], locks=["x"])], options={"timeout": 0.5})
        assert wait_for_status(queue, job_id, FINAL, WAIT) == "canceled"
        queue.cancel_job(holder, kill=True)


class TestFilters:
    def test_pause_holds_new_jobs_and_lifting_it_starts_them(self, queue: QueueUnderTest) -> None:
        running = start_blocker(queue)
        uuid = queue.replace_filter(None, 0, [], "PAUSE", [])
        held = queue.submit_job([delay(0)])
        wait_until(lambda: (hold_of(queue, held) or {}).get("filter") == uuid)
        assert fields(queue, running, "status") == ["running"]  # what runs goes on
        assert fields(queue, held, "status") == ["queued"]
        assert queue.delete_filter(uuid)
        assert wait_for_status(queue, held, FINAL) == "success"
        assert hold_of(queue, held) is None
        queue.cancel_job(running, kill=True)

    def test_pause_stops_a_job_before_its_next_opcode(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(0.3), delay(0)])
        wait_for_status(queue, job_id, "running")
        uuid = queue.replace_filter(None, 0, [], "PAUSE", [])
        wait_until(lambda: hold_of(queue, job_id) is not None)
        assert fields(queue, job_id, "opstatus") == [["success", "queued"]]
        assert queue.locks.lock_info() == []  # it holds no lock while held
        queue.delete_filter(uuid)
        assert wait_for_status(queue, job_id, FINAL) == "success"

    def test_reject_refuses_at_submission_and_cancels_queued_matches(
        self, queue: QueueUnderTest
    ) -> None:
        pause = queue.replace_filter(None, 5, [], "PAUSE", [])
        queued = queue.submit_job([command(["true"])])
        other = queue.submit_job([delay(0)])
        reject = queue.replace_filter(None, 0, RUNS, "REJECT", [])
        assert wait_for_status(queue, queued, FINAL) == "canceled"
        (result,) = fields(queue, queued, "opresult")
        assert result == [f"Job canceled by filter rule {reject}"]
        with pytest.raises(JobRejected):
            queue.submit_job([command(["true"])])
        many = queue.submit_many_jobs([[command(["true"])], [delay(0)]])
        assert many[0][0] is False and reject in many[0][1] and many[1][0] is True
        queue.delete_filter(pause)
        assert wait_for_status(queue, other, FINAL) == "success"

    def test_rate_limit_caps_matching_jobs_only(
        self, make_queue: MakeQueue, tmp_path: Path
    ) -> None:
        queue = make_queue(workers=8)
        uuid = queue.replace_filter(None, 0, RUNS, ["RATE_LIMIT", 2], [])
        limited = [queue.submit_job([command(["sleep", "0.2"])]) for _ in range(8)]
        free = [queue.submit_job([delay(0.2)]) for _ in range(3)]
        for job_id in limited + free:
            assert wait_for_status(queue, job_id, FINAL) == "success"
        spans = [fields(queue, job_id, "opexec", "opend") for job_id in limited]
        intervals = [(stamp(start[0]), stamp(end[0])) for start, end in spans]
        most = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
        assert most <= 2
        assert queue.core.queue._admission.slot_holders(uuid) == set()

    def test_rules_survive_a_restart(self, make_queue: MakeQueue, tmp_path: Path) -> None:
        first = make_queue(queue_dir=tmp_path / "q")
        uuid = first.replace_filter(None, 3, RUNS, "PAUSE", [["test", "maintenance", 1]])
        first.core.queue.prepare_shutdown()
        first.core.stop()
        second = make_queue(queue_dir=tmp_path / "q")
        answer = second.query("filter", ["uuid", "priority", "action", "reason_trail"], None)
        (row,) = answer["data"]
        assert [cell[1] for cell in row[:3]] == [uuid, 3, "PAUSE"]
        assert row[3][1][0] == ["test", "maintenance", 1]
        held = second.submit_job([command(["true"])])
        wait_until(lambda: hold_of(second, held) is not None)

    def test_the_watermark_is_the_highest_job_id(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([delay(0)])
        uuid = queue.replace_filter(None, 0, [["jobid", [">", "id", "watermark"]]], "PAUSE", [])
        (row,) = queue.query("filter", ["watermark"], ["=", "uuid", uuid])["data"]
        assert row == [[0, job_id]]
        assert wait_for_status(queue, job_id, FINAL) == "success"  # older: not paused
        newer = queue.submit_job([delay(0)])
        wait_until(lambda: hold_of(queue, newer) is not None)


class TestWorkers:
    def test_the_worker_count_changes_at_once_and_durably(
        self, make_queue: MakeQueue, tmp_path: Path
    ) -> None:
        queue = make_queue(workers=2, queue_dir=tmp_path / "q")
        assert queue.set_max_running_jobs(5)
        assert queue.query_config_values(["workers", "max_running_jobs"]) == [5, 5]
        with pytest.raises(OpPrereqError):
            queue.set_max_running_jobs(0)
        queue.core.queue.prepare_shutdown()
        queue.core.stop()
        again = make_queue(workers=2, queue_dir=tmp_path / "q")
        assert again.query_config_values(["max_running_jobs"]) == [5]

    def test_busy_workers_count_slots_not_job_statuses(self, make_queue: MakeQueue) -> None:
        """A job waiting for its locks holds a worker, one waiting for another job
        holds none: busy_workers says so, where counting running jobs would not."""
        queue = make_queue(workers=3)
        assert queue.query_config_values(["workers", "busy_workers"]) == [3, 0]
        holder = queue.submit_job([command(["sleep", "60"], locks=["x"])])
        wait_for_status(queue, holder, "running")
        locked_out = queue.submit_job([command(["true"], locks=["x"])])
        dependent = queue.submit_job([delay(0, depends=[[holder, []]])])
        assert wait_until(lambda: dependent in queue.depmgr.waiting_jobs())
        assert wait_for_status(queue, locked_out, "waiting") == "waiting"
        # The dependent gives its worker back just after it registered as a waiter.
        assert wait_until(lambda: queue.query_config_values(["workers", "busy_workers"]) == [3, 2])
        assert queue.cancel_job(holder, kill=True)[0]
        for job_id in (locked_out, dependent):
            wait_for_status(queue, job_id, FINAL)
        assert wait_until(lambda: queue.query_config_values(["busy_workers"]) == [0])


class TestStandby:
    def test_a_standby_refuses_every_control_and_shows_the_stored_rules(self) -> None:
        backing = MemoryBacking()
        store = MemoryJobStore(backing)
        rule = filters.make_rule(None, 2, RUNS, "PAUSE", [], watermark=7)
        store.replace_filter(rule.to_dict())
        live = LiveJobs(lambda op: "x")
        standby = StandbyQueue(store, lambda: "the master", live)
        for call in (
            lambda: standby.replace_filter(None, 0, [], "PAUSE", []),
            lambda: standby.delete_filter(rule.uuid),
            lambda: standby.set_max_running_jobs(3),
            lambda: standby.change_job_start(1, None),
        ):
            with pytest.raises(NotMasterError):
                call()
        assert standby.query_config_values(["filters", "max_running_jobs"]) == [1, 0]
        reader = JobReader(
            live,
            store,
            LockManager(),
            DependencyManager(lambda job_id: None),
            lambda op: "x",
            filter_rules=lambda: stored_rules(store, logging.getLogger("test")),
        )
        answer = reader.query("filter", ["uuid", "watermark"], None)
        assert answer["data"] == [[[0, rule.uuid], [0, 7]]]
