"""Section 1: the disk limit for durable one-file-per-job submission.

Each file is written the way the queue writes a job file: a temporary file in
the same directory, about 1 KiB of JSON, ``fsync``, ``os.replace`` to its final
name, ``fsync`` of the directory. Threads write into one shared directory, as
concurrent submissions write into ``queue/``. The figure is files per second
over a fixed wall-clock window, so a noisy machine costs accuracy, not time.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import Context, Row, percentile

SECTION = "1 disk"
PAYLOAD_BYTES = 1024
WARMUP_FILES = 20


def job_payload(size: int = PAYLOAD_BYTES) -> bytes:
    """Return about ``size`` bytes of job-shaped JSON."""
    now = [int(time.time()), 0]
    job: dict[str, object] = {
        "id": 1,
        "ops": [
            {
                "input": {"OP_ID": "OP_TEST_DELAY", "duration": 0},
                "status": "queued",
                "result": None,
                "log": [],
                "priority": 0,
                "start_timestamp": None,
                "exec_timestamp": None,
                "end_timestamp": None,
            }
        ],
        "received_timestamp": now,
        "start_timestamp": None,
        "end_timestamp": None,
        "padding": "",
    }
    base = len(json.dumps(job).encode())
    job["padding"] = "x" * max(0, size - base)
    return json.dumps(job).encode()


def write_durably(directory: str, directory_fd: int, name: str, payload: bytes) -> None:
    """Atomically and durably create ``directory/name`` holding ``payload``.

    Raises OSError; the temporary file is removed when any step fails.
    """
    fd, temp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    os.fsync(directory_fd)


class _Writer(threading.Thread):
    """Writes files until the deadline; records how long each one took."""

    def __init__(
        self, index: int, directory: str, directory_fd: int, start: threading.Event, deadline: float
    ) -> None:
        super().__init__(name=f"disk-writer-{index}", daemon=True)
        self.index = index
        self.directory = directory
        self.directory_fd = directory_fd
        self.start_event = start
        self.deadline = deadline
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        payload = job_payload()
        self.start_event.wait()
        try:
            count = 0
            while time.perf_counter() < self.deadline:
                began = time.perf_counter()
                write_durably(
                    self.directory, self.directory_fd, f"job-{self.index}-{count}", payload
                )
                self.latencies.append(time.perf_counter() - began)
                count += 1
        except BaseException as error:  # reported by measure_files_per_second
            self.error = error


def measure_files_per_second(directory: Path, threads: int, seconds: float) -> dict[str, float]:
    """Write durably from ``threads`` threads for ``seconds``; return rate and latencies.

    Raises the first error a writer thread hit.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        payload = job_payload()
        for number in range(WARMUP_FILES):
            write_durably(str(directory), directory_fd, f"warmup-{number}", payload)
        start = threading.Event()
        began = time.perf_counter()
        deadline = began + seconds
        writers = [
            _Writer(i, str(directory), directory_fd, start, deadline) for i in range(threads)
        ]
        for writer in writers:
            writer.start()
        start.set()
        for writer in writers:
            writer.join(seconds + 60)
        elapsed = time.perf_counter() - began
    finally:
        os.close(directory_fd)
    for writer in writers:
        if writer.error is not None:
            raise writer.error
    latencies = [value for writer in writers for value in writer.latencies]
    if not latencies:
        raise RuntimeError("no file was written in the measuring window")
    return {
        "files": len(latencies),
        "seconds": elapsed,
        "files_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def run(ctx: Context) -> Iterator[Row]:
    """Section 1: files per second at each configured thread count."""
    for threads in ctx.settings.disk_threads:
        with ctx.scratch_dir("disk-") as scratch:
            result = measure_files_per_second(scratch / "queue", threads, ctx.settings.disk_seconds)
        ctx.values[f"disk.files_per_s.{threads}"] = result["files_per_s"]
        noun = "thread" if threads == 1 else "threads"
        yield Row(
            section=SECTION,
            metric=f"write+fsync+rename, {threads} {noun}",
            value=result["files_per_s"],
            unit="files/s",
            detail=result,
        )
