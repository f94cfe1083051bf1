"""Sample jobs and files for the storage tests (``test_storage``,
``test_storage_files``, ``test_storage_output``, ``test_etcdstore``): a job in a
given status (``make_job``), creating jobs in a store (``create``), filter rule
uuids, and ``touch`` for a file of a given age.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.model import Job
from jobqueue.storage.base import JobStore


def make_job(job_id: int, status: Status = Status.QUEUED) -> Job:
    job = Job.new(job_id, [{"OP_ID": "OP_TEST_DELAY", "duration": 1}], [1000 + job_id, 0])
    if status != Status.QUEUED:
        job.ops[0].status = status
        job.end_timestamp = [2000, 0] if status in constants.FINALIZED else None
    return job


RULE_UUIDS = ("0b8d1c7e-4f31-4a62-9d0e-5a2f7c9b1e44", "8c2f9a10-33b5-4c1d-8e7f-60a1b2c3d4e5")


def create(store: JobStore, *jobs: Job) -> None:
    assert store.create_jobs(jobs) == [None] * len(jobs)


def touch(path: Path, age: float, content: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
