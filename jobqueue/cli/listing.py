"""The rows of ``jobctl list``: which fields to ask the daemon for, and how they read.

``jobctl`` adds one field of its own, ``elapsed``, computed from a job's
times. For people, the summary of a command opcode is its command line
(the daemon's summary names only the program). Pure functions: the
command lines and the current time are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobqueue.cli import formatting
from jobqueue.cli.selection import PENDING as PENDING_STATUSES
from jobqueue.cli.selection import unique

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Cell = Sequence[Any]
    Row = dict[str, Cell]

#: The field jobctl computes, and the daemon fields it is computed from.
ELAPSED = "elapsed"
ELAPSED_SOURCES = ("received_ts", "start_ts", "end_ts")
CLIENT_FIELDS: dict[str, dict[str, str]] = {
    ELAPSED: {
        "name": ELAPSED,
        "title": "Elapsed",
        "kind": "other",
        "doc": "Run time of a finished job, time since a running job started,"
        " or time since a pending job was submitted (computed by jobctl)",
    }
}
DEFAULT_FIELDS = ["id", "status", ELAPSED, "summary"]
#: The daemon field saying why the queue holds a job back.
HOLD = "hold"
#: Opcodes whose summary is replaced by their command line, with a prefix.
COMMAND_OPCODES = {"OP_COMMAND_RUN": "", "OP_COMMAND_FANOUT": "fanout x{count}: "}
#: The daemon's summaries of those opcodes start with one of these.
COMMAND_SUMMARIES = ("COMMAND_RUN(", "COMMAND_FANOUT(")


def daemon_fields(fields: Sequence[str], with_id: bool) -> list[str]:
    """The fields to ask the daemon for to show ``fields`` (and the id, if asked).

    With ``status`` comes ``hold``: a table shows why a held job waits.
    """
    names = [name for name in fields if name not in CLIENT_FIELDS]
    if ELAPSED in fields:
        names.extend(("status", *ELAPSED_SOURCES))
    if "status" in fields:
        names.append(HOLD)
    if with_id:
        names.append("id")
    return unique(names)


def rows_of(answer: dict[str, Any]) -> tuple[dict[str, dict[str, str]], list[Row]]:
    """A Query answer as its field definitions and one ``{name: cell}`` per row."""
    definitions = {field["name"]: field for field in answer["fields"]}
    names = list(definitions)
    return definitions, [dict(zip(names, row, strict=True)) for row in answer["data"]]


def unknown_fields(definitions: dict[str, dict[str, str]]) -> list[str]:
    return [name for name, field in definitions.items() if field.get("kind") == "unknown"]


def value(row: Row, name: str) -> Any:
    """The value of a normal cell; None when missing or not normal."""
    cell = row.get(name)
    return cell[1] if cell and cell[0] == formatting.RS_NORMAL else None


def _seconds(row: Row, name: str) -> float | None:
    stamp = value(row, name)
    return formatting.merge_timestamp(stamp) if formatting.is_timestamp(stamp) else None


def elapsed_seconds(row: Row, now: float) -> float | None:
    """How long the job ran (finished), has run (running) or has waited (pending).

    A waiting job may have started (a worker took it up) and be waiting
    for a lock: it is still counted from its submission.
    """
    received, start, end = (_seconds(row, name) for name in ELAPSED_SOURCES)
    pending = value(row, "status") in PENDING_STATUSES
    begin = start if start is not None and not pending else received
    if begin is None:
        return None
    return (end if end is not None else now) - begin


def needs_command_lines(row: Row) -> bool:
    """Whether the job's summary shows a command opcode."""
    summary = value(row, "summary")
    return isinstance(summary, list) and any(
        isinstance(item, str) and item.startswith(COMMAND_SUMMARIES) for item in summary
    )


def command_summary(ops: Any, summary: Any) -> list[str] | None:
    """The daemon's ``summary`` of a job with each command opcode's entry replaced
    by its command line, from the job's ``ops``; None if they do not match."""
    import shlex

    if not (isinstance(ops, list) and isinstance(summary, list) and len(ops) == len(summary)):
        return None
    entries = []
    for opcode, entry in zip(ops, summary, strict=True):
        prefix = COMMAND_OPCODES.get(str(opcode.get("OP_ID"))) if isinstance(opcode, dict) else None
        argv = opcode.get("argv") if prefix is not None else None
        if prefix is None or not isinstance(argv, list):
            entries.append(str(entry))
            continue
        count = len(opcode.get("items") or [])
        entries.append(prefix.format(count=count) + shlex.join(str(arg) for arg in argv))
    return entries


def cell_text(name: str, row: Row, now: float, summaries: dict[int, list[str]]) -> str:
    """The text of one cell for people."""
    if name == ELAPSED:
        seconds = elapsed_seconds(row, now)
        return "-" if seconds is None else formatting.format_duration(seconds)
    if name == "summary":
        job_id = value(row, "id")
        if job_id in summaries:
            return ",".join(summaries[job_id])
    if name == "status" and isinstance(value(row, HOLD), dict):
        from jobqueue.cli.waiting import describe_hold

        return f"{value(row, 'status')} ({describe_hold(value(row, HOLD))})"
    cell = row.get(name)
    return formatting.format_cell(name, cell) if cell else "-"


def is_numeric(name: str, definitions: dict[str, dict[str, str]], rows: Sequence[Row]) -> bool:
    if name == ELAPSED:
        return True
    kind = definitions.get(name, {}).get("kind", "")
    return formatting.is_numeric_column(kind, (row[name] for row in rows if name in row))


def title(name: str, definitions: dict[str, dict[str, str]]) -> str:
    field = CLIENT_FIELDS.get(name) or definitions.get(name) or {}
    return field.get("title") or name


def table(
    fields: Sequence[str],
    definitions: dict[str, dict[str, str]],
    rows: Sequence[Row],
    *,
    now: float,
    summaries: dict[int, list[str]],
    headers: bool,
    separator: str | None = None,
    width: int | None = None,
    coloured: bool = False,
) -> list[str]:
    """The lines of the table of ``rows`` showing ``fields``.

    ``summaries`` replaces the summary of some jobs (by id); ``width``
    shortens the last column to fit; ``coloured`` colours the status.
    """
    texts = [[cell_text(name, row, now, summaries) for name in fields] for row in rows]
    numeric = [is_numeric(name, definitions, rows) for name in fields]
    colours = None
    if coloured and "status" in fields:
        column = list(fields).index("status")
        colours = [
            [
                formatting.STATUS_COLOURS.get(text[column]) if i == column else None
                for i in range(len(fields))
            ]
            for text in texts
        ]
    titles = [title(name, definitions) for name in fields] if headers else None
    return formatting.render_table(titles, texts, numeric, separator, width=width, colours=colours)


def objects(fields: Sequence[str], rows: Sequence[Row], now: float) -> list[dict[str, Any]]:
    """One JSON object per row: each field's value (null when not available)."""
    result = []
    for row in rows:
        item: dict[str, Any] = {}
        for name in fields:
            if name == ELAPSED:
                seconds = elapsed_seconds(row, now)
                item[name] = None if seconds is None else round(seconds, 6)
            else:
                item[name] = formatting.json_value(name, value(row, name))
        result.append(item)
    return result
