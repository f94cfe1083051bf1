"""``jobctl log``: a job's command output as the commands wrote it, raw.

The daemon keeps every byte of each command's stdout and stderr
(``ReadJobOutput``); a job's stream is its opcodes' streams one after the
other. Without ``--stdout``/``--stderr`` the job's stdout goes to our
stdout and its stderr to our stderr, so redirections work as for the
command itself; with one of them, that stream goes to stdout. ``--tail N``
starts at the last N lines of each stream, ``--follow`` then waits for
more (the daemon answers when there is some: no polling) until the job
has ended and everything is printed.
"""

from __future__ import annotations

import argparse

from jobqueue.cli.context import Context

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Bytes asked for at a time when looking back for the last lines.
TAIL_CHUNK = 64 * 1024
#: Seconds each ReadJobOutput call may wait for output while following.
FOLLOW_WAIT = 30.0
STREAMS = ("stdout", "stderr")


def lines_start(data: bytes, count: int) -> int | None:
    """Where the last ``count`` lines of ``data`` begin, if a newline before them shows it.

    None when ``data`` has no newline before them: it may begin in the
    middle of a line (the caller reads further back, or is at the start).
    A final line without a newline counts as a line; a final newline does
    not start one.
    """
    body = data[:-1] if data.endswith(b"\n") else data
    position = len(body)
    for _ in range(count):
        position = body.rfind(b"\n", 0, position)
        if position < 0:
            return None
    return position + 1 if count else len(data)


def read_range(context: Context, job_id: int, stream: str, begin: int, end: int) -> bytes:
    """The bytes of one stream from ``begin`` to ``end`` (fewer if it ends before)."""
    chunks: list[bytes] = []
    while begin < end:
        answer = context.client.read_job_output(job_id, {stream: begin}, end - begin)[stream]
        data = bytes(answer["data"])[: end - begin]
        if not data:
            break
        chunks.append(data)
        begin += len(data)
    return b"".join(chunks)


def tail(context: Context, job_id: int, stream: str, count: int) -> tuple[bytes, int]:
    """The last ``count`` lines of one stream now, and the offset just after them."""
    answer = context.client.read_job_output(job_id, {stream: -TAIL_CHUNK}, TAIL_CHUNK)[stream]
    start, data = int(answer["offset"]), bytes(answer["data"])
    data += read_range(context, job_id, stream, start + len(data), int(answer["size"]))
    while start > 0 and lines_start(data, count) is None:
        earlier = max(0, start - TAIL_CHUNK)
        data = read_range(context, job_id, stream, earlier, start) + data
        start = earlier
    return data[lines_start(data, count) or 0 :], start + len(data)


class _Printer:
    """Where each stream goes: our stdout, or our stderr for the job's stderr."""

    def __init__(self, context: Context, streams: tuple[str, ...]) -> None:
        self._context = context
        self._to_stderr = {"stderr": len(streams) > 1, "stdout": False}

    def write(self, stream: str, data: bytes) -> None:
        if data:
            self._context.write_bytes(data, to_stderr=self._to_stderr[stream])


def _chosen_streams(args: argparse.Namespace) -> tuple[str, ...]:
    if args.stdout:
        return ("stdout",)
    if args.stderr:
        return ("stderr",)
    return STREAMS


def cmd_log(args: argparse.Namespace, context: Context) -> int:
    """``jobctl log ID [--tail N] [--follow] [--stdout|--stderr]``."""
    streams = _chosen_streams(args)
    printer = _Printer(context, streams)
    offsets = dict.fromkeys(streams, 0)
    if args.tail is not None:
        for stream in streams:
            data, offsets[stream] = tail(context, args.job_id, stream, args.tail)
            printer.write(stream, data)
    follow_output(context, args.job_id, offsets, printer.write, follow=args.follow)
    return 0


def follow_output(
    context: Context,
    job_id: int,
    offsets: dict[str, int],
    write: Any,
    *,
    follow: bool,
) -> None:
    """Print each stream from its offset to its end; with ``follow``, until the job ends.

    Each call asks for every stream at once, so output on either wakes the
    wait. ``offsets`` is advanced as bytes are printed.
    """
    client = context.client
    got_some = True
    while True:
        wait = FOLLOW_WAIT if follow and not got_some else 0.0
        answer = client.read_job_output(job_id, dict(offsets), timeout=wait)
        got_some = False
        for stream in offsets:
            part = answer[stream]
            data = bytes(part["data"])
            if data:
                write(stream, data)
                offsets[stream] = int(part["offset"]) + len(data)
                got_some = True
        done = all(offsets[stream] >= int(answer[stream]["size"]) for stream in offsets)
        if not follow and (done or not got_some):
            return
        if done and answer.get("finished"):
            return
