"""Job and opcode records, and the pure rules that derive a job's status.

A job's status and priority are never stored: they follow from its opcodes
(``calc_status``, ``calc_priority``). ``to_dict``/``from_dict`` give exactly
the keys of the on-disk format described in ``doc/storage.rst``.

Nothing here does I/O or takes locks; whoever owns a ``Job`` serialises access
to it (the queue holds a per-job lock while it changes one).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from jobqueue import constants
from jobqueue.constants import FINALIZED, Status
from jobqueue.errors import JobFileCorrupted

if TYPE_CHECKING:
    from jobqueue.opcodes import InvalidOpCode, OpCode

#: ``[seconds, microseconds]``, as stored on disk and sent on the wire.
Timestamp = list[int]
#: ``[serial, [sec, usec], log_type, message]``.
LogEntry = list[Any]


def split_time(value: float) -> Timestamp:
    """Split a float time into ``[seconds, microseconds]`` (0 <= usec < 10**6)."""
    seconds = int(value)
    micros = round((value - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return [seconds, micros]


def merge_time(stamp: Sequence[int]) -> float:
    """Inverse of ``split_time``."""
    return stamp[0] + stamp[1] / 1_000_000


def now_stamp(clock: Callable[[], float] = time.time) -> Timestamp:
    """The current time as a timestamp."""
    return split_time(clock())


@dataclasses.dataclass(slots=True)
class QueuedOpCode:
    """One opcode of a job and what happened to it.

    ``input`` is the opcode as stored (a dict with ``OP_ID``, defaults filled
    in); ``opcode`` is its typed record for a job that may run, None for a
    job read only to be shown (``from_dict``): the queue types a live job
    once, at submission or when it loads the job. ``priority`` starts as the
    input's priority and may change while the opcode waits. Slotted: a
    queue may hold millions of them.
    """

    input: dict[str, Any]
    status: Status = Status.QUEUED
    result: Any = None
    log: list[LogEntry] = dataclasses.field(default_factory=list)
    priority: int = constants.PRIO_DEFAULT
    start_timestamp: Timestamp | None = None
    exec_timestamp: Timestamp | None = None
    end_timestamp: Timestamp | None = None
    opcode: OpCode | InvalidOpCode | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    @property
    def op_id(self) -> str:
        return str(self.input.get("OP_ID", ""))

    def copy(self) -> QueuedOpCode:
        """A shallow copy with a log list of its own (the entries are shared)."""
        return QueuedOpCode(
            self.input,
            self.status,
            self.result,
            list(self.log),
            self.priority,
            self.start_timestamp,
            self.exec_timestamp,
            self.end_timestamp,
            self.opcode,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "status": str(self.status),
            "result": self.result,
            "log": self.log,
            "priority": self.priority,
            "start_timestamp": self.start_timestamp,
            "exec_timestamp": self.exec_timestamp,
            "end_timestamp": self.end_timestamp,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueuedOpCode:
        """Rebuild from ``to_dict`` output; missing optional keys take defaults."""
        op_input = data["input"]
        if not isinstance(op_input, dict) or not isinstance(op_input.get("OP_ID"), str):
            raise ValueError("opcode input must be an object with a string OP_ID")
        log = data.get("log") or []
        if not isinstance(log, list) or not all(_is_log_entry(e) for e in log):
            raise ValueError("opcode log must be a list of [serial, [sec, usec], type, msg]")
        priority = data.get("priority", constants.PRIO_DEFAULT)
        if not is_json_int(priority):
            raise ValueError("opcode priority must be an integer")
        return cls(
            input=op_input,
            status=Status(data["status"]),
            result=data.get("result"),
            log=log,
            priority=priority,
            start_timestamp=_timestamp_or_none(data.get("start_timestamp")),
            exec_timestamp=_timestamp_or_none(data.get("exec_timestamp")),
            end_timestamp=_timestamp_or_none(data.get("end_timestamp")),
        )


#: ``Submitter.by``: a client process, an opcode of another job, the daemon itself.
BY_CLIENT, BY_JOB, BY_DAEMON = "client", "job", "daemon"


@dataclasses.dataclass(frozen=True)
class Submitter:
    """Who submitted a job, as its ``submitter`` key records it (see ``doc/storage.rst``).

    ``by`` is ``client`` (a process on a socket: its uid, primary gid,
    supplementary groups and pid, as the kernel reported them at connect),
    ``job`` (an opcode of job ``job_id`` submitted it: the identity is that
    job's submitter's, passed on) or ``daemon`` (the daemon itself; no
    identity). The same record names the caller of a request the queue checks.
    """

    by: str
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    pid: int | None = None
    job_id: int | None = None

    @classmethod
    def client(cls, *, uid: int, gid: int, groups: Iterable[int], pid: int) -> Submitter:
        return cls(BY_CLIENT, uid, gid, tuple(sorted(set(groups))), pid)

    @classmethod
    def daemon(cls) -> Submitter:
        return cls(BY_DAEMON)

    def for_child(self, job_id: int) -> Submitter:
        """The submitter of a job that an opcode of job ``job_id`` (submitted by us) submits."""
        return dataclasses.replace(self, by=BY_JOB, job_id=job_id)

    def in_group(self, gid: int) -> bool:
        return self.gid == gid or gid in self.groups

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"by": self.by}
        if self.uid is not None:
            data.update(uid=self.uid, gid=self.gid, groups=list(self.groups), pid=self.pid)
        if self.job_id is not None:
            data["job"] = self.job_id
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Submitter:
        """Rebuild from ``to_dict`` output; ValueError for anything else."""
        if not isinstance(data, dict) or data.get("by") not in (BY_CLIENT, BY_JOB, BY_DAEMON):
            raise ValueError("submitter must be an object with 'by' client, job or daemon")
        uid, gid, pid, job_id = (data.get(key) for key in ("uid", "gid", "pid", "job"))
        groups = data.get("groups", [])
        if not (
            all(value is None or is_json_int(value) for value in (uid, gid, pid, job_id))
            and isinstance(groups, list)
            and all(is_json_int(group) for group in groups)
            and (uid is None) == (gid is None)
        ):
            raise ValueError("submitter uid, gid, pid, job and groups must be integers")
        return cls(data["by"], uid, gid, tuple(groups), pid, job_id)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often a failing job runs again, and after how long.

    Retry ``n`` (1 for the first) waits ``delay * backoff ** (n - 1)``
    seconds, at most ``max_delay`` (None: no cap but ``MAX_RETRY_DELAY``).
    """

    #: The longest any retry waits: a year.
    MAX_RETRY_DELAY: ClassVar[float] = 365 * 86400.0

    retries: int
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        try:
            seconds = float(self.delay) * float(self.backoff) ** (retry - 1)
        except OverflowError:
            seconds = self.MAX_RETRY_DELAY
        if self.max_delay is not None:
            seconds = min(seconds, self.max_delay)
        return min(seconds, self.MAX_RETRY_DELAY)

    def to_dict(self) -> dict[str, Any]:
        return {
            "retries": self.retries,
            "delay": self.delay,
            "backoff": self.backoff,
            "max_delay": self.max_delay,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RetryPolicy:
        """Rebuild from ``to_dict`` output; ValueError for anything else."""
        if not isinstance(data, dict):
            raise ValueError("retry must be an object")
        retries = data.get("retries")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError("retry.retries must be a non-negative integer")
        delay = _number(data.get("delay", 0.0), "retry.delay")
        backoff = _number(data.get("backoff", 1.0), "retry.backoff")
        max_delay = data.get("max_delay")
        if max_delay is not None:
            max_delay = _number(max_delay, "retry.max_delay")
        return cls(retries, delay, backoff, max_delay)


@dataclasses.dataclass
class Job:
    """A job: an id and a list of opcodes run one after the other.

    ``log_serial`` is the highest log serial handed out; it is not stored but
    recomputed from the opcode logs on load. ``submitter`` is None for a job
    stored before submitters were recorded.

    The job-level controls are stored only when set: ``not_before`` (do not
    start before this time; also the time a retry is due), ``retry`` (the
    retry policy), ``attempt`` (the attempt running or due, from 1),
    ``attempts`` (one record per failed attempt that was retried; replaced,
    never changed in place) and ``timeout`` (seconds the job may take from
    its first start). ``hold`` says why the queue holds the job back right
    now; it is not stored (the queue works it out again after a restart).
    """

    id: int
    ops: list[QueuedOpCode]
    received_timestamp: Timestamp | None = None
    start_timestamp: Timestamp | None = None
    end_timestamp: Timestamp | None = None
    log_serial: int = 0
    submitter: Submitter | None = None
    not_before: Timestamp | None = None
    retry: RetryPolicy | None = None
    attempt: int = 1
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timeout: float | None = None
    hold: dict[str, Any] | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def new(
        cls,
        job_id: int,
        opcodes: Iterable[OpCode | dict[str, Any]],
        received: Timestamp,
        submitter: Submitter | None = None,
    ) -> Job:
        """A freshly submitted job; each opcode's priority comes from its input.

        Typed opcodes make a job that can run, whose inputs are their stored
        forms (shared, never changed); plain dicts one that can only be stored
        and read (as tests of storage do).
        """
        ops = []
        for opcode in opcodes:
            if isinstance(opcode, dict):
                op = QueuedOpCode(input=dict(opcode))
            else:
                op = QueuedOpCode(input=opcode.stored(), opcode=opcode)
            op.priority = op.input.get("priority", constants.PRIO_DEFAULT)
            ops.append(op)
        return cls(id=job_id, ops=ops, received_timestamp=received, submitter=submitter)

    @property
    def status(self) -> Status:
        if len(self.ops) == 1:  # most jobs: the opcode's status is the job's (calc_status)
            return self.ops[0].status
        return calc_status(op.status for op in self.ops)

    @property
    def priority(self) -> int:
        if len(self.ops) == 1:  # most jobs (calc_priority)
            op = self.ops[0]
            return constants.PRIO_DEFAULT if op.status in FINALIZED else op.priority
        return calc_priority(self.ops)

    @property
    def is_finalized(self) -> bool:
        return self.status in FINALIZED

    def mark_canceling(self) -> None:
        """Mark every opcode that has not ended ``canceling`` (the status follows)."""
        for op in self.ops:
            if op.status not in FINALIZED:
                op.status = Status.CANCELING

    def add_log(self, op_index: int, log_type: str, message: Any, stamp: Timestamp) -> LogEntry:
        """Append a log entry to opcode ``op_index`` with the next job-wide serial."""
        self.log_serial += 1
        entry: LogEntry = [self.log_serial, stamp, log_type, message]
        self.ops[op_index].log.append(entry)
        return entry

    def log_entries_after(self, serial: int | None) -> list[LogEntry]:
        """All log entries with a serial greater than ``serial`` (all when None)."""
        floor = -1 if serial is None else serial
        return [entry for op in self.ops for entry in op.log if entry[0] > floor]

    def finalize_pending(self, status: Status, result: Any, stamp: Timestamp) -> None:
        """Give every unfinished opcode ``status`` and ``result``; end the job."""
        for op in self.ops:
            if op.status not in FINALIZED:
                op.status = status
                op.result = result
                op.end_timestamp = stamp
        self.end_timestamp = stamp

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the job's state, for ``restore`` after a failed write."""
        return copy.deepcopy(self.to_dict())

    def restore(self, state: dict[str, Any]) -> None:
        """Return to a ``snapshot`` in place (opcode objects keep their identity).

        Inputs never change after submission: each opcode keeps its typed record.
        """
        restored = Job.from_dict(state)
        for op, old in zip(self.ops, restored.ops, strict=True):
            for name in _RESTORED_OP_FIELDS:
                setattr(op, name, getattr(old, name))
        self.received_timestamp = restored.received_timestamp
        self.start_timestamp = restored.start_timestamp
        self.end_timestamp = restored.end_timestamp
        self.log_serial = restored.log_serial
        self.not_before = restored.not_before
        self.attempt = restored.attempt
        self.attempts = restored.attempts

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "ops": [op.to_dict() for op in self.ops],
            "received_timestamp": self.received_timestamp,
            "start_timestamp": self.start_timestamp,
            "end_timestamp": self.end_timestamp,
        }
        if self.submitter is not None:
            data["submitter"] = self.submitter.to_dict()
        if self.not_before is not None:
            data["not_before"] = self.not_before
        if self.retry is not None:
            data["retry"] = self.retry.to_dict()
        if self.attempt != 1:
            data["attempt"] = self.attempt
        if self.attempts:
            data["attempts"] = self.attempts
        if self.timeout is not None:
            data["timeout"] = self.timeout
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Job:
        """Rebuild a job from its stored form.

        Raises ``JobFileCorrupted`` for anything that is not a well-formed job.
        """
        try:
            if not isinstance(data, dict):
                raise ValueError("not an object")
            job_id = _job_id(data["id"])
            raw_ops = data["ops"]
            if not isinstance(raw_ops, list) or not raw_ops:
                raise ValueError("ops must be a non-empty list")
            ops = [QueuedOpCode.from_dict(op) for op in raw_ops]
            job = cls(
                id=job_id,
                ops=ops,
                received_timestamp=_timestamp_or_none(data.get("received_timestamp")),
                start_timestamp=_timestamp_or_none(data.get("start_timestamp")),
                end_timestamp=_timestamp_or_none(data.get("end_timestamp")),
                submitter=(
                    None
                    if data.get("submitter") is None
                    else Submitter.from_dict(data["submitter"])
                ),
            )
            _load_controls(job, data)
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise JobFileCorrupted(f"Invalid job data: {err}") from err
        job.log_serial = max((entry[0] for op in ops for entry in op.log), default=0)
        return job


def _load_controls(job: Job, data: dict[str, Any]) -> None:
    """Read the optional job-level controls of a stored job; ValueError if malformed."""
    job.not_before = _timestamp_or_none(data.get("not_before"))
    if data.get("retry") is not None:
        job.retry = RetryPolicy.from_dict(data["retry"])
    attempt = data.get("attempt", 1)
    if not is_json_int(attempt) or attempt < 1:
        raise ValueError("attempt must be a positive integer")
    job.attempt = attempt
    attempts = data.get("attempts") or []
    if not isinstance(attempts, list) or not all(isinstance(a, dict) for a in attempts):
        raise ValueError("attempts must be a list of objects")
    job.attempts = attempts
    if data.get("timeout") is not None:
        job.timeout = _number(data["timeout"], "timeout")


def _number(value: Any, name: str) -> float:
    """A non-negative JSON number as a float; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


#: What ``Job.restore`` brings back of an opcode: all but what never changes
#: after submission, its input and typed record (shared, not copied again).
_RESTORED_OP_FIELDS = tuple(
    field.name
    for field in dataclasses.fields(QueuedOpCode)
    if field.name not in ("input", "opcode")
)


def calc_status(op_statuses: Iterable[Status]) -> Status:
    """Derive a job's status from its opcodes' statuses, in order.

    Successful opcodes are skipped; the first canceling, error or canceled
    opcode decides; otherwise a running or waiting opcode shows through, else
    the job is queued. A job whose opcodes all succeeded is a success.
    """
    status = Status.QUEUED
    all_success = True
    for op_status in op_statuses:
        if op_status == Status.SUCCESS:
            continue
        all_success = False
        if op_status in (Status.CANCELING, Status.ERROR, Status.CANCELED):
            return op_status
        if op_status in (Status.WAITING, Status.RUNNING):
            status = op_status
    return Status.SUCCESS if all_success else status


def calc_priority(ops: Iterable[QueuedOpCode]) -> int:
    """A job's priority: the best (lowest) over its unfinished opcodes."""
    return min(
        (op.priority for op in ops if op.status not in FINALIZED),
        default=constants.PRIO_DEFAULT,
    )


def default_summary(op_input: dict[str, Any]) -> str:
    """A summary that needs no opcode definitions: the OP_ID without ``OP_``."""
    raw = op_input.get("OP_ID", "?")
    op_id = "?" if isinstance(raw, list | dict) else str(raw)  # no repr of deep values
    return op_id.removeprefix("OP_")


def is_json_int(value: Any) -> bool:
    """Whether ``value`` is an integer as JSON means it (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _job_id(value: Any) -> int:
    """A stored job id: a positive JSON integer, or its canonical decimal string (Ganeti 2.6).

    ``2.7``, ``true``, ``1e999`` and ``"007"`` are refused, never rounded or read as 7.
    """
    if is_json_int(value):
        job_id: int = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 100:
        job_id = int(value)
        if str(job_id) != value:
            raise ValueError(f"job id {value!r} has leading zeros")
    else:
        shown = repr(value[:40] if isinstance(value, str) else value)
        if not isinstance(value, (str, bool, float)) and value is not None:
            shown = type(value).__name__
        raise ValueError(f"job id must be a positive integer, not {shown}")
    if job_id < 1:
        raise ValueError(f"job id must be a positive integer, not {job_id}")
    return job_id


def _timestamp_or_none(value: Any) -> Timestamp | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(is_json_int(v) for v in value):
        return value
    raise ValueError(f"invalid timestamp {value!r}")


def _is_log_entry(entry: Any) -> bool:
    """``[serial, [sec, usec], type, message]`` as JSON decodes it.

    Exact types (``type(x) is int`` also refuses ``True``): a job file's log
    can hold thousands of entries and is checked at every read.
    """
    if type(entry) is not list or len(entry) != 4:
        return False
    serial, stamp, log_type, _ = entry
    return (
        type(serial) is int
        and type(log_type) is str
        and type(stamp) is list
        and len(stamp) == 2
        and type(stamp[0]) is int
        and type(stamp[1]) is int
    )
