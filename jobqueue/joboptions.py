"""Job-level options given at submission: a start time, retries, a time limit.

Ganeti's ``SubmitJob`` has no place for them, so they travel as an optional
last argument that Ganeti's clients never send (``doc/luxi.rst``)::

    SubmitJob(ops, {"start_at": 1767225600.0, "retries": 3, "retry_delay": 10})
    SubmitManyJobs(jobs, {...})            the same options for every job
    SubmitManyJobs(jobs, [{...}, null])    one (or null) per job

Keys, all optional:

=================  =========================================================
``start_at``       seconds since the epoch; the job starts no earlier
``retries``        how often a failed job runs again (0 to ``MAX_RETRIES``)
``retry_delay``    seconds before the first retry (default 0)
``retry_backoff``  factor applied to the delay at each further retry (>= 1)
``retry_max_delay`` the longest delay, in seconds (default: none)
``timeout``        seconds the job may take from its first start
=================  =========================================================

Pure: checks values and builds records; nothing here touches a queue.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jobqueue.errors import ECODE_INVAL, GenericError, OpPrereqError
from jobqueue.model import Job, RetryPolicy, is_json_int, split_time

MAX_RETRIES = 1000
#: The latest start time accepted: the end of the year 9999, in seconds since the epoch.
MAX_START = 253402300799.0
#: The longest time limit and retry delay accepted: ten years, in seconds.
MAX_SECONDS = 10 * 365 * 86400.0
KEYS = ("start_at", "retries", "retry_delay", "retry_backoff", "retry_max_delay", "timeout")


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """The checked options of one job; the defaults change nothing."""

    start_at: float | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None

    def apply(self, job: Job) -> None:
        """Set them on a new job."""
        if self.start_at is not None:
            job.not_before = split_time(self.start_at)
        job.retry = self.retry
        job.timeout = self.timeout


def parse_options(value: Any, count: int) -> list[JobOptions] | None:
    """The options of ``count`` jobs from the wire value; None when none were given.

    Raises ``OpPrereqError`` naming the first thing wrong.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        return [parse_one(value)] * count
    if isinstance(value, list) and len(value) == count:
        return [JobOptions() if item is None else parse_one(item) for item in value]
    raise OpPrereqError(
        f"Job options must be an object, or a list of {count} objects or nulls", ECODE_INVAL
    )


def parse_one(value: Any) -> JobOptions:
    """One job's options; see the module docstring."""
    if not isinstance(value, dict):
        raise OpPrereqError("Job options must be an object", ECODE_INVAL)
    unknown = sorted(str(key) for key in value if key not in KEYS)
    if unknown:
        raise OpPrereqError(
            f"Unknown job option {', '.join(unknown)}; known are {', '.join(KEYS)}", ECODE_INVAL
        )
    retries = value.get("retries", 0)
    if not is_json_int(retries) or not 0 <= retries <= MAX_RETRIES:
        raise OpPrereqError(
            f"Job option retries must be an integer from 0 to {MAX_RETRIES}", ECODE_INVAL
        )
    delay = _seconds(value, "retry_delay", 0.0)
    backoff = _seconds(value, "retry_backoff", 1.0)
    max_delay = _seconds(value, "retry_max_delay", None)
    if backoff is not None and backoff < 1:
        raise OpPrereqError("Job option retry_backoff must be at least 1", ECODE_INVAL)
    given = [key for key in KEYS if key.startswith("retry_") and value.get(key) is not None]
    if given and not retries:
        raise OpPrereqError(f"Job option {given[0]} needs retries", ECODE_INVAL)
    retry = None
    if retries:
        retry = RetryPolicy(retries, delay or 0.0, backoff or 1.0, max_delay)
    timeout = _seconds(value, "timeout", None)
    if timeout is not None and timeout <= 0:
        raise OpPrereqError("Job option timeout must be more than 0 seconds", ECODE_INVAL)
    start = value.get("start_at")
    return JobOptions(None if start is None else check_start(start), retry, timeout)


def check_start(value: Any) -> float:
    """A start time: seconds since the epoch up to ``MAX_START``; ``OpPrereqError`` if not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OpPrereqError("A start time must be a number of seconds", ECODE_INVAL)
    # Compared before the conversion: an integer too large for a float (or a
    # NaN) is out of range, not an OverflowError.
    if not 0 <= value <= MAX_START:
        raise OpPrereqError(
            f"A start time must be from 0 to {MAX_START:.0f} seconds since the epoch",
            ECODE_INVAL,
        )
    return float(value)


def _seconds(options: dict[str, Any], key: str, default: float | None) -> float | None:
    """A finite non-negative number of ``options[key]``, or ``default`` when absent or null."""
    value = options.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OpPrereqError(f"Job option {key} must be a number", ECODE_INVAL)
    if not 0 <= value <= MAX_SECONDS:  # before the conversion, as in ``check_start``
        raise OpPrereqError(
            f"Job option {key} must be a number from 0 to {MAX_SECONDS:.0f}", ECODE_INVAL
        )
    return float(value)


def options_by_id(prepared: list[Any], options: list[JobOptions] | None) -> dict[int, JobOptions]:
    """The options of each job of a submission (``submission.prepare_jobs``), by id."""
    found = {}
    for index, item in enumerate(prepared):
        if not isinstance(item, GenericError):
            found[item[0]] = options[index] if options else JobOptions()
    return found
