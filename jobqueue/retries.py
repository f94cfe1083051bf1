"""Automatic retries: a failed attempt recorded, and the job set to run again later.

A job with a ``RetryPolicy`` whose opcode fails (an error of the opcode
itself, or an attempt cut short by a crash or a shutdown: never a cancel,
a kill, a dependency that ended wrongly or a result that cannot be stored,
``OpResultUnstorable``) is not finished: while it has
retries left, the failed attempt is recorded in ``Job.attempts`` and in the
opcode's log, the opcode goes back to ``queued`` (its log kept), and the job
may start again at ``not_before``, the retry's delay from now. The opcodes
that had succeeded are not run again. Only the last attempt's failure
finishes the job, so jobs depending on it see only the final outcome.

Pure: the caller holds the job's lock and writes the job afterwards.
"""

from __future__ import annotations

from typing import Any

from jobqueue.constants import ELOG_MESSAGE, Status
from jobqueue.errors import decode_error, is_encoded_error
from jobqueue.model import Job, Timestamp, merge_time, split_time


def arrange_retry(job: Job, index: int, error: Any, now: Timestamp) -> bool:
    """After opcode ``index`` failed with ``error`` (encoded): retry the job if it may.

    Returns True if a retry was arranged (the opcode is queued again and
    ``job.not_before`` set); False if the job has no retries left, and then
    logs that the last attempt failed (for a job with a policy). Changes
    nothing else either way.
    """
    policy = job.retry
    if policy is None:
        return False
    op = job.ops[index]
    total = policy.retries + 1
    text = _error_text(error)
    if job.attempt >= total:
        job.add_log(index, ELOG_MESSAGE, f"Attempt {job.attempt} of {total} failed: {text}", now)
        return False
    delay = policy.delay_before(job.attempt)
    record = {
        "attempt": job.attempt,
        "opcode": index,
        "start": op.start_timestamp,
        "exec": op.exec_timestamp,
        "end": now,
        "error": error,
    }
    job.attempts = [*job.attempts, record]  # replaced: published snapshots share the list
    job.add_log(
        index,
        ELOG_MESSAGE,
        f"Attempt {job.attempt} of {total} failed: {text}; attempt {job.attempt + 1} in {delay:g}s",
        now,
    )
    job.attempt += 1
    job.not_before = split_time(merge_time(now) + delay)
    op.status, op.result = Status.QUEUED, None
    op.start_timestamp = op.exec_timestamp = op.end_timestamp = None
    return True


def _error_text(error: Any) -> str:
    return str(decode_error(error)) if is_encoded_error(error) else str(error)
