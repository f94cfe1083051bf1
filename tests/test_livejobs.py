"""LiveJobs: published states, index entries, watches; and the reader answering from them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from jobqueue.constants import Status
from jobqueue.depmgr import DependencyManager
from jobqueue.jobreader import JobReader, stored_status
from jobqueue.livejobs import LiveJobs, input_size
from jobqueue.locking import LockManager
from jobqueue.model import Job, default_summary
from jobqueue.storage.memory import MemoryJobStore

DELAY = {"OP_ID": "OP_TEST_DELAY", "duration": 1}


def new_job(job_id: int, ops: int = 1) -> Job:
    return Job.new(job_id, [dict(DELAY)] * ops, [1000, 0])


class Reads(MemoryJobStore):
    """A memory store that counts the jobs read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []
        self.batches: list[list[int]] = []

    def read_job(self, job_id: int) -> Job | None:
        self.reads.append(job_id)
        return super().read_job(job_id)

    def read_jobs(self, job_ids: Sequence[int]) -> list[Job | None]:
        self.batches.append(list(job_ids))
        return super().read_jobs(job_ids)


@pytest.fixture
def live() -> LiveJobs:
    return LiveJobs(default_summary)


def test_a_published_state_never_changes_afterwards(live: LiveJobs) -> None:
    job = new_job(1)
    live.publish([job])
    published = live.latest(1)
    assert published is not None and published is not job
    job.ops[0].status = Status.RUNNING
    job.add_log(0, "message", "later", [1, 2])
    assert published.ops[0].status == Status.QUEUED and published.ops[0].log == []
    assert live.status_of(1) == Status.QUEUED
    live.publish([job])
    latest = live.latest(1)
    assert latest is not None and latest.ops[0].log == [[1, [1, 2], "message", "later"]]
    assert live.status_of(1) == Status.RUNNING


def test_finished_jobs_keep_only_their_entry(live: LiveJobs) -> None:
    job = new_job(1)
    live.publish([job])
    job.finalize_pending(Status.SUCCESS, None, [5, 0])
    live.publish([job])
    assert live.latest(1) is None
    entry = live.entry(1)
    assert entry is not None and entry.status == Status.SUCCESS and entry.end_timestamp == [5, 0]
    live.drop([1])
    assert live.entry(1) is None and live.count() == 0


def test_load_copies_only_unfinished_jobs(live: LiveJobs) -> None:
    done = new_job(2)
    done.finalize_pending(Status.ERROR, "x", [5, 0])
    live.load([new_job(3), done])
    assert live.ids() == [2, 3]
    assert live.latest(2) is None
    latest = live.latest(3)
    assert latest is not None and latest.id == 3


def test_the_opcode_count_follows_loads_publications_and_drops(live: LiveJobs) -> None:
    live.load([new_job(1, ops=3), new_job(2, ops=2)])
    assert live.opcode_count() == 5
    job = new_job(3, ops=4)
    live.publish([job])
    live.publish([job])  # a new state of a job it holds: no new opcodes
    job.finalize_pending(Status.SUCCESS, None, [5, 0])
    live.publish([job])  # finished, still live until dropped
    assert live.opcode_count() == 9
    live.drop([1, 3, 7])  # 7 is not live: nothing to take away
    assert live.opcode_count() == 2
    live.load([])
    assert live.opcode_count() == 0


def test_input_bytes_are_measured_once_per_job_and_follow_it(live: LiveJobs) -> None:
    small, large = new_job(1), Job.new(2, [{**DELAY, "comment": "x" * 5000}], [1000, 0])
    assert input_size(small) == len(json.dumps([small.ops[0].input], separators=(",", ":"))) + 1
    live.load([small])
    assert live.input_bytes() == input_size(small)
    live.publish([large])
    large.add_log(0, "message", "y" * 9000, [1, 2])  # its log is not its input
    live.publish([large])
    assert live.input_bytes() == input_size(small) + input_size(large) > 5000
    live.drop([1])
    assert live.input_bytes() == input_size(large)


def test_summaries_are_computed_once_per_job() -> None:
    calls: list[dict[str, Any]] = []

    def summarize(op_input: dict[str, Any]) -> str:
        calls.append(op_input)
        return "S"

    live = LiveJobs(summarize)
    job = new_job(1, ops=3)
    for _ in range(5):
        live.publish([job])
    assert len(calls) == 3
    entry = live.entry(1)
    assert entry is not None and entry.summary == ["S", "S", "S"]


def test_equal_summaries_of_a_job_share_one_string() -> None:
    """A job of many alike opcodes keeps one summary text while it lives."""
    live = LiveJobs(lambda op_input: "".join(["DELAY(", str(op_input["n"] % 2), ")"]))
    job = new_job(1, ops=4)
    for index, op in enumerate(job.ops):
        op.input = {**op.input, "n": index}
    live.publish([job])
    entry = live.entry(1)
    assert entry is not None and entry.summary == ["DELAY(0)", "DELAY(1)"] * 2
    assert entry.summary[0] is entry.summary[2] and entry.summary[1] is entry.summary[3]


def test_watches_hear_each_publication_of_their_job_only(live: LiveJobs) -> None:
    heard: list[str] = []
    job, other = new_job(1), new_job(2)
    live.publish([job, other])
    first = live.watch(1, lambda: heard.append("first"))
    assert first.latest is not None and first.latest.id == 1
    with live.watch(1, lambda: heard.append("second")) as second:
        live.publish([other])
        assert heard == []
        job.add_log(0, "message", "hi", [1, 0])
        live.publish([job])
        assert heard == ["first", "second"]
        assert second.latest is not None and second.latest.log_serial == 1
    assert live.watch_count() == 1
    live.drop([1])
    assert heard == ["first", "second", "first"] and first.latest is None
    first.close()
    first.close()
    assert live.watch_count() == 0


def test_a_watch_on_a_finished_job_holds_no_state(live: LiveJobs) -> None:
    job = new_job(1)
    job.finalize_pending(Status.SUCCESS, None, [5, 0])
    live.publish([job])
    with live.watch(1, lambda: None) as watch:
        assert watch.latest is None  # read it from the store


def test_a_watch_sees_a_copy_of_the_job_that_finished(live: LiveJobs) -> None:
    job = new_job(1)
    live.publish([job])
    with live.watch(1, lambda: None) as watch:
        job.finalize_pending(Status.SUCCESS, "done", [5, 0])
        live.publish([job])
        finished = watch.latest
        assert finished is not None and finished is not job
        job.ops[0].result = "changed later"
        assert finished.ops[0].result == "done" and finished.status == Status.SUCCESS
    assert live.latest(1) is None


class TestReader:
    @pytest.fixture
    def store(self) -> Reads:
        return Reads()

    @pytest.fixture
    def reader(self, live: LiveJobs, store: Reads) -> JobReader:
        depmgr = DependencyManager(lambda job_id: stored_status(live, store, job_id))
        return JobReader(live, store, LockManager(), depmgr, default_summary)

    def stored(self, live: LiveJobs, store: Reads, job: Job) -> None:
        """What the queue does: write, then publish."""
        store.replace_job(job)
        live.publish([job])

    def test_live_jobs_are_answered_without_reading_the_store(
        self, reader: JobReader, live: LiveJobs, store: Reads
    ) -> None:
        job = new_job(1)
        job.ops[0].status = Status.RUNNING
        job.add_log(0, "message", "one", [1, 0])
        self.stored(live, store, job)
        current = reader.read_job(1)
        assert current is not None
        assert reader.job_change(current, ["status"], None, None) == [
            ["running"],
            [[1, [1, 0], "message", "one"]],
        ]
        assert reader.job_change(current, ["status"], ["running"], 1) is None
        assert reader.job_change(current, ["status"], ["queued"], 1) == [["running"], []]
        assert reader.query_jobs([1], ["id", "status", "oplog"])[0][1] == "running"
        assert store.reads == []

    def test_finished_jobs_are_read_and_always_count_as_changed(
        self, reader: JobReader, live: LiveJobs, store: Reads
    ) -> None:
        job = new_job(1)
        job.finalize_pending(Status.CANCELED, "gone", [5, 0])
        self.stored(live, store, job)
        finished = reader.read_job(1)
        assert store.reads == [1]
        assert finished is not None
        assert reader.job_change(finished, ["status"], ["canceled"], None) == [["canceled"], []]

    def test_finished_jobs_of_a_query_are_read_in_batches(
        self, reader: JobReader, live: LiveJobs, store: Reads
    ) -> None:
        for job_id in range(1, 151):
            job = new_job(job_id)
            if job_id != 7:  # job 7 still runs: answered from memory
                job.finalize_pending(Status.SUCCESS, None, [5, 0])
            self.stored(live, store, job)
        asked = [*range(1, 151), 3]
        rows = reader.query_jobs(asked, ["id", "opresult"])
        assert [row[0] for row in rows] == asked
        assert [len(batch) for batch in store.batches] == [63, 64, 22]
        assert 7 not in store.batches[0] and sorted(store.reads) == sorted({*range(1, 151)} - {7})

    def test_unknown_jobs(self, reader: JobReader) -> None:
        assert reader.read_job(31337) is None
        assert reader.query_jobs([31337], ["id", "status"]) == [[31337, None]]
        rows = reader.query("job", ["id", "status"], ["|", ["==", "id", 31337]])["data"]
        assert rows == [[[0, 31337], [3, None]]]

    def test_stored_status_is_what_was_written(self, live: LiveJobs, store: Reads) -> None:
        job = new_job(1)
        self.stored(live, store, job)
        job.ops[0].status = Status.SUCCESS  # changed in memory, not written
        assert stored_status(live, store, 1) == Status.QUEUED
        job.end_timestamp = [6, 0]
        store.replace_job(job)
        store.archive_jobs([1])
        live.drop([1])
        assert stored_status(live, store, 1) == Status.SUCCESS
        assert stored_status(live, store, 2) is None
