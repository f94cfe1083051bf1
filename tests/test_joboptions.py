"""Job-level options (start time, retries, time limit) and retried attempts, without a queue."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.constants import Status
from jobqueue.errors import OpExecError, OpPrereqError, encode_error
from jobqueue.joboptions import JobOptions, parse_one, parse_options
from jobqueue.model import Job, RetryPolicy
from jobqueue.retries import arrange_retry


def test_no_options_change_nothing() -> None:
    assert parse_options(None, 3) is None
    assert parse_one({}) == JobOptions()


def test_options_are_parsed_for_every_job_or_each() -> None:
    shared = parse_options({"start_at": 5, "timeout": 60}, 2)
    assert shared == [JobOptions(5.0, None, 60.0)] * 2
    each = parse_options([{"retries": 2, "retry_delay": 1.5}, None], 2)
    assert each == [JobOptions(retry=RetryPolicy(2, 1.5, 1.0, None)), JobOptions()]


@pytest.mark.parametrize(
    "options",
    [
        {"when": 5},
        {"start_at": "tomorrow"},
        {"start_at": float("inf")},
        {"start_at": 1e300},
        {"start_at": -5},
        {"timeout": 1e300},
        {"timeout": float("nan")},
        {"timeout": 10**400},  # too large for a float: refused, not an OverflowError
        {"start_at": 10**400},
        {"retries": 2, "retry_max_delay": -(10**400)},
        {"retries": -1},
        {"retries": 1.5},
        {"retries": 10_000},
        {"retry_delay": 5},
        {"retries": 2, "retry_backoff": 0.5},
        {"retries": 2, "retry_delay": -1},
        {"timeout": 0},
        {"timeout": True},
        [],
        "soon",
    ],
)
def test_bad_options_are_refused(options: Any) -> None:
    with pytest.raises(OpPrereqError):
        parse_options(options, 1)


def test_a_list_must_have_one_entry_per_job() -> None:
    with pytest.raises(OpPrereqError):
        parse_options([{}], 2)


def test_delays_back_off_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=5, delay=2, backoff=3, max_delay=30)
    assert [policy.delay_before(n) for n in range(1, 5)] == [2, 6, 18, 30]
    assert RetryPolicy(retries=999, delay=1, backoff=10).delay_before(999) == 365 * 86400


def make_job(policy: RetryPolicy | None) -> Job:
    job = Job.new(4, [{"OP_ID": "OP_TEST_DELAY"}, {"OP_ID": "OP_TEST_DELAY"}], [100, 0])
    job.retry = policy
    job.ops[0].status = Status.SUCCESS
    op = job.ops[1]
    op.status, op.start_timestamp, op.exec_timestamp = Status.RUNNING, [101, 0], [102, 0]
    return job


def test_a_failed_attempt_is_recorded_and_the_opcode_queued_again() -> None:
    job = make_job(RetryPolicy(retries=2, delay=10, backoff=2))
    error = encode_error(OpExecError("exit code 1"))
    assert arrange_retry(job, 1, error, [200, 0])
    assert job.ops[0].status == Status.SUCCESS  # what succeeded is not run again
    assert job.ops[1].status == Status.QUEUED and job.ops[1].result is None
    assert job.ops[1].start_timestamp is None
    assert job.status == Status.QUEUED and job.attempt == 2
    assert job.not_before == [210, 0]
    assert job.attempts == [
        {
            "attempt": 1,
            "opcode": 1,
            "start": [101, 0],
            "exec": [102, 0],
            "end": [200, 0],
            "error": error,
        }
    ]
    assert job.ops[1].log[-1][3] == "Attempt 1 of 3 failed: exit code 1; attempt 2 in 10s"
    assert arrange_retry(job, 1, error, [300, 0])
    assert job.not_before == [320, 0] and job.attempt == 3
    assert not arrange_retry(job, 1, error, [400, 0])  # the last attempt: it fails for good
    assert job.ops[1].log[-1][3] == "Attempt 3 of 3 failed: exit code 1"
    assert len(job.attempts) == 2


def test_a_job_without_a_policy_is_not_retried() -> None:
    job = make_job(None)
    assert not arrange_retry(job, 1, "boom", [200, 0])
    assert job.ops[1].status == Status.RUNNING and job.ops[1].log == []


def test_job_controls_survive_storage_and_old_files_load() -> None:
    job = make_job(RetryPolicy(retries=1, delay=3))
    job.timeout, job.not_before = 60.0, [500, 0]
    assert arrange_retry(job, 1, "boom", [200, 0])
    stored = job.to_dict()
    assert {"not_before", "retry", "attempt", "attempts", "timeout"} <= set(stored)
    assert Job.from_dict(stored) == job
    plain = Job.new(5, [{"OP_ID": "OP_TEST_DELAY"}], [1, 0]).to_dict()
    assert set(plain) == {"id", "ops", "received_timestamp", "start_timestamp", "end_timestamp"}
    loaded = Job.from_dict(plain)
    assert loaded.retry is None and loaded.attempt == 1 and loaded.not_before is None
