"""The human-readable report of ``jobctl info``: one job, all its opcodes.

Pure functions from the ``{field: value}`` object of one job to lines.
"""

from __future__ import annotations

from jobqueue import errors
from jobqueue.cli.formatting import (
    compact_json,
    format_log_message,
    format_timestamp,
    is_timestamp,
    merge_timestamp,
)

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The fields ``info`` asks the daemon for.
INFO_FIELDS = [
    "id",
    "status",
    "priority",
    "received_ts",
    "start_ts",
    "end_ts",
    "ops",
    "opstatus",
    "opresult",
    "oplog",
    "opstart",
    "opexec",
    "opend",
    "submitter",
    "hold",
    "not_before",
    "retry",
    "attempt",
    "attempts",
    "timeout",
]


def describe_result(result: Any) -> str:
    """Text of an opcode result or parameter; an encoded error reads ``Class: message``.

    Strings and numbers are shown as they are, everything else as JSON
    (``null``, ``true``, ``[1,2]``), the same whether on its own or nested.
    """
    if errors.is_encoded_error(result):
        return f"{result[0]}: {errors.decode_error(result)}"
    if isinstance(result, str) or type(result) in (int, float):
        return str(result)
    return compact_json(result)


def _timestamp_line(label: str, value: Any, since: Any) -> str:
    """``label: time (delta Xs)``, the delta taken from ``since`` when both are known."""
    text = f"{label}: {format_timestamp(value)}"
    if is_timestamp(value) and is_timestamp(since):
        text += f" (delta {merge_timestamp(value) - merge_timestamp(since):.6f}s)"
    return text


def _nth(values: Any, index: int) -> Any:
    """``values[index]`` if ``values`` is a list long enough, else None."""
    if isinstance(values, list) and index < len(values):
        return values[index]
    return None


def _result_lines(result: Any) -> list[str]:
    """The ``Result:`` part of an opcode: a dict or list over several lines."""
    if isinstance(result, dict) and result:
        return ["Result:"] + [f"  {key}: {describe_result(result[key])}" for key in sorted(result)]
    if isinstance(result, list) and result and not errors.is_encoded_error(result):
        return ["Result:"] + [f"  - {describe_result(item)}" for item in result]
    return [f"Result: {describe_result(result)}"]


def _log_lines(log: Any) -> list[str]:
    """``Execution log:`` followed by ``serial time type message`` lines."""
    if not isinstance(log, list) or not log:
        return ["Execution log: none"]
    lines = ["Execution log:"]
    for entry in log:
        if not isinstance(entry, list) or len(entry) != 4:
            lines.append(f"  {compact_json(entry)}")
            continue
        serial, stamp, log_type, message = entry
        when = format_timestamp(stamp)
        lines.append(f"  {serial} {when} {log_type} {format_log_message(message)}")
    return lines


def opcode_lines(job: dict[str, Any], index: int) -> list[str]:
    """The report of opcode ``index`` of ``job``, unindented."""
    op_input = _nth(job.get("ops"), index) or {}
    lines = [
        f"{op_input.get('OP_ID', '?')}",
        f"  Status: {_nth(job.get('opstatus'), index) or '-'}",
        "  " + _timestamp_line("Processing start", _nth(job.get("opstart"), index), None),
        "  " + _timestamp_line("Execution start", _nth(job.get("opexec"), index), None),
        "  " + _timestamp_line("Processing end", _nth(job.get("opend"), index), None),
        "  Input fields:",
    ]
    params = sorted(key for key in op_input if key != "OP_ID")
    lines.extend(f"    {key}: {describe_result(op_input[key])}" for key in params)
    if not params:
        lines.append("    none")
    lines.extend("  " + line for line in _result_lines(_nth(job.get("opresult"), index)))
    lines.extend("  " + line for line in _log_lines(_nth(job.get("oplog"), index)))
    return lines


def _name(lookup: Any, number: Any) -> str:
    """``number (name)`` when the local user or group database knows it, else the number."""
    try:
        return f"{number} ({lookup(number)[0]})"
    except (KeyError, TypeError, OverflowError):
        return str(number)


def describe_submitter(submitter: Any) -> str:
    """Who submitted a job, from its ``submitter`` field."""
    import grp  # only ``info`` needs them: kept out of jobctl's start-up
    import pwd

    if not isinstance(submitter, dict):
        return "unknown (stored before submitters were recorded)"
    if submitter.get("by") == "daemon" or submitter.get("uid") is None:
        return "the daemon itself"
    who = (
        f"uid {_name(pwd.getpwuid, submitter.get('uid'))}, "
        f"gid {_name(grp.getgrgid, submitter.get('gid'))}, pid {submitter.get('pid')}"
    )
    if submitter.get("by") == "job":
        return f"job {submitter.get('job')}, for {who}"
    return who


def _seconds(value: Any) -> str:
    return f"{value:g}s" if isinstance(value, int | float) else "-"


def control_lines(job: dict[str, Any]) -> list[str]:
    """What holds the job back, when it may start, its retries and attempts, its limit."""
    from jobqueue.cli.waiting import describe_hold

    lines = []
    hold = job.get("hold")
    if isinstance(hold, dict):
        lines.append(f"Held: {describe_hold(hold)}")
    if job.get("not_before") is not None:
        lines.append(f"Start after: {format_timestamp(job['not_before'])}")
    retry = job.get("retry")
    if isinstance(retry, dict):
        cap = retry.get("max_delay")
        lines.append(
            f"Retries: {retry.get('retries')} (delay {_seconds(retry.get('delay'))},"
            f" backoff {retry.get('backoff')}"
            + (f", at most {_seconds(cap)})" if cap is not None else ")")
        )
        total = retry.get("retries", 0) + 1 if isinstance(retry.get("retries"), int) else "?"
        lines.append(f"Attempt: {job.get('attempt') or 1} of {total}")
    attempts = job.get("attempts")
    if isinstance(attempts, list) and attempts:
        lines.append("Failed attempts:")
        for record in attempts:
            if not isinstance(record, dict):
                continue
            lines.append(
                f"  - attempt {record.get('attempt')}, opcode {record.get('opcode')},"
                f" ended {format_timestamp(record.get('end'))}:"
                f" {describe_result(record.get('error'))}"
            )
    if job.get("timeout") is not None:
        lines.append(f"Time limit: {_seconds(job['timeout'])} from its first start")
    return lines


def job_lines(job: dict[str, Any]) -> list[str]:
    """The whole report of one job as printed by ``jobctl info``."""
    received, start, end = job.get("received_ts"), job.get("start_ts"), job.get("end_ts")
    lines = [
        f"Job ID: {job.get('id')}",
        f"  Status: {job.get('status') or '-'}",
        f"  Priority: {job.get('priority') if job.get('priority') is not None else '-'}",
        f"  Submitted by: {describe_submitter(job.get('submitter'))}",
        *(f"  {line}" for line in control_lines(job)),
        "  " + _timestamp_line("Received", received, None),
        "  " + _timestamp_line("Processing start", start, received),
        "  " + _timestamp_line("Processing end", end, start),
    ]
    if is_timestamp(received) and is_timestamp(end):
        total = merge_timestamp(end) - merge_timestamp(received)
        lines.append(f"  Total processing time: {total:.6f} seconds")
    lines.append("  Opcodes:")
    ops = job.get("ops") if isinstance(job.get("ops"), list) else []
    for index in range(len(ops or [])):
        first, *rest = opcode_lines(job, index)
        lines.append(f"    - {first}")
        lines.extend(f"      {line}" for line in rest)
    return lines
