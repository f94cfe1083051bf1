"""Query fields for jobs and locks (Ganeti's query2 shapes); filters via ``qlang``.

A job is queried as a ``JobRecord``: its cheap ``IndexEntry`` (kept in
memory for every live job), the full ``Job`` when a field needs it (read
from the store; ``needs_full_job`` tells which), and whether it is archived.
A record with neither stands for a job id that matches no job: its ``id``
is known, every other field unavailable (how Ganeti answers, and what
``gnt-job info`` prints "Job ID N not found" from).

Filters are compiled by ``jobqueue.qlang`` over these fields; timestamp
fields are compared by their seconds, as in Ganeti.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from jobqueue import qlang
from jobqueue.errors import ECODE_INVAL, OpPrereqError
from jobqueue.livejobs import IndexEntry
from jobqueue.model import Job

# Result status of one value (Ganeti's RS_*).
RS_NORMAL, RS_UNKNOWN, RS_NODATA, RS_UNAVAIL = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as queries see it; ``entry`` None: no such job (see the module docstring)."""

    job_id: int
    entry: IndexEntry | None
    job: Job | None = None
    archived: bool = False

    @classmethod
    def missing(cls, job_id: int) -> JobRecord:
        return cls(job_id, None)


Getter = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Field:
    """One query field; ``get`` returns None for "unavailable".

    ``index``: answerable without the full job. ``filter_get``: what
    filters compare instead of the value (the seconds of a timestamp).
    """

    name: str
    title: str
    kind: str
    doc: str
    get: Getter
    index: bool = False
    filter_get: Getter | None = None

    def definition(self) -> dict[str, str]:
        return {"name": self.name, "title": self.title, "kind": self.kind, "doc": self.doc}


def _entry(get: Callable[[IndexEntry], Any]) -> Getter:
    return lambda record: None if record.entry is None else get(record.entry)


def _job(get: Callable[[Job], Any]) -> Getter:
    return lambda record: None if record.job is None else get(record.job)


def _per_op(attr: str) -> Getter:
    return _job(lambda job: [getattr(op, attr) for op in job.ops])


def _comment(job: Job) -> Any:
    return next((op.input["comment"] for op in job.ops if op.input.get("comment")), None)


def _seconds(get: Getter) -> Getter:
    """The seconds of a ``[sec, usec]`` timestamp, for filters (Ganeti's QffTimestamp)."""

    def seconds(record: Any) -> Any:
        value = get(record)
        return value[0] if isinstance(value, list) and value else value

    return seconds


def _timestamp_field(name: str, title: str, doc: str, attr: str) -> Field:
    get = _entry(lambda entry: getattr(entry, attr))
    return Field(name, title, "other", doc, get, index=True, filter_get=_seconds(get))


JOB_FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("id", "ID", "number", "Job ID", lambda record: record.job_id, index=True),
        Field(
            "status", "Status", "text", "Job status", _entry(lambda e: str(e.status)), index=True
        ),
        Field(
            "priority",
            "Priority",
            "number",
            "Current job priority",
            _entry(lambda e: e.priority),
            index=True,
        ),
        Field(
            "summary",
            "Summary",
            "other",
            "Summary of the opcodes",
            _entry(lambda e: list(e.summary)),
            index=True,
        ),
        _timestamp_field(
            "received_ts", "Received", "Time the job was submitted", "received_timestamp"
        ),
        _timestamp_field(
            "start_ts", "Start", "Time a worker first picked the job up", "start_timestamp"
        ),
        _timestamp_field("end_ts", "End", "Time the job finished", "end_timestamp"),
        Field(
            "archived",
            "Archived",
            "bool",
            "Whether the job is archived (asking for it lists archived jobs too)",
            lambda record: None if record.entry is None else record.archived,
            index=True,
        ),
        Field(
            "ops", "OpCodes", "other", "Opcode inputs", _job(lambda j: [op.input for op in j.ops])
        ),
        Field("opresult", "OpCode_result", "other", "Opcode results", _per_op("result")),
        Field(
            "opstatus",
            "OpCode_status",
            "other",
            "Opcode statuses",
            _job(lambda j: [str(op.status) for op in j.ops]),
        ),
        Field("oplog", "OpCode_log", "other", "Opcode logs", _per_op("log")),
        Field(
            "opstart",
            "OpCode_start",
            "other",
            "Opcode start times (before locks)",
            _per_op("start_timestamp"),
        ),
        Field(
            "opexec",
            "OpCode_exec",
            "other",
            "Opcode execution times (locks held)",
            _per_op("exec_timestamp"),
        ),
        Field("opend", "OpCode_end", "other", "Opcode end times", _per_op("end_timestamp")),
        Field("oppriority", "OpCode_prio", "other", "Opcode priorities", _per_op("priority")),
        Field("comment", "Comment", "text", "First opcode comment", _job(_comment)),
        Field(
            "submitter",
            "Submitter",
            "other",
            "Who submitted the job: {by: client|job|daemon, uid, gid, groups, pid, job}",
            _entry(lambda e: None if e.submitter is None else e.submitter.to_dict()),
            index=True,
        ),
        Field(
            "hold",
            "Held",
            "other",
            "Why the queue holds the job back now: a start time, a filter rule",
            _entry(lambda e: e.hold),
            index=True,
        ),
        Field(
            "not_before",
            "Start_after",
            "other",
            "The job starts (or, retrying, starts again) no earlier than this",
            _job(lambda j: j.not_before),
        ),
        Field(
            "retry",
            "Retry",
            "other",
            "The retry policy: retries, delay, backoff, max_delay",
            _job(lambda j: j.retry.to_dict() if j.retry else None),
        ),
        Field(
            "attempt", "Attempt", "number", "The attempt running or due", _job(lambda j: j.attempt)
        ),
        Field(
            "attempts",
            "Attempts",
            "other",
            "The failed attempts that were retried: opcode, times, error",
            _job(lambda j: j.attempts),
        ),
        Field(
            "timeout",
            "Time_limit",
            "number",
            "Seconds the job may take from its first start",
            _job(lambda j: j.timeout),
        ),
    )
}


def _names(owners: Any) -> Any:
    """Lock owners as text (job ids as strings), as Ganeti's ``gnt-debug locks`` joins them."""
    return None if owners is None else [str(owner) for owner in owners]


def _pending_names(pending: Any) -> Any:
    return None if pending is None else [[mode, _names(owners)] for mode, owners in pending]


LOCK_FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("name", "Name", "text", "Lock name", lambda r: r["name"]),
        Field("mode", "Mode", "other", "Mode in which the lock is held", lambda r: r["mode"]),
        Field("owner", "Owner", "other", "Owners (job ids)", lambda r: _names(r["owner"])),
        Field(
            "pending",
            "Pending",
            "other",
            "Pending requests [mode, [owners]]",
            lambda r: _pending_names(r["pending"]),
        ),
    )
}

FIELDS_BY_KIND = {"job": JOB_FIELDS, "lock": LOCK_FIELDS}


def field_table(what: str) -> dict[str, Field]:
    """The fields of a query kind; ``OpPrereqError`` for an unknown kind."""
    if what not in FIELDS_BY_KIND:
        raise OpPrereqError(f"Unknown query resource {what!r}", ECODE_INVAL)
    return FIELDS_BY_KIND[what]


def query_fields(what: str, names: Sequence[str] | None) -> dict[str, Any]:
    """``QueryFields``: definitions in the given order, or all sorted by name."""
    table = field_table(what)
    if names is None:
        return {"fields": [table[name].definition() for name in sorted(table)]}
    return {"fields": [_definition(table, name) for name in names]}


def _definition(table: dict[str, Field], name: str) -> dict[str, str]:
    if name in table:
        return table[name].definition()
    return {"name": name, "title": name, "kind": "unknown", "doc": f"Unknown field '{name}'"}


def needs_full_job(names: Sequence[str]) -> bool:
    """Whether any of the named job fields needs more than the index."""
    return any(name in JOB_FIELDS and not JOB_FIELDS[name].index for name in names)


def unknown_fields(what: str, names: Sequence[str]) -> list[str]:
    table = field_table(what)
    return [name for name in names if name not in table]


def rows(what: str, names: Sequence[str], records: Sequence[Any]) -> list[list[Any]]:
    """Query2 rows: ``[[status, value], ...]`` per record; a None value is unavailable."""
    table = field_table(what)
    result = []
    for record in records:
        row = []
        for name in names:
            if name not in table:
                row.append([RS_UNKNOWN, None])
                continue
            value = table[name].get(record)
            row.append([RS_UNAVAIL if value is None else RS_NORMAL, value])
        result.append(row)
    return result


def old_style_rows(names: Sequence[str], records: Sequence[JobRecord]) -> list[list[Any]]:
    """``QueryJobs`` rows of plain values; a job that does not exist has only its id."""
    missing = unknown_fields("job", names)
    if missing:
        raise OpPrereqError(f"Unknown output fields selected: {', '.join(missing)}", ECODE_INVAL)
    return [[JOB_FIELDS[name].get(record) for name in names] for record in records]


# -- filters ------------------------------------------------------------------------
def compile_filter(what: str, qfilter: Any) -> tuple[qlang.Predicate, set[str]]:
    """A predicate over records of ``what`` and the field names it reads.

    Raises ``OpPrereqError`` for a malformed filter or an unknown field (see
    ``qlang.compile_filter``); the predicate raises it for a value of the
    wrong type.
    """
    table = field_table(what)
    used: set[str] = set()

    def resolve(name: str) -> qlang.Getter:
        if name not in table:
            raise OpPrereqError(f"Filter uses unknown field {name!r}", ECODE_INVAL)
        used.add(name)
        field = table[name]
        return _for_filters(field.filter_get or field.get)

    return qlang.compile_filter(qfilter, resolve, _coerce_id), used


def _coerce_id(field: str, value: int | str) -> int | str:
    """Job ids also arrive as strings of digits (Ganeti 2.6's ids were text)."""
    if field == "id" and isinstance(value, str) and _is_digits(value):
        return int(value)
    return value


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 20


def _for_filters(get: Getter) -> qlang.Getter:
    """``get`` with "unavailable" (None) spelled as the language wants it."""

    def value(record: Any) -> Any:
        found = get(record)
        return qlang.UNAVAILABLE if found is None else found

    return value


def requested_ids(qfilter: Any) -> list[int] | None:
    """The job ids a filter names and nothing else: ``["==", "id", n]`` or an ``|`` of those.

    ``=`` is accepted for ``==`` and ids may be strings of digits. None when
    the filter is anything else (then every job is a candidate).
    """
    values = qlang.requested_values(qfilter, "id")
    if values is None:
        return None
    return [_job_id(value) for value in values]


def _job_id(value: int | str) -> int:
    if isinstance(value, str) and _is_digits(value):
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise OpPrereqError(f"Invalid job id {value!r} in filter", ECODE_INVAL)


def wants_archived(fields: Sequence[str], used: set[str]) -> bool:
    """Whether a job query lists archived jobs too: it asks for ``archived`` (Ganeti's rule)
    or its filter reads it."""
    return "archived" in fields or "archived" in used
