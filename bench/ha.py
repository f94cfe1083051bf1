"""Section 8: the queue in etcd (issue 13), beside the file store of the same run.

Three figures, each with what it is compared with:

* **submission**: SubmitManyJobs and SubmitJob through a daemon started with
  ``--store etcd`` on one local etcd member, measured as section 2 measures
  the file store and set beside section 2's figures. etcd syncs its log on
  every commit (the 3.4 server has no switch to skip it), and the member keeps
  its data under the bench work directory, so both stores write to the same
  disk;
* **end to end**: no-op jobs with section 3's counts and worker numbers on
  that member, beside the file store's and Huey-SQLite's figures of section 3;
* **failover**: a three-member cluster on loopback and two daemons on one
  prefix. The master is killed with SIGKILL, and the time runs until the
  standby accepts a SubmitJob as the new master; the killed daemon is then
  started again and waits as standby, and the roles swap for the next round.
  p50 and p99 are set beside the promise of doc/ha.rst: the lease TTL plus 2 s.

The etcd servers are started by the tests' own harness (``tests/etcd_cluster.py``):
free loopback ports, data in a scratch directory, every member killed when the
part ends (or when this process dies). Without an etcd server binary or the
etcd client the section is one "skipped" row saying why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

from bench.common import Context, Row, at_most, compare, latency_rows, median, percentile, skipped
from bench.daemon import (
    NOOP,
    Daemon,
    DaemonUnavailable,
    check_submitted,
    daemon_cpu_seconds,
    wait_until_finished,
)
from bench.jobqueue_sections import (
    ALTERNATED_PEER,
    BLOCKER,
    SUBMIT,
    SUBMIT_WORKERS,
    alternated_key,
    connected,
    submit_batches,
    submit_concurrently,
)
from tests.etcd_cluster import EtcdCluster, etcd_binary

SECTION = "8 ha"
#: Seconds beyond the lease TTL that doc/ha.rst promises for a takeover.
PROMISE_SLACK = 2.0
#: Seconds between two submission attempts on the standby while it takes over.
RETRY_INTERVAL = 0.01
#: How long a daemon may take to reach the role it is waited for.
ROLE_TIMEOUT = 60.0
#: Seeds the wait before each kill, spread over one lease renewal period.
PHASE_SEED = 13
#: Metrics of this section's etcd rows are the file store's, after this.
ETCD = "etcd, "


def unavailable() -> str | None:
    """Why the etcd figures cannot be taken here, or None when they can."""
    binary, detail = etcd_binary()
    if binary is None:
        return detail
    if importlib.util.find_spec("requests") is None:
        return "the etcd extra (requests) is not installed: pip install -e '.[etcd]'"
    return None


def new_prefix() -> str:
    """A key prefix of its own for one daemon (or one pair) on a shared cluster."""
    return f"/jobqueue/bench-{uuid.uuid4().hex[:12]}"


def etcd_args(cluster: EtcdCluster, prefix: str, *extra: str) -> list[str]:
    """The daemon options that put its queue in ``cluster`` under ``prefix``."""
    endpoints = ",".join(cluster.endpoints)
    return ["--store", "etcd", "--etcd-endpoints", endpoints, "--etcd-prefix", prefix, *extra]


def role_of(daemon: Daemon) -> str:
    """``master`` or ``standby`` as the daemon answers, "" when it does not answer."""
    try:
        with connected(daemon) as client:
            return str(client.query_config_values(["role"])[0])
    except Exception:  # not listening yet, or closing: no role
        return ""


def wait_role(daemon: Daemon, wanted: str, timeout: float = ROLE_TIMEOUT) -> float:
    """Poll until ``daemon`` says it is ``wanted``; return the seconds it took.

    Raises RuntimeError, with the end of the daemon's log, after ``timeout``.
    """
    began = time.monotonic()
    while role_of(daemon) != wanted:
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"daemon not {wanted} after {timeout:.0f} s: {daemon.log_tail()}")
        time.sleep(RETRY_INTERVAL)
    return time.monotonic() - began


def beside_file_store(ctx: Context, row: Row, section: str = SUBMIT) -> Row:
    """Compare an etcd row with the file store's row of the same name in ``section``."""
    reference = ctx.values.get(f"{section}: {row.metric.removeprefix(ETCD)}")
    return compare(row, reference, "file store")


def guarded(part: str, rows: Iterator[Row]) -> Iterator[Row]:
    """Yield ``rows``; a failure becomes a "skipped" row for ``part``, and the next part runs."""
    try:
        yield from rows
    except DaemonUnavailable as error:
        yield skipped(SECTION, f"daemon not available ({error})", part)
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        yield skipped(SECTION, f"failed ({type(error).__name__}: {error})", part)


def submission_rows(ctx: Context, cluster: EtcdCluster, version: str) -> Iterator[Row]:
    """Section 2's figures with the queue in etcd, each beside the file store's."""
    settings = ctx.settings
    size = settings.submit_batch_size
    detail = {"etcd": version, "members": 1}
    args = etcd_args(cluster, new_prefix())
    with (
        ctx.scratch_dir("ha-submit-") as scratch,
        Daemon(scratch / "state", SUBMIT_WORKERS, extra_args=args) as daemon,
    ):
        wait_role(daemon, "master")
        with connected(daemon) as client:
            # As in section 2: busy workers, so only the submission path is measured.
            blockers = [client.submit_job([BLOCKER]) for _ in range(SUBMIT_WORKERS)]
            rate, batch_latencies = submit_batches(client, settings)
        row = Row(SECTION, f"{ETCD}SubmitManyJobs, batches of {size}", rate, "jobs/s")
        yield beside_file_store(ctx, row)
        metric = f"{ETCD}SubmitManyJobs({size}) latency"
        for row in latency_rows(SECTION, metric, batch_latencies, detail):
            yield beside_file_store(ctx, row)
        for clients in (1, settings.submit_clients):
            rate, latencies = submit_concurrently(
                daemon, clients, settings.submit_single_jobs, settings.submit_seconds
            )
            noun = "client" if clients == 1 else "clients"
            row = Row(SECTION, f"{ETCD}SubmitJob, {clients} {noun}", rate, "jobs/s", detail=detail)
            yield beside_file_store(ctx, row)
            metric = f"{ETCD}SubmitJob latency, {clients} {noun}"
            for row in latency_rows(SECTION, metric, latencies, detail):
                yield beside_file_store(ctx, row)
        with connected(daemon) as client:
            for job_id in blockers:
                client.cancel_job(job_id, True)


def jobs_once(
    ctx: Context, cluster: EtcdCluster, workers: int, jobs: int
) -> tuple[float, dict[str, int], float]:
    """Section 3's run on a fresh prefix: (seconds until all ended, statuses, daemon CPU s)."""
    args = etcd_args(cluster, new_prefix())
    with (
        ctx.scratch_dir("ha-e2e-") as scratch,
        Daemon(scratch / "state", workers, extra_args=args) as daemon,
    ):
        wait_role(daemon, "master")
        with connected(daemon) as client:
            cpu_before = daemon_cpu_seconds(daemon)
            began = time.perf_counter()
            job_ids = check_submitted(client.submit_many_jobs([[NOOP]] * jobs))
            counts = wait_until_finished(client, job_ids, ctx.settings.peer_timeout)
            elapsed = time.perf_counter() - began
            return elapsed, counts, daemon_cpu_seconds(daemon) - cpu_before


def latest_peer_figure(ctx: Context, workers: int) -> tuple[float | None, str]:
    """Huey's figure taken nearest in time, and its label: section 3's alternated runs,
    else the peers section's (Huey's own rate drifts by up to 40 % within minutes)."""
    alternated = ctx.values.get(alternated_key(workers))
    if alternated is not None:
        return alternated, f"{ALTERNATED_PEER} alternated in section 3"
    return ctx.values.get(f"peer.{ALTERNATED_PEER}.{workers}"), f"{ALTERNATED_PEER} (peers section)"


def end_to_end_rows(ctx: Context, cluster: EtcdCluster, version: str) -> Iterator[Row]:
    """No-op jobs end to end on etcd, beside the file store and Huey-SQLite (section 3)."""
    settings = ctx.settings
    jobs = settings.e2e_jobs
    for workers in settings.e2e_workers:
        runs = [jobs_once(ctx, cluster, workers, jobs)]
        while len(runs) < settings.e2e_repeats and settings.more_runs_fit(runs[0][0]):
            runs.append(jobs_once(ctx, cluster, workers, jobs))
        rates = [counts.get("success", 0) / elapsed for elapsed, counts, _ in runs]
        rate = median(rates)
        failed = sum(jobs - counts.get("success", 0) for _, counts, _ in runs)
        cpu_ms = [cpu * 1000 / jobs for _, _, cpu in runs]
        detail: dict[str, Any] = {"etcd": version, "members": 1, "jobs": jobs}
        detail.update(jobs_per_s_each=rates, cpu_ms_per_job_each=cpu_ms, runs=runs)
        metric = f"{ETCD}no-op jobs, {workers} workers (median of {len(runs)})"
        if failed:
            metric += f" ({failed} jobs not successful)"
        row = Row(SECTION, metric, rate, "jobs/s", detail=detail)
        yield compare(row, ctx.values.get(f"jobqueue.e2e.{workers}"), "file store")
        row = Row(SECTION, f"etcd vs {ALTERNATED_PEER}, {workers} workers", rate, "jobs/s")
        yield compare(row, *latest_peer_figure(ctx, workers))
        metric = f"{ETCD}daemon CPU per no-op job, {workers} workers"
        row = Row(SECTION, metric, median(cpu_ms), "ms")
        yield compare(row, ctx.values.get(f"jobqueue.e2e_cpu_ms.{workers}"), "file store")


def one_member_rows(ctx: Context, binary: str, version: str) -> Iterator[Row]:
    """Submission and end to end on one local etcd member, its data in a scratch directory."""
    with (
        ctx.scratch_dir("ha-etcd1-") as scratch,
        EtcdCluster(binary, scratch / "etcd", size=1) as cluster,
    ):
        yield from guarded("submission", submission_rows(ctx, cluster, version))
        yield from guarded("end to end", end_to_end_rows(ctx, cluster, version))


def kill_and_time_takeover(master: Daemon, standby: Daemon, timeout: float) -> float:
    """SIGKILL ``master``; return the seconds until ``standby`` accepts a SubmitJob.

    Until then the standby refuses (it names the old master) or, while it
    recovers the queue, does not answer: each attempt is a new connection,
    ``RETRY_INTERVAL`` apart. Raises RuntimeError after ``timeout``.
    """
    killed = time.monotonic()
    master.kill()
    last: BaseException | None = None
    while time.monotonic() - killed < timeout:
        try:
            with connected(standby) as client:
                client.submit_job([NOOP])
            return time.monotonic() - killed
        except Exception as error:  # refused by a standby, or not answering yet
            last = error
        time.sleep(RETRY_INTERVAL)
    raise RuntimeError(f"no SubmitJob accepted {timeout:.0f} s after the kill (last: {last})")


def failover_times(ctx: Context, binary: str) -> dict[str, list[float]]:
    """Fail over ``ha_failovers`` times.

    Returns, per round, the failover time, the wait before the kill and the
    time the killed daemon took to be back as standby, all in seconds.
    """
    settings = ctx.settings
    ttl = settings.ha_lease_ttl
    timeout = 4 * ttl + ROLE_TIMEOUT
    with contextlib.ExitStack() as stack:
        etcd_dir = stack.enter_context(ctx.scratch_dir("ha-etcd3-"))
        cluster = stack.enter_context(EtcdCluster(binary, etcd_dir / "etcd", size=3))
        args = etcd_args(cluster, new_prefix(), "--etcd-lease-ttl", str(ttl))
        state_dirs = [stack.enter_context(ctx.scratch_dir(f"ha-{n}-")) / "state" for n in "ab"]
        pair = [Daemon(state, 2, extra_args=args) for state in state_dirs]
        for daemon in pair:
            stack.callback(daemon.stop)
        pair[0].start()
        wait_role(pair[0], "master")
        pair[1].start()
        wait_role(pair[1], "standby")
        master, standby = pair
        failovers: list[float] = []
        waits: list[float] = []
        rejoins: list[float] = []
        phase = random.Random(PHASE_SEED)
        for _ in range(settings.ha_failovers):
            # A new master's lease starts when it takes over, and the previous
            # round's restart takes about as long each time: without a random
            # wait every kill would fall at the same point of the renewal cycle.
            waits.append(phase.uniform(0, ttl / 3))
            time.sleep(waits[-1])
            failovers.append(kill_and_time_takeover(master, standby, timeout))
            began = time.monotonic()
            master.start()
            wait_role(master, "standby")
            rejoins.append(time.monotonic() - began)
            master, standby = standby, master
    return {
        "failover_s_each": failovers,
        "wait_before_kill_s_each": waits,
        "restart_to_standby_s_each": rejoins,
    }


def failover_rows(ctx: Context, binary: str, version: str) -> Iterator[Row]:
    """p50 and p99 of the failover time, each beside the promise (lease TTL + 2 s)."""
    ttl = ctx.settings.ha_lease_ttl
    measured = failover_times(ctx, binary)
    failovers = measured["failover_s_each"]
    promise = ttl + PROMISE_SLACK
    detail: dict[str, Any] = {"etcd": version, "members": 3, "lease_ttl_s": ttl, **measured}
    for label, fraction in (("p50", 0.50), ("p99", 0.99)):
        metric = f"failover, kill -9 to 1st SubmitJob, TTL {ttl} s, {label} of {len(failovers)}"
        row = Row(SECTION, metric, percentile(failovers, fraction), "s", detail=detail)
        compare(row, promise, "promise: TTL + 2 s")
        yield at_most(row, promise)


def run(ctx: Context) -> Iterator[Row]:
    """Section 8: the etcd store's submission, end to end and failover figures."""
    reason = unavailable()
    if reason is not None:
        yield skipped(SECTION, reason)
        return
    binary, version = etcd_binary()
    assert binary is not None
    yield from guarded("one etcd member", one_member_rows(ctx, binary, version))
    yield from guarded("failover", failover_rows(ctx, binary, version))
