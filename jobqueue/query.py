"""Query fields and filters for jobs and locks (Ganeti's query2 shapes).

A job field reads either a cheap ``IndexEntry`` (kept in memory for every
live job) or a full ``Job`` (read from its file); ``needs_full_job`` tells
the queue which it has to load. Filters are Ganeti-style lists::

    ["|", ["=", "status", "queued"], ["=", "status", "waiting"]]
    ["&", ["=", "id", 4], ["!", ["=", "status", "error"]]]

Operators: ``&`` ``|`` ``!`` ``=`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` ``=~``
(regular expression search) and ``?`` (true value).
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

from jobqueue.errors import ECODE_INVAL, OpPrereqError
from jobqueue.livejobs import IndexEntry
from jobqueue.model import Job

# Result status of one value (Ganeti's RS_*).
RS_NORMAL, RS_UNKNOWN, RS_NODATA, RS_UNAVAIL = 0, 1, 2, 3

#: A job as queries see it: its index entry, and the full job when it was needed.
Record = tuple[IndexEntry, Job | None]
Getter = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    title: str
    kind: str
    doc: str
    get: Getter
    index: bool = False  # answerable from an IndexEntry

    def definition(self) -> dict[str, str]:
        return {"name": self.name, "title": self.title, "kind": self.kind, "doc": self.doc}


def _entry(get: Callable[[IndexEntry], Any]) -> Getter:
    return lambda record: get(record[0])


def _job(get: Callable[[Job], Any]) -> Getter:
    return lambda record: get(record[1])


def _per_op(attr: str) -> Getter:
    return _job(lambda job: [getattr(op, attr) for op in job.ops])


def _comment(job: Job) -> Any:
    return next((op.input["comment"] for op in job.ops if op.input.get("comment")), None)


JOB_FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("id", "ID", "number", "Job ID", _entry(lambda e: e.id), index=True),
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
        Field(
            "received_ts",
            "Received",
            "other",
            "Time the job was submitted",
            _entry(lambda e: e.received_timestamp),
            index=True,
        ),
        Field(
            "start_ts",
            "Start",
            "other",
            "Time a worker first picked the job up",
            _entry(lambda e: e.start_timestamp),
            index=True,
        ),
        Field(
            "end_ts",
            "End",
            "other",
            "Time the job finished",
            _entry(lambda e: e.end_timestamp),
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
    )
}

LOCK_FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("name", "Name", "text", "Lock name", lambda r: r["name"]),
        Field("mode", "Mode", "other", "Mode in which the lock is held", lambda r: r["mode"]),
        Field("owner", "Owner", "other", "Owners (job ids)", lambda r: r["owner"]),
        Field(
            "pending",
            "Pending",
            "other",
            "Pending requests [mode, [owners]]",
            lambda r: r["pending"],
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


def rows(what: str, names: Sequence[str], records: Sequence[Any | None]) -> list[list[Any]]:
    """Query2 rows: ``[[status, value], ...]`` per record; None = unavailable."""
    table = field_table(what)
    result = []
    for record in records:
        row = []
        for name in names:
            if name not in table:
                row.append([RS_UNKNOWN, None])
            elif record is None:
                row.append([RS_UNAVAIL, None])
            else:
                value = table[name].get(record)
                row.append([RS_UNAVAIL if value is None else RS_NORMAL, value])
        result.append(row)
    return result


def old_style_rows(names: Sequence[str], records: Sequence[Any | None]) -> list[list[Any]]:
    """``QueryJobs`` rows: plain values; a missing job is a row of nulls."""
    missing = unknown_fields("job", names)
    if missing:
        raise OpPrereqError(f"Unknown output fields selected: {', '.join(missing)}", ECODE_INVAL)
    return [
        [None if record is None else JOB_FIELDS[name].get(record) for name in names]
        for record in records
    ]


# -- filters ------------------------------------------------------------------------
Predicate = Callable[[Any], bool]
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def compile_filter(what: str, qfilter: Any) -> tuple[Predicate, set[str]]:
    """A predicate over records and the field names it reads.

    Raises ``OpPrereqError`` naming what is wrong with a malformed filter.
    """
    table = field_table(what)
    used: set[str] = set()

    def build(node: Any) -> Predicate:
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise OpPrereqError(f"Invalid filter {node!r}: expected [operator, ...]", ECODE_INVAL)
        op, *args = node
        if op in ("&", "|"):
            parts = [build(arg) for arg in args]
            combine = all if op == "&" else any
            return lambda record: combine(part(record) for part in parts)
        if op == "!" and len(args) == 1:
            inner = build(args[0])
            return lambda record: not inner(record)
        if op == "?" and len(args) == 1:
            get = field_getter(args[0])
            return lambda record: bool(get(record))
        if (op in _COMPARE or op == "=~") and len(args) == 2:
            get, wanted = field_getter(args[0]), args[1]
            if op == "=~":
                try:
                    pattern = re.compile(str(wanted))
                except re.error as err:
                    raise OpPrereqError(f"Invalid regular expression: {err}", ECODE_INVAL) from err
                return lambda record: pattern.search(str(get(record))) is not None
            compare = _COMPARE[op]
            return lambda record: _safe_compare(compare, get(record), wanted)
        raise OpPrereqError(
            f"Invalid filter operator {op!r} with {len(args)} operands", ECODE_INVAL
        )

    def field_getter(name: Any) -> Getter:
        if not isinstance(name, str) or name not in table:
            raise OpPrereqError(f"Filter uses unknown field {name!r}", ECODE_INVAL)
        used.add(name)
        return table[name].get

    if qfilter is None:
        return (lambda record: True), used
    return build(qfilter), used


def _safe_compare(compare: Callable[[Any, Any], bool], left: Any, right: Any) -> bool:
    try:
        return bool(compare(left, right))
    except TypeError:
        return False


def requested_ids(qfilter: Any) -> list[int] | None:
    """The job ids a filter names explicitly (``id = n``, or an ``|`` of those)."""
    if _is_id_equality(qfilter):
        return [int(qfilter[2])]
    if (
        isinstance(qfilter, list)
        and qfilter
        and qfilter[0] == "|"
        and len(qfilter) > 1
        and all(_is_id_equality(part) for part in qfilter[1:])
    ):
        return [int(part[2]) for part in qfilter[1:]]
    return None


def _is_id_equality(node: Any) -> bool:
    return (
        isinstance(node, list)
        and len(node) == 3
        and node[0] == "="
        and node[1] == "id"
        and isinstance(node[2], int)
        and not isinstance(node[2], bool)
    )
