"""Huey with SQLite storage: run N no-op tasks on W worker threads, print jobs/s.

Run with the benchmark virtualenv's interpreter (it needs ``huey``)::

    python huey_noop.py --jobs 2000 --workers 25 --work-dir DIR

Storage is ``SqliteHuey`` with ``fsync=True`` (``pragma synchronous=FULL``)
and ``journal_mode=wal``, so every enqueue is durable like a job file. The
consumer runs in this process with thread workers (huey's default worker
type), polling every 10 ms at most 100 ms apart when idle: huey's documented
knobs for low latency, instead of its 0.1 s / 10 s defaults. The clock runs
from the first enqueue to the last completion signal; the result is one JSON
line on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from huey import SqliteHuey
from huey.signals import SIGNAL_COMPLETE, SIGNAL_ERROR
from peer_cli import base_parser, report


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = base_parser(__doc__)
    parser.add_argument("--initial-delay", type=float, default=0.01)
    parser.add_argument("--max-delay", type=float, default=0.1)
    return parser.parse_args()


class Completions:
    """Counts finished tasks and sets an event when all of them are in."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.complete = 0
        self.error = 0
        self.lock = threading.Lock()
        self.all_done = threading.Event()

    def record(self, signal: str, task: Any, exc: BaseException | None = None) -> None:
        """Huey signal handler, called in the worker thread after each task."""
        with self.lock:
            if signal == SIGNAL_COMPLETE:
                self.complete += 1
            else:
                self.error += 1
            if self.complete + self.error >= self.expected:
                self.all_done.set()


def main() -> int:
    """Run the measurement; exit status 1 when not every task completed in time."""
    args = parse_args()
    huey = SqliteHuey(
        "bench",
        filename=os.path.join(args.work_dir, "huey.db"),
        fsync=True,
        journal_mode="wal",
    )

    @huey.task()
    def noop() -> None:
        return None

    completions = Completions(args.jobs)
    huey.signal(SIGNAL_COMPLETE, SIGNAL_ERROR)(completions.record)
    synchronous = huey.storage.sql("pragma synchronous", results=True)[0][0]
    journal = huey.storage.sql("pragma journal_mode", results=True)[0][0]
    consumer = huey.create_consumer(
        workers=args.workers,
        worker_type="thread",
        periodic=False,
        initial_delay=args.initial_delay,
        max_delay=args.max_delay,
        check_worker_health=False,
    )
    consumer.start()
    try:
        began = time.perf_counter()
        for _ in range(args.jobs):
            noop()
        submitted = time.perf_counter()
        finished = completions.all_done.wait(args.timeout)
        ended = time.perf_counter()
    finally:
        consumer.stop(graceful=True)
    result = {
        "peer": "huey-sqlite",
        "jobs": args.jobs,
        "workers": args.workers,
        "completed": completions.complete,
        "errors": completions.error,
        "seconds": ended - began,
        "submit_seconds": submitted - began,
        "jobs_per_s": completions.complete / (ended - began),
        "sqlite_synchronous": synchronous,
        "sqlite_journal_mode": journal,
    }
    ok = finished and not completions.error
    return report("huey", result, completions.complete, args.jobs, ok)


if __name__ == "__main__":
    sys.exit(main())
