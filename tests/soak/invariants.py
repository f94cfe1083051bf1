"""Invariants of a queue directory after crashes and faults, checked against the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobqueue.constants import FINALIZED, MSG_UNCLEAN_SHUTDOWN, PENDING, Status
from jobqueue.luxi.client import Client
from jobqueue.model import Job, merge_time
from tests.daemon_helper import wait_until
from tests.queue_files import corrupt_files, load_jobs, temp_files
from tests.soak.load import Submitted

#: A Query2 filter for live jobs that are not final yet.
NOT_FINAL = ["|", *(["=", "status", str(status)] for status in [*PENDING, Status.RUNNING])]


def wait_all_final(client: Client, job_ids: list[int], timeout: float) -> list[list[Any]]:
    """Wait until no live job is pending or running; return the status rows of ``job_ids``.

    Polls with a filter, so each poll lists only the unfinished jobs.
    """
    wait_until(
        lambda: not client.query("job", ["id"], NOT_FINAL)["data"],
        timeout,
        "every job to be final",
    )
    rows = client.query_jobs(job_ids, ["status"])
    assert all(row[0] in FINALIZED for row in rows), rows
    return rows


class CrashChecker:
    """What must hold after each kill and each restart (see ``test_crash_storm``)."""

    def __init__(self, queue_dir: Path) -> None:
        self.queue_dir = queue_dir
        self.max_id_at_kill = 0
        self.unfinished_at_kill: dict[int, list[int]] = {}
        self.lost: set[int] = set()
        self.unclean_checked = 0

    def after_kill(self, acked: dict[int, Submitted]) -> dict[int, Job]:
        jobs = load_jobs(self.queue_dir)  # fails on any unparseable file
        assert corrupt_files(self.queue_dir) == []
        self.lost |= {job_id for job_id in acked if job_id not in jobs}
        assert not self.lost, f"acknowledged jobs missing on disk: {sorted(self.lost)}"
        self.check_tags(jobs, acked)
        self.max_id_at_kill = max(jobs, default=0)
        self.unfinished_at_kill = {
            job_id: [i for i, op in enumerate(job.ops) if op.status not in FINALIZED]
            for job_id, job in jobs.items()
            if job.status in (Status.RUNNING, Status.CANCELING)
        }
        return jobs

    def check_tags(self, jobs: dict[int, Job], acked: dict[int, Submitted]) -> None:
        tags: dict[str, int] = {}
        for job_id, job in jobs.items():
            tag = str(job.ops[0].input.get("comment", ""))
            assert tags.setdefault(tag, job_id) == job_id, f"{tag} in jobs {tags[tag]}, {job_id}"
        for job_id, submitted in acked.items():
            first = jobs[job_id].ops[0].input
            assert first.get("comment") == f"{submitted.tag}#0", (
                f"job {job_id} holds {first.get('comment')!r}, acknowledged for {submitted.tag}"
            )
            stored = first.get("depends") or []
            assert len(stored) == len(submitted.depends), (job_id, first, submitted)
            for (dep_id, wanted), (meant_id, meant_wanted) in zip(
                stored, submitted.depends, strict=True
            ):
                assert wanted == meant_wanted, (job_id, first, submitted)
                if meant_id is None:  # a job of the same call that could not be stored
                    assert dep_id not in jobs, (job_id, first, submitted)
                else:
                    assert dep_id == meant_id, (job_id, first, submitted)

    def after_restart(self) -> None:
        """Jobs running at the kill are now in error: "Unclean master daemon shutdown"."""
        self.unclean_checked += len(self.unfinished_at_kill)
        jobs = load_jobs(self.queue_dir) if self.unfinished_at_kill else {}
        for job_id, indices in self.unfinished_at_kill.items():
            job = jobs[job_id]
            for index in indices:
                op = job.ops[index]
                assert (op.status, op.result) == (Status.ERROR, MSG_UNCLEAN_SHUTDOWN), (
                    f"job {job_id} opcode {index} after restart: {op.status} {op.result!r}"
                )

    def new_ids_are_fresh(self, before: set[int], acked: dict[int, Submitted], floor: int) -> None:
        fresh = set(acked) - before
        assert all(job_id > floor for job_id in fresh), (floor, sorted(fresh)[:5])


def check_dependencies(jobs: dict[int, Job]) -> int:
    """Every job is final; a dependent opcode that ran did so after its dependency ended."""
    checked = 0
    for job_id, job in jobs.items():
        assert job.status in FINALIZED, f"job {job_id} is {job.status}"
        for op in job.ops:
            for dep_id, wanted in op.input.get("depends") or []:
                dep = jobs.get(dep_id)
                if dep is None:  # refused in the same SubmitManyJobs: this one fails
                    assert op.status in (Status.ERROR, Status.CANCELED), (job_id, dep_id)
                    assert op.exec_timestamp is None, (job_id, dep_id)
                    continue
                if op.exec_timestamp is None:
                    continue
                checked += 1
                assert dep.end_timestamp is not None
                assert merge_time(dep.end_timestamp) <= merge_time(op.exec_timestamp), (
                    f"job {job_id} ran before its dependency {dep_id} ended"
                )
                assert not wanted or dep.status in wanted, (job_id, dep_id, dep.status, wanted)
    return checked


def check_children(jobs: dict[int, Job]) -> None:
    """Jobs an opcode submitted (its result names them) exist and are the right ones."""
    for job in jobs.values():
        for op in job.ops:
            if op.input["OP_ID"] != "OP_TEST_DUMMY" or op.status != Status.SUCCESS:
                continue
            for ok, child_id in op.result["jobs"]:
                if not ok:  # refused while the disk failed
                    assert child_id.startswith(("Cannot write ", "Cannot sync ")), child_id
                    continue
                assert jobs[child_id].ops[0].input["comment"] == f"{op.input['comment']}/child"


def check_final_state(
    checker: CrashChecker, jobs: dict[int, Job], acked: dict[int, Submitted]
) -> int:
    """Everything a storm checks at its end; returns the dependencies checked."""
    checker.check_tags(jobs, acked)
    dependencies = check_dependencies(jobs)
    check_children(jobs)
    assert temp_files(checker.queue_dir) == []
    assert corrupt_files(checker.queue_dir) == []
    return dependencies
