"""The LUXI methods: what each one takes, who may call it, what it calls.

``METHODS`` maps a method name to a ``Method``: its positional arguments,
each with a kind that checks and converts it (job ids also arrive as digit
strings), whether it only reads, and the call to make on the ``Services``
(the queue for changes, the reader for questions; for the one asynchronous
method, on the server).

Access: a read-only method is served to anyone who may open the socket it
comes in on. Every other method is served only to the peers the master
socket allows (``access.MasterAccess``), on either socket, and gets the
caller, so the queue records who submitted a job and checks who may cancel,
reprioritise or archive it, or change the queue as a whole.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from jobqueue import constants, errors
from jobqueue.model import Job, Submitter, is_json_int
from jobqueue.storage.base import OUTPUT_STREAMS
from jobqueue.submission import JobSubmission


class QueueApi(Protocol):
    """What the server changes through; ``jobqueue.queue.JobQueue`` provides it."""

    def submit_each(self, submissions: list[JobSubmission]) -> list[int | errors.GenericError]: ...
    def submit_many_jobs(
        self,
        jobs: list[Any],
        *,
        drained_ok: bool = False,
        submitter: Submitter | None = None,
        options: Any = None,
    ) -> list[list[Any]]: ...
    def cancel_job(
        self, job_id: int, kill: bool = False, *, caller: Submitter | None = None
    ) -> list[Any]: ...
    def change_job_priority(
        self, job_id: int, priority: int, *, caller: Submitter | None = None
    ) -> list[Any]: ...
    def archive_job(self, job_id: int, *, caller: Submitter | None = None) -> bool: ...
    def auto_archive_jobs(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> list[int]: ...
    def set_drain_flag(self, flag: bool, *, caller: Submitter | None = None) -> bool: ...
    def set_watcher_pause(
        self, until: float | None, *, caller: Submitter | None = None
    ) -> float | None: ...
    def prune_archive(
        self, age: float, timeout: float, *, caller: Submitter | None = None
    ) -> dict[str, Any]: ...
    def query_config_values(self, fields: list[str]) -> list[Any]: ...
    def change_job_start(
        self, job_id: int, start: float | None, *, caller: Submitter | None = None
    ) -> list[Any]: ...
    def replace_filter(
        self,
        uuid: str | None,
        priority: Any,
        predicates: Any,
        action: Any,
        reason: Any,
        *,
        caller: Submitter | None = None,
    ) -> str: ...
    def delete_filter(self, uuid: str, *, caller: Submitter | None = None) -> bool: ...
    def set_max_running_jobs(self, count: int, *, caller: Submitter | None = None) -> bool: ...
    def query_metrics(self) -> dict[str, Any]: ...


class Watch(Protocol):
    latest: Job | None

    def close(self) -> None: ...


class ReaderApi(Protocol):
    """What the server asks; ``jobqueue.jobreader.JobReader`` provides it."""

    def read_job(self, job_id: int) -> Job | None: ...
    def watch_job(self, job_id: int, on_change: Callable[[], None]) -> Watch: ...
    def job_change(
        self,
        job: Job,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
    ) -> list[Any] | None: ...
    def iter_query_jobs(
        self, job_ids: list[int] | None, fields: list[str]
    ) -> Iterator[list[Any]]: ...
    def iter_query(
        self, what: str, fields: list[str], qfilter: Any, archived: bool = False
    ) -> dict[str, Any]: ...
    def query_fields(self, what: str, fields: list[str] | None) -> dict[str, Any]: ...
    def read_output(
        self, job_id: int, offsets: dict[str, int], max_bytes: int
    ) -> dict[str, Any] | None: ...


@dataclasses.dataclass(frozen=True)
class Services:
    """What the methods call: the queue for changes, the reader for questions.

    ``caller`` is who sent the request (None when the daemon cannot tell).
    """

    queue: QueueApi
    reader: ReaderApi
    caller: Submitter | None = None


def wfjc_timeout(requested: float) -> float:
    """The seconds a WaitForJobChange call may block: 0 to WFJC_MAX_TIMEOUT."""
    return min(max(requested, 0.0), constants.WFJC_MAX_TIMEOUT)


# -- argument checking --------------------------------------------------------
_DIGITS = re.compile(r"[0-9]{1,20}")


def _to_job_id(value: Any) -> int:
    """An int >= 0 or a string of digits (``gnt-job watch`` sends ``"42"``)."""
    if is_json_int(value) and value >= 0:
        return int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ValueError(value)


def _to_float(value: Any) -> float:
    """A JSON number as a float; ValueError for anything else, or an int too big for a float."""
    if not (is_json_int(value) or isinstance(value, float)):
        raise ValueError(value)
    try:
        return float(value)
    except OverflowError:
        raise ValueError(value) from None


def _to_offsets(value: Any) -> dict[str, int]:
    """A non-empty object mapping output stream names to integer offsets."""
    if not isinstance(value, dict) or not value:
        raise ValueError(value)
    for name, offset in value.items():
        if name not in OUTPUT_STREAMS or not is_json_int(offset):
            raise ValueError(value)
    return {name: int(offset) for name, offset in value.items()}


def _checked(predicate: Callable[[Any], bool]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not predicate(value):
            raise ValueError(value)
        return value

    return check


def _or_null(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _each(convert: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def convert_list(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(value)
        return [convert(item) for item in value]

    return convert_list


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What an argument must be: words for the error, and a converter.

    ``convert`` returns the value to pass on or raises ValueError.
    """

    words: str
    convert: Callable[[Any], Any]


_is_str = _checked(lambda value: isinstance(value, str))
_JOB_ID = _Kind("a job id (a non-negative integer or a string of digits)", _to_job_id)
_JOB_IDS_OR_NULL = _Kind("a list of job ids or null", _or_null(_each(_to_job_id)))
_LIST = _Kind("a list", _checked(lambda value: isinstance(value, list)))
_LIST_OR_NULL = _Kind(
    "a list or null", _checked(lambda value: value is None or isinstance(value, list))
)
_FIELDS = _Kind("a list of strings", _each(_is_str))
_FIELDS_OR_NULL = _Kind("a list of strings or null", _or_null(_each(_is_str)))
_INT = _Kind("an integer", _checked(is_json_int))
_INT_OR_NULL = _Kind("an integer or null", _or_null(_checked(is_json_int)))
_NUMBER = _Kind("a number", _to_float)
_NUMBER_OR_NULL = _Kind("a number or null", _or_null(_to_float))
_SIZE = _Kind("a non-negative integer", _checked(lambda value: is_json_int(value) and value >= 0))
_OFFSETS = _Kind('an object of offsets by stream, e.g. {"stdout": 0, "stderr": -100}', _to_offsets)
_BOOL = _Kind("a boolean", _checked(lambda value: isinstance(value, bool)))
_STR = _Kind("a string", _is_str)
_STR_OR_NULL = _Kind("a string or null", _or_null(_is_str))
_NUMBER_OR_NULL = _Kind("a number or null", _or_null(_to_float))
_OPTIONS = _Kind(
    "an object of job options or null",
    _checked(lambda value: value is None or isinstance(value, dict)),
)
_MANY_OPTIONS = _Kind(
    "an object of job options, a list of them (or nulls), or null",
    _checked(lambda value: value is None or isinstance(value, dict | list)),
)
_ANY = _Kind("any value", lambda value: value)

_Args = tuple[tuple[str, _Kind], ...]


def _job_options(given: tuple[Any, ...]) -> dict[str, Any]:
    """The keyword giving the queue a submission's job options, when there are any."""
    return {"options": given[0]} if given and given[0] is not None else {}


@dataclasses.dataclass(frozen=True)
class Method:
    """How one LUXI method is served.

    ``call(services, *args)`` runs in the executor; with ``is_async`` it is
    ``call(server, *args)``, a coroutine run in the loop instead. A
    ``batched`` method's call only describes one caller's job (a
    ``JobSubmission``, made in the loop); the server submits those of
    concurrent callers together (``QueueApi.submit_each``, ``batching``).
    ``args`` then ``optional`` are the positional arguments, as (name, kind).
    ``read_only`` methods change nothing: anyone who may open a socket may
    call them, and they wait for room in the server's output budget.
    """

    call: Callable[..., Any]
    args: _Args
    optional: _Args = ()
    read_only: bool = False
    is_async: bool = False
    batched: bool = False

    def convert_args(self, name: str, args: list[Any]) -> list[Any]:
        """Check count and types of ``args``; LuxiError naming the first bad one."""
        low, high = len(self.args), len(self.args) + len(self.optional)
        if not low <= len(args) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            raise errors.LuxiError(f"{name}: expected {expected} arguments, got {len(args)}")
        converted = []
        specs = self.args + self.optional
        for number, ((arg_name, kind), value) in enumerate(zip(specs, args, strict=False), 1):
            try:
                converted.append(kind.convert(value))
            except ValueError:
                raise errors.LuxiError(
                    f"{name}: argument {number} ({arg_name}) must be {kind.words}"
                ) from None
        return converted


METHODS: dict[str, Method] = {
    "SubmitJob": Method(
        lambda s, ops, options=None: JobSubmission(ops, s.caller, options=options),
        (("ops", _LIST),),
        optional=(("options", _OPTIONS),),
        batched=True,
    ),
    "SubmitJobToDrainedQueue": Method(
        lambda s, ops: JobSubmission(ops, s.caller, drained_ok=True),
        (("ops", _LIST),),
        batched=True,
    ),
    "SubmitManyJobs": Method(
        lambda s, jobs, *options: s.queue.submit_many_jobs(
            jobs, submitter=s.caller, **_job_options(options)
        ),
        (("jobs", _LIST),),
        optional=(("options", _MANY_OPTIONS),),
    ),
    "ChangeJobStartTime": Method(
        lambda s, job_id, start: s.queue.change_job_start(job_id, start, caller=s.caller),
        (("job_id", _JOB_ID), ("start_at", _NUMBER_OR_NULL)),
    ),
    "ReplaceFilter": Method(
        lambda s, *args: s.queue.replace_filter(*args, caller=s.caller),
        (
            ("uuid", _STR_OR_NULL),
            ("priority", _INT),
            ("predicates", _LIST),
            ("action", _ANY),
            ("reason", _LIST),
        ),
    ),
    "DeleteFilter": Method(
        lambda s, uuid: s.queue.delete_filter(uuid, caller=s.caller), (("uuid", _STR),)
    ),
    "SetMaxRunningJobs": Method(
        lambda s, count: s.queue.set_max_running_jobs(count, caller=s.caller),
        (("count", _INT),),
    ),
    "WaitForJobChange": Method(
        lambda server, *args: server.wait_for_job_change(*args),
        (
            ("job_id", _JOB_ID),
            ("fields", _FIELDS),
            ("prev_job_info", _LIST_OR_NULL),
            ("prev_log_serial", _INT_OR_NULL),
            ("timeout", _NUMBER),
        ),
        read_only=True,
        is_async=True,
    ),
    "ReadJobOutput": Method(
        lambda server, *args: server.read_job_output(*args),
        (("job_id", _JOB_ID), ("offsets", _OFFSETS), ("max_bytes", _SIZE)),
        optional=(("timeout", _NUMBER),),
        read_only=True,
        is_async=True,
    ),
    "CancelJob": Method(
        lambda s, job_id, kill=False: s.queue.cancel_job(job_id, kill, caller=s.caller),
        (("job_id", _JOB_ID),),
        optional=(("kill", _BOOL),),
    ),
    "ChangeJobPriority": Method(
        lambda s, job_id, priority: s.queue.change_job_priority(job_id, priority, caller=s.caller),
        (("job_id", _JOB_ID), ("priority", _INT)),
    ),
    "ArchiveJob": Method(
        lambda s, job_id: s.queue.archive_job(job_id, caller=s.caller), (("job_id", _JOB_ID),)
    ),
    "AutoArchiveJobs": Method(
        lambda s, age, timeout: s.queue.auto_archive_jobs(age, timeout, caller=s.caller),
        (("age", _NUMBER), ("timeout", _NUMBER)),
    ),
    "QueryJobs": Method(
        lambda s, job_ids, fields: s.reader.iter_query_jobs(job_ids, fields),
        (("job_ids", _JOB_IDS_OR_NULL), ("fields", _FIELDS)),
        read_only=True,
    ),
    "Query": Method(
        lambda s, what, fields, qfilter, archived=False: s.reader.iter_query(
            what, fields, qfilter, archived=archived
        ),
        (("what", _STR), ("fields", _FIELDS), ("qfilter", _ANY)),
        optional=(("archived", _BOOL),),
        read_only=True,
    ),
    "QueryFields": Method(
        lambda s, what, fields: s.reader.query_fields(what, fields),
        (("what", _STR), ("fields", _FIELDS_OR_NULL)),
        read_only=True,
    ),
    "PruneArchive": Method(
        lambda s, age, timeout: s.queue.prune_archive(age, timeout, caller=s.caller),
        (("age", _NUMBER), ("timeout", _NUMBER)),
    ),
    "SetDrainFlag": Method(
        lambda s, flag: s.queue.set_drain_flag(flag, caller=s.caller), (("flag", _BOOL),)
    ),
    "SetWatcherPause": Method(
        lambda s, until: s.queue.set_watcher_pause(until, caller=s.caller),
        (("until", _NUMBER_OR_NULL),),
    ),
    "QueryConfigValues": Method(
        lambda s, fields: s.queue.query_config_values(fields),
        (("fields", _FIELDS),),
        read_only=True,
    ),
    "QueryMetrics": Method(lambda s: s.queue.query_metrics(), (), read_only=True),
}
