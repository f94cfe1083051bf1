"""Section 7: what runs when. How late scheduled jobs start, how fast held jobs
resume when a PAUSE rule goes, and what filter rules cost the job throughput.

* Scheduled starts: jobs due a little apart, with workers free; how long
  after its start time each one's opcode began to run (``opexec``).
  Target: p99 within 100 ms.
* Resume: jobs held by a PAUSE rule; from ``DeleteFilter`` until the last
  of them ran.
* Rules: no-op jobs end to end with 20 rules that match nothing (each one
  evaluated before every opcode), compared with no rule. Target: at least
  0.9 of the throughput without rules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from bench.common import Context, Row, at_most, compare, latency_rows, median
from bench.daemon import NOOP, Daemon, check_submitted, wait_until_finished
from bench.jobqueue_sections import connected

SECTION = "7 controls"
#: Seconds between the start times of consecutive scheduled jobs.
SPACING = 0.02
#: Seconds from submission to the first start time.
LEAD = 1.0
RULES = 20


def _seconds(stamp: list[int]) -> float:
    return stamp[0] + stamp[1] / 1e6


def scheduled_lateness(client: Any, count: int) -> list[float]:
    """Seconds between each scheduled job's start time and its opcode's start."""
    first = time.time() + LEAD
    starts = [first + index * SPACING for index in range(count)]
    options = [{"start_at": start} for start in starts]
    job_ids = check_submitted(client.submit_many_jobs([[NOOP]] * count, options))
    wait_until_finished(client, job_ids, LEAD + count * SPACING + 120)
    rows = client.query_jobs(job_ids, ["opexec"])
    return [_seconds(row[0][0]) - start for row, start in zip(rows, starts, strict=True)]


def resume_seconds(client: Any, count: int) -> float:
    """Seconds from deleting a PAUSE rule until the last of ``count`` held jobs ran."""
    uuid = client.replace_filter(None, 0, [], "PAUSE", [])
    job_ids = check_submitted(client.submit_many_jobs([[NOOP]] * count))
    deadline = time.monotonic() + 120
    while client.query_config_values(["held_jobs"])[0]["paused"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the jobs were not all held")
        time.sleep(0.01)
    began = time.time()
    client.delete_filter(uuid)
    wait_until_finished(client, job_ids, 120)
    rows = client.query_jobs(job_ids, ["opexec"])
    return max(_seconds(row[0][0]) for row in rows) - began


def throughput(client: Any, count: int) -> float:
    """No-op jobs per second, from one SubmitManyJobs call to the last job's end."""
    began = time.perf_counter()
    job_ids = check_submitted(client.submit_many_jobs([[NOOP]] * count))
    wait_until_finished(client, job_ids, 300)
    return count / (time.perf_counter() - began)


def with_and_without_rules(client: Any, jobs: int, repeats: int) -> tuple[float, float]:
    """Median throughput without rules and with ``RULES`` unmatched ones, runs interleaved
    (the machine's load drifts; interleaving spreads it over both)."""
    plain, ruled = [], []
    for _ in range(repeats):
        plain.append(throughput(client, jobs))
        uuids = [
            client.replace_filter(
                None, index, [["opcode", ["==", "OP_ID", f"OP_NONE_{index}"]]], "PAUSE", []
            )
            for index in range(RULES)
        ]
        ruled.append(throughput(client, jobs))
        for uuid in uuids:
            client.delete_filter(uuid)
    return median(plain), median(ruled)


def run(ctx: Context) -> Iterator[Row]:
    settings = ctx.settings
    count = 50 if settings.mode == "quick" else 200
    with (
        ctx.scratch_dir("controls-") as scratch,
        Daemon(scratch / "state", settings.daemon_workers) as daemon,
        connected(daemon) as c,
    ):
        late = scheduled_lateness(c, count)
        for row in latency_rows(SECTION, "scheduled start, opcode began after its time,", late):
            if row.metric.endswith("p99"):
                at_most(row, 100.0)
            yield row
        yield Row(
            SECTION,
            f"resume {count} jobs held by PAUSE, last one running after",
            resume_seconds(c, count) * 1000,
            "ms",
        )
        plain, ruled = with_and_without_rules(c, settings.e2e_jobs, settings.e2e_repeats + 2)
        yield Row(SECTION, "no-op jobs end to end, no filter rules", plain, "jobs/s")
        row = Row(SECTION, f"no-op jobs end to end, {RULES} rules matching none", ruled,
                  "jobs/s")  # fmt: skip
        yield compare(row, plain, "no rules", minimum=0.9)
