"""Turning query results into text: cells, tables, timestamps, durations, JSON.

Pure functions of their arguments (local time comes from ``time.localtime``)
so they are tested without a daemon. People get one time format everywhere,
``TIME_FORMAT`` in local time; JSON output gets ISO 8601 in UTC.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeGuard

# Result status of one value in a Query answer.
RS_NORMAL = 0
RS_UNKNOWN = 1
RS_NODATA = 2
RS_UNAVAIL = 3
RS_OFFLINE = 4

#: What a non-normal value looks like in a table.
STATUS_TEXT = {RS_UNKNOWN: "??", RS_NODATA: "*", RS_UNAVAIL: "-", RS_OFFLINE: "*"}
#: Job fields holding one ``[seconds, microseconds]`` timestamp.
TIMESTAMP_FIELDS = frozenset({"received_ts", "start_ts", "end_ts"})
#: Job fields holding one timestamp (or null) per opcode.
OP_TIMESTAMP_FIELDS = frozenset({"opstart", "opexec", "opend"})
#: Field kind the daemon uses for names it does not know.
KIND_UNKNOWN = "unknown"
KIND_NUMBER = "number"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Job fields holding per-opcode lists of ``[serial, timestamp, type, message]``.
LOG_FIELDS = frozenset({"oplog"})
#: SGR colour of each job status on a terminal; absent ones stay plain.
STATUS_COLOURS = {
    "success": "32",  # green
    "error": "31",  # red
    "canceled": "33",  # yellow
    "canceling": "33",
    "running": "36",  # cyan
    "waiting": "35",  # magenta
}
ELLIPSIS = "..."


def is_timestamp(value: Any) -> TypeGuard[Sequence[float]]:
    """Tell whether ``value`` is a ``[seconds, microseconds]`` pair."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(part, int | float) and not isinstance(part, bool) for part in value)
    )


def merge_timestamp(value: Sequence[float]) -> float:
    """Seconds since the epoch from a ``[seconds, microseconds]`` pair."""
    return float(value[0]) + float(value[1]) / 1_000_000


def format_time(seconds: float) -> str:
    """Local time of ``seconds`` since the epoch, as people see every time."""
    return time.strftime(TIME_FORMAT, time.localtime(seconds))


def format_timestamp(value: Any) -> str:
    """Local time of a ``[seconds, microseconds]`` pair; ``-`` for null, ``?`` for junk."""
    if value is None:
        return "-"
    if not is_timestamp(value):
        return "?"
    return format_time(value[0])


def iso_timestamp(value: Any) -> Any:
    """ISO 8601 UTC text of a ``[seconds, microseconds]`` pair; anything else unchanged."""
    if not is_timestamp(value):
        return value
    seconds, micros = int(value[0]), int(value[1])
    seconds, micros = seconds + micros // 1_000_000, micros % 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def format_duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m 05s``, ``2h 10m``, ``3d 4h``: two units at most."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    for unit, size, smaller, smaller_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= size:
            rest = (whole % size) // smaller_size
            return f"{whole // size}{unit} {rest:02d}{smaller}"
    return f"{whole}s"


def json_value(field: str, value: Any) -> Any:
    """A job field's value for JSON output: its timestamps as ISO 8601 text."""
    if field in TIMESTAMP_FIELDS:
        return iso_timestamp(value)
    if field in OP_TIMESTAMP_FIELDS and isinstance(value, list):
        return [iso_timestamp(item) for item in value]
    if field in LOG_FIELDS and isinstance(value, list):
        return [json_log(entries) for entries in value]
    return value


def json_log(entries: Any) -> Any:
    """One opcode's log entries with ISO 8601 times."""
    if not isinstance(entries, list):
        return entries
    return [
        [entry[0], iso_timestamp(entry[1]), *entry[2:]]
        if isinstance(entry, list) and len(entry) == 4
        else entry
        for entry in entries
    ]


def count_of(count: int, noun: str) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def colour(text: str, code: str | None) -> str:
    """``text`` in SGR colour ``code``; unchanged for None."""
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[: max(width, 0)]
    return text[: width - len(ELLIPSIS)] + ELLIPSIS


def compact_json(value: Any) -> str:
    """One-line JSON text of ``value``."""
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def format_value(field: str, value: Any) -> str:
    """Text of one normal (status 0) value of job or lock field ``field``."""
    if field in TIMESTAMP_FIELDS:
        return format_timestamp(value)
    if field in OP_TIMESTAMP_FIELDS and isinstance(value, list):
        return ",".join(format_timestamp(item) for item in value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return ",".join(str(item) for item in value)
    return compact_json(value)


def format_cell(field: str, cell: Sequence[Any]) -> str:
    """Text of one ``[status, value]`` cell of a Query answer."""
    status, value = cell[0], cell[1] if len(cell) > 1 else None
    if status != RS_NORMAL:
        return STATUS_TEXT.get(status, "?")
    return format_value(field, value)


def is_numeric_column(kind: str, cells: Iterable[Sequence[Any]]) -> bool:
    """Whether a column is right-aligned: numeric kind, or only integer values."""
    if kind == KIND_NUMBER:
        return True
    values = [cell[1] for cell in cells if cell[0] == RS_NORMAL]
    return bool(values) and all(type(value) is int for value in values)


def render_table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    numeric: Sequence[bool],
    separator: str | None = None,
    *,
    width: int | None = None,
    colours: Sequence[Sequence[str | None]] | None = None,
) -> list[str]:
    """Lay out ``rows`` (and ``headers`` unless None) as lines of text.

    With a ``separator`` the cells are joined by it unpadded; otherwise
    columns are padded with spaces to a common width, numeric columns
    right-aligned, and trailing spaces are stripped. ``width`` (a
    terminal's) shortens the last column so that lines fit it; ``colours``
    gives an SGR code (or None) per cell of ``rows``, applied after the
    padding is measured.
    """
    table = [list(headers)] if headers is not None else []
    table.extend(list(row) for row in rows)
    if separator is not None:
        return [separator.join(row) for row in table]
    widths = [max((len(row[col]) for row in table), default=0) for col in range(len(numeric))]
    if width is not None and widths:
        room = width - sum(widths[:-1]) - (len(widths) - 1)
        widths[-1] = min(widths[-1], max(room, len(ELLIPSIS) + 1))
    offset = len(table) - len(rows)
    lines = []
    for index, row in enumerate(table):
        codes = colours[index - offset] if colours and index >= offset else None
        cells = []
        for col, (cell, size, right) in enumerate(zip(row, widths, numeric, strict=True)):
            text = shorten(cell, size)
            padding = " " * (size - len(text))
            text = colour(text, codes[col] if codes else None)
            cells.append(padding + text if right else text + padding)
        lines.append(" ".join(cells).rstrip())
    return lines


def query_to_objects(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A Query answer as one ``{field: value}`` object per row (null if not normal)."""
    names = [field["name"] for field in answer["fields"]]
    return [
        {name: _plain_value(cell) for name, cell in zip(names, row, strict=True)}
        for row in answer["data"]
    ]


def _plain_value(cell: Sequence[Any]) -> Any:
    """The value of a ``[status, value]`` cell, None unless the status is normal."""
    return cell[1] if cell[0] == RS_NORMAL else None


def format_pending(pending: Any) -> str:
    """Lock waiters ``[[mode, [names]], ...]`` as ``mode:a,b mode:c``."""
    if not pending:
        return "-"
    return " ".join(f"{mode}:{','.join(str(name) for name in names)}" for mode, names in pending)


def format_lock_row(row: Sequence[Sequence[Any]]) -> list[str]:
    """Cells of one row of ``Query("lock", [name, mode, owner, pending])``."""
    name, mode, owner, pending = (cell[1] if cell[0] == RS_NORMAL else None for cell in row)
    owners = ",".join(str(item) for item in owner) if owner else "-"
    return [str(name) if name is not None else "-", mode or "-", owners, format_pending(pending)]


def format_log_message(message: Any) -> str:
    """One log message as printable text: control characters escaped."""
    text = message if isinstance(message, str) else str(message)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
