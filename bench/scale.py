"""Section 5: the daemon with many jobs in ``queue/``.

For each level the queue is generated directly as files (finished jobs, so
the daemon has nothing to run at start), then a daemon is started on it and
measured: start-up until the socket answers, QueryJobs of every job with
fields id and status, resident memory, SubmitJob latency, and auto-archiving
every job. Levels that only serve the latency curve (0 and 50k jobs) skip
the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Context, Row, at_most, compare, compare_ratio_max, percentile
from bench.daemon import NOOP, Daemon, check_submitted, wait_until_quiet
from bench.jobqueue_sections import BLOCKER, wait_until_running

SECTION = "5 scale"
#: The issue's targets hold at this many jobs.
TARGET_LEVEL = 100_000
ARCHIVE_TIMEOUT = 600.0
#: ``--max-jobs`` is the generated count plus this (the daemon's default limit).
MAX_JOBS_HEADROOM = 50_000
#: The memory of waiting jobs: this many jobs of this many no-op opcodes wait,
#: then this many jobs of one.
QUEUED_JOBS, OPCODES_PER_JOB, ONE_OPCODE_JOBS = 10, 20_000, 20_000
#: What a waiting opcode of a large job, and a waiting job of one opcode, may
#: cost the daemon, in bytes of resident memory.
OPCODE_MEMORY_LIMIT, JOB_MEMORY_LIMIT = 1280, 5120
#: What those jobs, read back by a daemon started on them, may cost it at most,
#: as a multiple of what they cost as submitted.
READ_BACK_LIMIT = 1.15


def job_text_template(stamp: int) -> str:
    """Return a finished no-op job as JSON text, missing its leading ``{"id": N, ``."""
    when = [stamp, 0]
    job = {
        "ops": [
            {
                "input": dict(NOOP),
                "status": "success",
                "result": None,
                "log": [],
                "priority": 0,
                "start_timestamp": when,
                "exec_timestamp": when,
                "end_timestamp": when,
            }
        ],
        "received_timestamp": when,
        "start_timestamp": when,
        "end_timestamp": when,
    }
    return json.dumps(job)[1:]


def generate_queue(state_dir: Path, count: int) -> float:
    """Write ``queue/job-1`` .. ``queue/job-<count>``, ``serial`` and ``version``.

    Returns the seconds it took. The files are not fsynced: the daemon reads
    them from the page cache, as it would after any recent write.
    """
    began = time.perf_counter()
    queue = state_dir / "queue"
    queue.mkdir(parents=True, exist_ok=True)
    rest = job_text_template(int(time.time()) - 3600)
    for job_id in range(1, count + 1):
        with open(queue / f"job-{job_id}", "w", encoding="utf-8") as job_file:
            job_file.write(f'{{"id": {job_id}, {rest}\n')
    (queue / "serial").write_text(f"{count}\n", encoding="ascii")
    (queue / "version").write_text("1\n", encoding="ascii")
    return time.perf_counter() - began


def short(count: int) -> str:
    """Return ``count`` as 0, 10k, 100k."""
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


def submit_latencies(client: Any, samples: int) -> list[float]:
    """Submit ``samples`` single no-op jobs one after another; return each call's seconds."""
    latencies = []
    for _ in range(samples):
        began = time.perf_counter()
        client.submit_job([NOOP])
        latencies.append(time.perf_counter() - began)
    return latencies


def archive_all(client: Any) -> tuple[float, int]:
    """Auto-archive every finished job, repeating while some are left.

    Returns (seconds, jobs archived). Raises TimeoutError after ARCHIVE_TIMEOUT.
    """
    began = time.perf_counter()
    archived_total = 0
    while True:
        archived, left = client.auto_archive_jobs(-1, 60)
        archived_total += archived
        if not left:
            return time.perf_counter() - began, archived_total
        if time.perf_counter() - began > ARCHIVE_TIMEOUT:
            raise TimeoutError(f"{left} jobs still not archived after {ARCHIVE_TIMEOUT:.0f} s")


def measure_level(ctx: Context, daemon: Daemon, count: int, full: bool) -> Iterator[Row]:
    """Measure one running daemon holding ``count`` jobs; yields rows as they come."""
    at_target = count >= TARGET_LEVEL
    label = f"{short(count)} jobs"
    if full:
        row = Row(SECTION, f"start-up until socket answers, {label}", daemon.startup_seconds, "s")
        yield at_most(row, 5.0) if at_target else row
    client = daemon.client()
    try:
        if full:
            began = time.perf_counter()
            rows = client.query_jobs(None, ["id", "status"])
            elapsed = time.perf_counter() - began
            row = Row(SECTION, f"QueryJobs all (id,status), {label}", elapsed, "s")
            row.detail = {"rows": len(rows), "expected": count}
            yield at_most(row, 1.0) if at_target else row
            rss, peak = daemon.rss_bytes()
            row = Row(
                SECTION, f"daemon RSS, {label}", rss / 2**20, "MB", detail={"peak_mb": peak / 2**20}
            )
            yield at_most(row, 300.0) if at_target else row
        if count in ctx.settings.latency_levels:
            yield latency_row(ctx, count, submit_latencies(client, ctx.settings.latency_samples))
        if full:
            seconds, archived = archive_all(client)
            row = Row(SECTION, f"auto-archive all, {label}", seconds, "s")
            row.detail = {"archived": archived}
            yield row
    finally:
        client.close()


def latency_row(ctx: Context, count: int, latencies: list[float]) -> Row:
    """The p50 SubmitJob latency at ``count`` live jobs, compared with the 0-job level."""
    p50 = percentile(latencies, 0.5) * 1000
    detail = {"samples": len(latencies), "p99_ms": percentile(latencies, 0.99) * 1000}
    row = Row(SECTION, f"SubmitJob p50 at {short(count)} live jobs", p50, "ms", detail=detail)
    if count == 0:
        ctx.values["scale.submit_p50.0"] = p50
        return row
    baseline = ctx.values.get("scale.submit_p50.0")
    if count >= TARGET_LEVEL:
        return compare_ratio_max(row, baseline, "at 0 jobs", 1.2)
    return compare(row, baseline, "at 0 jobs")


def waiting_memory(ctx: Context) -> Iterator[Row]:
    """The daemon's resident memory per opcode, and per job, of jobs waiting.

    One worker is kept busy; behind it, ``QUEUED_JOBS`` jobs of
    ``OPCODES_PER_JOB`` minimal opcodes, then ``ONE_OPCODE_JOBS`` jobs of
    one, are submitted, and the growth of the daemon's RSS is divided by the
    opcodes, then by the jobs. The detail gives the job file's bytes beside it.
    Then a filter rule pauses every job, the daemon is killed (``kill -9``)
    and a new one started on its queue: what it holds once quiet, above the
    first daemon's RSS before the jobs came, against what they cost that one.
    """
    with ctx.scratch_dir("scale-waiting-") as scratch:
        state_dir = scratch / "state"
        daemon = Daemon(state_dir, 1)
        with daemon:
            client = daemon.client()
            try:
                wait_until_running(client, client.submit_job([BLOCKER]))
                start, _ = daemon.rss_bytes()
                large = [client.submit_job([NOOP] * OPCODES_PER_JOB) for _ in range(QUEUED_JOBS)]
                middle, _ = daemon.rss_bytes()
                small = []
                for _ in range(ONE_OPCODE_JOBS // 1000):
                    small += check_submitted(client.submit_many_jobs([[NOOP]] * 1000))
                end, _ = daemon.rss_bytes()
                statuses = {row[0] for row in client.query_jobs(large + small, ["status"])}
                if statuses != {"queued"}:
                    raise RuntimeError(f"the jobs did not all wait: {sorted(statuses)}")
                client.replace_filter(None, 0, [], "PAUSE", [])  # the next daemon runs none
            finally:
                client.close()
            queue = state_dir / "queue"
            large_bytes = (queue / f"job-{large[-1]}").stat().st_size
            small_bytes = (queue / f"job-{small[-1]}").stat().st_size
            daemon.kill()
        with Daemon(state_dir, 1) as second:
            if not wait_until_quiet(second):
                raise RuntimeError("the daemon reading the jobs back did not settle in 60 s")
            read_back, _ = second.rss_bytes()
            with second.client() as client:
                live, held = client.query_config_values(["live_jobs", "held_jobs"])
            if (live, held.get("paused")) != (1 + len(large) + len(small), len(large) + len(small)):
                raise RuntimeError(f"read back {live} live jobs, {held} held")
            second.kill()  # nothing to wait for: the scratch directory goes
    opcodes = QUEUED_JOBS * OPCODES_PER_JOB
    row = Row(SECTION, "daemon RSS per waiting opcode", (middle - start) / opcodes, "B")
    row.detail = {"opcodes": opcodes, "file_bytes_per_opcode": large_bytes / OPCODES_PER_JOB}
    yield at_most(row, OPCODE_MEMORY_LIMIT)
    row = Row(SECTION, "daemon RSS per waiting 1-opcode job", (end - middle) / len(small), "B")
    row.detail = {"jobs": len(small), "file_bytes": small_bytes}
    yield at_most(row, JOB_MEMORY_LIMIT)
    row = Row(SECTION, "daemon RSS of those read back", (read_back - start) / 2**20, "MB")
    yield compare_ratio_max(row, (end - start) / 2**20, "as submitted", READ_BACK_LIMIT)


def run(ctx: Context) -> Iterator[Row]:
    """Section 5: every scale level and latency level, smallest first; then the
    memory of waiting jobs."""
    settings = ctx.settings
    levels = sorted(set(settings.scale_counts) | set(settings.latency_levels))
    for count in levels:
        with ctx.scratch_dir(f"scale-{short(count)}-") as scratch:
            state_dir = scratch / "state"
            generated = generate_queue(state_dir, count) if count else 0.0
            # Room for the generated jobs plus the default limit's worth of new ones.
            room = ["--max-jobs", str(count + MAX_JOBS_HEADROOM)]
            daemon = Daemon(state_dir, settings.daemon_workers, 300.0, room)
            with daemon:
                full = count in settings.scale_counts
                for row in measure_level(ctx, daemon, count, full):
                    row.detail.setdefault("generate_seconds", generated)
                    yield row
    yield from waiting_memory(ctx)
