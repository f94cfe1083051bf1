"""Section 1: the disk limit for durable one-file-per-job writes, measured two ways.

*Fresh names* (the figure of earlier runs): each file is a temporary file in
the same directory, about 1 KiB of JSON, ``fsync``, ``os.replace`` to a new
name, ``fsync`` of the directory.

*Replacing, as the queue does*: a directory already holding job files and
aged by churn (thousands of files created and deleted, as a queue directory
that has run for a while) has its files replaced the way the queue replaces
a job file (``jobqueue.storage.jobwriter``): a spare file is rewritten,
fsynced and exchanged with ``job-N``, then the directory is fsynced; with
the compiled helper when it was built, as the daemon does. Where names
cannot be exchanged, a temporary file is renamed over ``job-N`` instead.

Threads write into one shared directory, as concurrent writers of the queue
do. A figure is files per second over a fixed wall-clock window, so a noisy
machine costs accuracy, not time.
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
from typing import Any

from bench.common import Context, Row, cpu_count, percentile
from jobqueue.storage.durable import Directory, PythonDirectory, compiled_directory
from jobqueue.storage.files import Disk

SECTION = "1 disk"
PAYLOAD_BYTES = 1024
WARMUP_FILES = 20
#: The aged directory: job files present, and files created and deleted before.
AGED_JOB_FILES = 2_000
CHURN_FILES = 5_000


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


def age_directory(directory: Path, payload: bytes) -> None:
    """Fill ``directory`` with ``AGED_JOB_FILES`` job files after ``CHURN_FILES`` of churn."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(CHURN_FILES):
        churned = directory / f".churn-{number}.tmp"
        churned.write_bytes(payload)
        if number >= 100:
            (directory / f".churn-{number - 100}.tmp").unlink()
    for number in range(AGED_JOB_FILES):
        (directory / f"job-{number}").write_bytes(payload)
    for leftover in directory.glob(".churn-*"):
        leftover.unlink()
    os.sync()


class Replacer:
    """Replaces ``job-N`` files of one directory durably, as the queue's writer does.

    Writers share directory fsyncs as the queue's do (``durable.Directory``).
    """

    def __init__(self, directory: str, directory_fd: int) -> None:
        compiled = compiled_directory(directory_fd)
        self.directory: Directory = compiled or PythonDirectory(Disk(), directory)
        self.exchange = self._can_exchange(directory)
        how = "Python" if compiled is None else "compiled helper"
        verb = "exchange" if self.exchange else "rename"
        self.method = f"{verb}+dir fsync, {how}"

    def _can_exchange(self, directory: str) -> bool:
        names = [f".spare-probe-{i}" for i in range(2)]
        for name in names:
            Path(directory, name).write_bytes(b"")
        try:
            self.directory.exchange(*names)
        except OSError:
            return False
        finally:
            for name in names:
                os.unlink(os.path.join(directory, name))
        return True

    def replace(self, spare: str, target: str, payload: bytes, first: bool) -> None:
        """One durable replacement of ``target`` through ``spare``; raises OSError."""
        failure = self.directory.write_file(
            spare, target, payload, 0o600, self.exchange, first, True
        )
        if failure is not None:
            raise OSError(failure[1], f"{failure[0]} failed: {os.strerror(failure[1])}")


class _Writer(threading.Thread):
    """Writes files until the deadline; records how long each one took.

    With a ``replacer`` it replaces the job files ``job-<index>``,
    ``job-<index + threads>``, ... in turn; without, it makes fresh names.
    """

    def __init__(
        self,
        index: int,
        directory: str,
        directory_fd: int,
        start: threading.Event,
        deadline: float,
        replacer: Replacer | None = None,
        threads: int = 1,
    ) -> None:
        super().__init__(name=f"disk-writer-{index}", daemon=True)
        self.index = index
        self.directory = directory
        self.directory_fd = directory_fd
        self.start_event = start
        self.deadline = deadline
        self.replacer = replacer
        self.threads = threads
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        payload = job_payload()
        self.start_event.wait()
        try:
            count = 0
            while time.perf_counter() < self.deadline:
                began = time.perf_counter()
                self.write_one(count, payload)
                self.latencies.append(time.perf_counter() - began)
                count += 1
        except BaseException as error:  # reported by measure_files_per_second
            self.error = error

    def write_one(self, count: int, payload: bytes) -> None:
        if self.replacer is None:
            name = f"job-{self.index}-{count}"
            write_durably(self.directory, self.directory_fd, name, payload)
            return
        target = f"job-{(self.index + count * self.threads) % AGED_JOB_FILES}"
        if self.replacer.exchange:
            spare = f".spare-{self.index}"
            self.replacer.replace(spare, target, payload, first=count == 0)
        else:
            spare = f".{target}.{self.index}.{count}.tmp"
            self.replacer.replace(spare, target, payload, first=True)


def measure_files_per_second(
    directory: Path, threads: int, seconds: float, *, replace: bool = False
) -> dict[str, Any]:
    """Write durably from ``threads`` threads for ``seconds``; return rate and latencies.

    ``replace``: replace the job files of an aged directory as the queue
    does, instead of making fresh names. Also returns the CPU (user and
    system, of this process: the writers alone) per file, and how many CPUs
    the writers kept busy. Raises the first error a writer thread hit.
    """
    payload = job_payload()
    if replace:
        age_directory(directory, payload)
    directory.mkdir(parents=True, exist_ok=True)
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        replacer = Replacer(str(directory), directory_fd) if replace else None
        for number in range(WARMUP_FILES):
            write_durably(str(directory), directory_fd, f"warmup-{number}", payload)
        start = threading.Event()
        began, cpu_began = time.perf_counter(), time.process_time()
        deadline = began + seconds
        writers = [
            _Writer(i, str(directory), directory_fd, start, deadline, replacer, threads)
            for i in range(threads)
        ]
        for writer in writers:
            writer.start()
        start.set()
        for writer in writers:
            writer.join(seconds + 60)
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
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
        "cpu_ms_per_file": cpu * 1000 / len(latencies),
        "cpus_busy": cpu / elapsed,
        "method": "fresh names" if replacer is None else replacer.method,
    }


def run(ctx: Context) -> Iterator[Row]:
    """Section 1: files per second at each thread count, fresh names and replacing.

    The replacing figure is the limit later sections compare against
    (``disk.files_per_s.N``); the fresh-name one is kept beside it. At the
    concurrency of section 2's clients, the CPU each replaced file cost is a
    row too (``disk.cpu_ms_per_file.N``), the yardstick of a submission's CPU.
    """
    for threads in ctx.settings.disk_threads:
        noun = "thread" if threads == 1 else "threads"
        with ctx.scratch_dir("disk-") as scratch:
            fresh = measure_files_per_second(scratch / "queue", threads, ctx.settings.disk_seconds)
        with ctx.scratch_dir("disk-") as scratch:
            replaced = measure_files_per_second(
                scratch / "queue", threads, ctx.settings.disk_seconds, replace=True
            )
        ctx.values[f"disk.fresh_files_per_s.{threads}"] = fresh["files_per_s"]
        ctx.values[f"disk.files_per_s.{threads}"] = replaced["files_per_s"]
        yield Row(
            SECTION,
            f"fresh names: write+fsync+rename+dir fsync, {threads} {noun}",
            fresh["files_per_s"],
            "files/s",
            detail=fresh,
        )
        yield Row(
            SECTION,
            f"replacing in an aged dir ({replaced['method']}), {threads} {noun}",
            replaced["files_per_s"],
            "files/s",
            detail=replaced,
        )
        if threads == ctx.settings.submit_clients:
            cpu_ms = replaced["cpu_ms_per_file"]
            ctx.values[f"disk.cpu_ms_per_file.{threads}"] = cpu_ms
            busy = {"cpus_busy": replaced["cpus_busy"], "cpus": cpu_count()}
            metric = f"CPU per file replacing, {threads} {noun}"
            yield Row(SECTION, metric, cpu_ms, "ms", detail=busy)
