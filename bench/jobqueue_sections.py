"""Sections 2, 3 (our half), 4 and 6: the daemon's submission, throughput, watching, CLI.

Every section starts its own daemon on a fresh state directory (see
``bench.daemon``) and stops it before returning. While the daemon does not
exist they raise DaemonUnavailable, printed as a "skipped" row. Section 5
lives in ``bench.scale``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import peers
from bench.common import (
    Context,
    Row,
    Settings,
    at_most,
    compare,
    compare_ratio_max,
    cpu_count,
    latency_rows,
    median,
    percentile,
    skipped,
)
from bench.daemon import (
    FINALIZED,
    NOOP,
    Daemon,
    DaemonUnavailable,
    check_submitted,
    daemon_cpu_seconds,
    wait_until_finished,
    wait_until_quiet,
)

SUBMIT = "2 submit"
E2E = "3 e2e"
WATCH = "4 watch"
CLI = "6 cli"
SUBMIT_WORKERS = 2
#: The target of SubmitJob from many clients: this share of the disk limit.
SUBMIT_SHARE_OF_DISK = 0.70
#: Opcodes of each job the large-job client sends (about 86 KB of request:
#: past ``batching.LARGEST_BATCHED``, so it is submitted alone).
LARGE_JOB_OPS = 2_000
#: SubmitJob calls timed beside the large-job client.
CALLS_BESIDE_LARGE = 200
#: Occupies a worker while submissions are measured; killed afterwards.
BLOCKER = {"OP_ID": "OP_TEST_DELAY", "duration": 3600}
#: Long jobs the other waiters of section 4 watch (each takes a worker).
BLOCKER_JOBS = 10
#: The other waiters' WaitForJobChange timeout: what jobctl (30 s) and Ganeti's
#: client (29 s) send, so they wait as real clients do; and a short one, so the
#: 500 of them also ask again about 250 times a second (a stress figure).
WAITER_TIMEOUT = 30.0
CHURNING_WAITER_TIMEOUT = 2.0
#: Our end-to-end target against each peer: (minimum ratio, strictly greater).
PEER_TARGETS = {"huey-sqlite": (1.2, False), "rq-redis": (1.0, True), "task-spooler": (1.0, True)}
#: The peer whose runs alternate with ours in section 3 (the one with a ratio target).
ALTERNATED_PEER = "huey-sqlite"


def alternated_key(workers: int) -> str:
    """Where section 3 leaves the median of ``ALTERNATED_PEER``'s alternated runs."""
    return f"peer.{ALTERNATED_PEER}.alternated.{workers}"


#: Daemon CPU (user + system) per no-op job end to end, from submission to its end.
CPU_PER_JOB_TARGET_MS = 0.7
#: Printed by the watched job's command: one line with a timestamp per interval.
WATCH_SCRIPT = """\
import sys, time
count, interval = int(sys.argv[1]), float(sys.argv[2])
for _ in range(count):
    print(repr(time.time()), flush=True)
    time.sleep(interval)
"""

#: Printed by the followed job's command: COUNT lines of SIZE bytes, one per interval.
FOLLOWED_SCRIPT = """\
import sys, time
count, size, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
for _ in range(count):
    print("x" * (size - 1), flush=True)
    time.sleep(interval)
"""
#: The followed job: its log grows to 128 KiB in lines of 128 bytes.
FOLLOWED_LINES, FOLLOWED_LINE_SIZE, FOLLOWED_INTERVAL = 1024, 128, 0.002
FOLLOWERS = 20


@contextlib.contextmanager
def connected(daemon: Daemon) -> Iterator[Any]:
    """Yield a client of ``daemon``, closed when the block ends."""
    client = daemon.client()
    try:
        yield client
    finally:
        client.close()


def submit_concurrently(
    daemon: Daemon, clients: int, jobs: int, seconds: float
) -> tuple[float, list[float]]:
    """Submit ``jobs`` single-opcode jobs from ``clients`` threads, one connection each.

    Stops early after ``seconds``. Returns (jobs per second, latency of each
    SubmitJob call in seconds). Raises the first error a client thread hit.
    """
    per_client = max(1, jobs // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def submit(index: int) -> None:
        try:
            with connected(daemon) as client:
                barrier.wait(60)
                deadline = time.perf_counter() + seconds
                for _ in range(per_client):
                    if time.perf_counter() > deadline:
                        break
                    began = time.perf_counter()
                    client.submit_job([NOOP])
                    latencies[index].append(time.perf_counter() - began)
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=submit, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(60)
    began = time.perf_counter()
    for thread in threads:
        thread.join(600)
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    flat = [value for values in latencies for value in values]
    return len(flat) / elapsed, flat


def submit_batches(client: Any, settings: Settings) -> tuple[float, list[float]]:
    """SubmitManyJobs in batches of the configured size after a warm-up batch of 10.

    Stops early after ``settings.submit_seconds``. Returns (jobs per second,
    latency of each call in seconds).
    """
    size = settings.submit_batch_size
    check_submitted(client.submit_many_jobs([[NOOP]] * 10))  # warm-up
    latencies = []
    began = time.perf_counter()
    deadline = began + settings.submit_seconds
    for _ in range(settings.submit_batches):
        if time.perf_counter() > deadline:
            break
        call_began = time.perf_counter()
        check_submitted(client.submit_many_jobs([[NOOP]] * size))
        latencies.append(time.perf_counter() - call_began)
    return len(latencies) * size / (time.perf_counter() - began), latencies


def remember(ctx: Context, row: Row) -> Row:
    """Keep a file-store figure of this section for the etcd store's rows (``bench.ha``)."""
    if row.value is not None:
        ctx.values[f"{row.section}: {row.metric}"] = row.value
    return row


def run_submit(ctx: Context) -> Iterator[Row]:
    """Section 2: SubmitManyJobs and SubmitJob throughput against the disk limit."""
    settings = ctx.settings
    disk_one = ctx.values.get("disk.files_per_s.1")
    disk_many = ctx.values.get(f"disk.files_per_s.{settings.submit_clients}")
    size = settings.submit_batch_size
    with ctx.scratch_dir("submit-") as scratch, Daemon(scratch / "state", SUBMIT_WORKERS) as daemon:
        wait_until_quiet(daemon)  # its start-up work, the spare files made, is done
        with connected(daemon) as client:
            # Keep every worker busy so the figures are the submission path alone
            # (the durable write of each new job); execution is measured end to end.
            blockers = [client.submit_job([BLOCKER]) for _ in range(SUBMIT_WORKERS)]
            rate, batch_latencies = submit_batches(client, settings)
        row = remember(ctx, Row(SUBMIT, f"SubmitManyJobs, batches of {size}", rate, "jobs/s"))
        yield compare(row, disk_one, "disk 1 thread")
        for row in latency_rows(SUBMIT, f"SubmitManyJobs({size}) latency", batch_latencies):
            yield remember(ctx, row)
        alone: list[float] = []
        for clients in (1, settings.submit_clients):
            cpu_began = daemon_cpu_seconds(daemon), time.process_time()
            rate, latencies = submit_concurrently(
                daemon, clients, settings.submit_single_jobs, settings.submit_seconds
            )
            daemon_cpu = daemon_cpu_seconds(daemon) - cpu_began[0]
            clients_cpu = time.process_time() - cpu_began[1]
            noun = "client" if clients == 1 else "clients"
            row = remember(ctx, Row(SUBMIT, f"SubmitJob, {clients} {noun}", rate, "jobs/s"))
            if clients == 1:
                yield compare(row, disk_one, "disk 1 thread")
            else:
                label = f"disk {clients} thr. replacing"
                yield compare(row, disk_many, label, minimum=SUBMIT_SHARE_OF_DISK)
                cpu_row = submission_cpu_row(clients, daemon_cpu, clients_cpu, len(latencies))
                yield compare(cpu_row, cpu_budget_ms(disk_many), "CPU budget at 0.7 of disk")
            for row in latency_rows(SUBMIT, f"SubmitJob latency, {clients} {noun}", latencies):
                yield remember(ctx, row)
            if clients == 1:
                alone = latencies
        yield from beside_large_jobs(ctx, daemon, alone)
        with connected(daemon) as client:
            for job_id in blockers:
                client.cancel_job(job_id, True)


def beside_large_jobs(ctx: Context, daemon: Daemon, alone: list[float]) -> Iterator[Row]:
    """SubmitJob latency of one client while another sends jobs of ``LARGE_JOB_OPS`` opcodes.

    Compared with the same client's latency alone, measured just before in
    the same daemon: how much a client sending huge jobs slows the others.
    """
    stop = threading.Event()
    large: list[float] = []
    large_ids: list[int] = []
    failures: list[BaseException] = []

    def send_large() -> None:
        try:
            with connected(daemon) as client:
                job = [dict(NOOP) for _ in range(LARGE_JOB_OPS)]
                while not stop.is_set():
                    began = time.perf_counter()
                    large_ids.append(client.submit_job(job))
                    large.append(time.perf_counter() - began)
        except BaseException as error:
            failures.append(error)

    sender = threading.Thread(target=send_large, daemon=True)
    sender.start()
    latencies: list[float] = []
    try:
        with connected(daemon) as client:
            client.submit_job([NOOP])
            while not large and not failures:  # the first large call is answered
                time.sleep(0.005)
            for _ in range(CALLS_BESIDE_LARGE):
                began = time.perf_counter()
                client.submit_job([NOOP])
                latencies.append(time.perf_counter() - began)
    finally:
        stop.set()
        sender.join(600)
    if failures:
        raise failures[0]
    with connected(daemon) as client:  # queued behind the blockers: none runs
        for job_id in large_ids:
            client.cancel_job(job_id)
    name = f"SubmitJob latency beside {LARGE_JOB_OPS:,}-opcode jobs"
    detail = {"large_calls": len(large), "large_call_p50_ms": percentile(large, 0.5) * 1000}
    for row, fraction in zip(
        latency_rows(SUBMIT, name, latencies, detail), (0.5, 0.99), strict=True
    ):
        reference = percentile(alone, fraction) * 1000 if alone else None
        yield compare(remember(ctx, row), reference, f"1 client alone p{round(fraction * 100)}")


def cpu_budget_ms(disk_rate: float | None) -> float | None:
    """The CPU, in ms, a submission may cost for ``SUBMIT_SHARE_OF_DISK`` of ``disk_rate``.

    At that rate every CPU of the machine is busy with submissions alone,
    the daemon's and its clients' (None if the disk was not measured).
    """
    if not disk_rate:
        return None
    return cpu_count() * 1000 / (SUBMIT_SHARE_OF_DISK * disk_rate)


def submission_cpu_row(clients: int, daemon_cpu: float, clients_cpu: float, jobs: int) -> Row:
    """The CPU one ``SubmitJob`` cost, the daemon's and its client's, in ms.

    Compared with ``cpu_budget_ms``, it shows whether the target rate is
    within reach of this machine's CPUs at all.
    """
    metric = f"CPU per SubmitJob, {clients} clients: daemon + clients"
    if jobs == 0:
        return Row(SUBMIT, metric, skipped="no job was submitted")
    daemon_ms, clients_ms = daemon_cpu * 1000 / jobs, clients_cpu * 1000 / jobs
    detail = {"daemon_ms": daemon_ms, "clients_ms": clients_ms, "cpus": cpu_count()}
    return Row(SUBMIT, metric, daemon_ms + clients_ms, "ms", detail=detail)


def run_jobs_once(
    ctx: Context, workers: int, jobs: int
) -> tuple[float, dict[str, int], float, float]:
    """Submit ``jobs`` no-ops in one SubmitManyJobs to a daemon done starting.

    Returns (seconds until all ended, statuses, daemon CPU seconds in that
    time, daemon CPU seconds until it is quiet again: the refill of its
    spare files, made once the queue is idle, included).
    """
    with (
        ctx.scratch_dir("e2e-") as scratch,
        Daemon(scratch / "state", workers) as daemon,
        connected(daemon) as client,
    ):
        wait_until_quiet(daemon)  # its start-up work, the spare files made, is done
        cpu_before = daemon_cpu_seconds(daemon)
        began = time.perf_counter()
        job_ids = check_submitted(client.submit_many_jobs([[NOOP]] * jobs))
        counts = wait_until_finished(client, job_ids, ctx.settings.peer_timeout)
        elapsed = time.perf_counter() - began
        cpu_run = daemon_cpu_seconds(daemon) - cpu_before
        wait_until_quiet(daemon)
        return elapsed, counts, cpu_run, daemon_cpu_seconds(daemon) - cpu_before


def run_e2e(ctx: Context) -> Iterator[Row]:
    """Section 3, our half: no-op jobs submitted in bulk until all succeed; ratio to peers.

    Our runs alternate with ``ALTERNATED_PEER``'s (ours, its, its, ours, ours,
    ...: each goes first as often), so the two figures the main target
    compares are taken in the same minutes: on a shared machine the load
    drifts between the peers section and this one. A peer whose first run
    is slow runs once, as in the peers section.
    """
    jobs, repeats = ctx.settings.e2e_jobs, ctx.settings.e2e_repeats
    partner = peers.find(ALTERNATED_PEER)
    partner_python, partner_missing = partner.check()
    for workers in ctx.settings.e2e_workers:
        runs: list[tuple[float, dict[str, int], float, float]] = []
        partner_runs: list[dict[str, Any]] = []
        partner_failure = partner_missing
        fit = ctx.settings.more_runs_fit
        while len(runs) < repeats and (not runs or fit(runs[0][0])):
            partner_due = (
                partner_python is not None
                and not partner_failure
                and (not partner_runs or fit(partner_runs[0]["seconds"]))
            )
            ours_first = len(runs) % 2 == 0
            if ours_first:
                runs.append(run_jobs_once(ctx, workers, jobs))
            if partner_due:
                assert partner_python is not None
                try:
                    partner_runs.append(peers.run_once(ctx, partner, partner_python, workers))
                except peers.RUN_ERRORS as error:
                    partner_failure, partner_runs = f"failed ({error})", []
            if not ours_first:
                runs.append(run_jobs_once(ctx, workers, jobs))
        rates = [counts.get("success", 0) / elapsed for elapsed, counts, _, _ in runs]
        rate = median(rates)
        ctx.values[f"jobqueue.e2e.{workers}"] = rate
        failed = sum(jobs - counts.get("success", 0) for _, counts, _, _ in runs)
        # Rounded well below the clock tick's resolution (10 ms over the run),
        # so that a difference of two tick counts is not 0.7000000000000002.
        cpu_ms = [round(cpu * 1000 / jobs, 6) for _, _, cpu, _ in runs]
        cpu_after_ms = [round(cpu * 1000 / jobs, 6) for _, _, _, cpu in runs]
        detail = {
            "jobs": jobs,
            "jobs_per_s_each": rates,
            "cpu_ms_per_job_each": cpu_ms,
            "cpu_ms_per_job_refill_included_each": cpu_after_ms,
        }
        detail["runs"] = runs
        metric = f"jobqueue, {workers} workers (median of {len(runs)})"
        if failed:
            metric += f" ({failed} jobs not successful)"
        yield Row(E2E, metric, rate, "jobs/s", detail=detail)
        ctx.values[f"jobqueue.e2e_cpu_ms.{workers}"] = median(cpu_ms)
        cpu_row = Row(E2E, f"daemon CPU per no-op job, {workers} workers", median(cpu_ms), "ms")
        yield at_most(cpu_row, CPU_PER_JOB_TARGET_MS)
        metric = f"daemon CPU per no-op job, {workers} workers, spare refill after included"
        yield Row(E2E, metric, median(cpu_after_ms), "ms")
        alternated = f"{ALTERNATED_PEER} alternated with ours, {workers} workers"
        references = {peer: ctx.values.get(f"peer.{peer}.{workers}") for peer in PEER_TARGETS}
        labels = dict.fromkeys(PEER_TARGETS, "") | {ALTERNATED_PEER: " (peers section)"}
        if partner_runs:
            partner_rates = [run["jobs_per_s"] for run in partner_runs]
            partner_detail = {"runs": partner_runs, "jobs_per_s_each": partner_rates}
            metric = f"{alternated} (median of {len(partner_runs)})"
            yield Row(E2E, metric, median(partner_rates), "jobs/s", detail=partner_detail)
            references[ALTERNATED_PEER] = median(partner_rates)
            ctx.values[alternated_key(workers)] = references[ALTERNATED_PEER]
            labels[ALTERNATED_PEER] = " alternated"
        elif partner_failure:
            yield skipped(E2E, partner_failure, alternated)
        for peer, (minimum, strictly) in PEER_TARGETS.items():
            row = Row(E2E, f"jobqueue vs {peer}, {workers} workers", rate, "jobs/s")
            label = peer + labels[peer]
            yield compare(row, references[peer], label, minimum=minimum, strictly=strictly)


def watch_job(client: Any, changes: int, interval: float, timeout: float) -> dict[str, Any]:
    """Run a job that logs ``changes`` stdout lines and follow it with WaitForJobChange.

    Returns the latencies (seconds) from each log entry's timestamp, and from
    the time the command printed, to the moment the waiter woke with it.
    Raises RuntimeError when the job fails or most of its lines are missing.
    """
    argv = [sys.executable, "-c", WATCH_SCRIPT, str(changes), str(interval)]
    job_id = client.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": argv}])
    info: Any = None
    serial: Any = None
    from_entry: list[float] = []
    from_print: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.wait_for_job_change(job_id, ["status"], info, serial, 30)
        woke = time.time()
        if not answer:
            raise RuntimeError(f"watched job {job_id} lost")
        if answer == "nochange":
            continue
        info, entries = answer
        for entry_serial, stamp, kind, text in entries:
            serial = entry_serial if serial is None else max(serial, entry_serial)
            if kind != "stdout":
                continue
            from_entry.append(woke - (stamp[0] + stamp[1] / 1e6))
            with contextlib.suppress(ValueError):
                from_print.append(woke - float(str(text).strip()))
        if info[0] in FINALIZED:
            break
    if info is None or info[0] != "success" or len(from_entry) < changes * 0.9:
        status = "no answer" if info is None else info[0]
        raise RuntimeError(f"watched job {job_id}: {status}, {len(from_entry)}/{changes} entries")
    return {"from_entry": from_entry, "from_print": from_print}


class OtherWaiters:
    """Clients sitting in WaitForJobChange on long jobs, run by ``bench.waiters``.

    They live in a process of their own (see that module). Each call waits
    up to ``timeout`` seconds; a "nochange" answer is followed by the next
    call at once. Leaving the block ends the process.
    """

    def __init__(self, daemon: Daemon, job_ids: list[int], count: int, timeout: float) -> None:
        self.command = [
            sys.executable,
            "-m",
            "bench.waiters",
            daemon.socket_path,
            str(timeout),
            str(count),
            *map(str, job_ids),
        ]
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> OtherWaiters:
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root
        )
        assert self.process.stdout is not None
        status = self.process.stdout.readline().strip()
        if status != "ready":
            self.__exit__()
            raise RuntimeError(f"other waiters: {status or 'no answer'}")
        return self

    def waiting(self) -> int:
        """How many of the clients are waiting now."""
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write("?\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline().split()[-1])

    def __exit__(self, *exc_info: object) -> None:
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def followed_job_cpu(daemon: Daemon, followers: int) -> float:
    """Daemon CPU (s) spent on one job logging 128 KiB while ``followers`` clients follow it.

    The followers (``bench.waiters``, a process of their own) wait on the job
    before it starts printing: it first waits for a lock held by a blocker job.
    """
    argv = [sys.executable, "-c", FOLLOWED_SCRIPT]
    argv += [str(FOLLOWED_LINES), str(FOLLOWED_LINE_SIZE), str(FOLLOWED_INTERVAL)]
    with connected(daemon) as client:
        hold = {"OP_ID": "OP_COMMAND_RUN", "argv": ["sleep", "600"], "locks": ["followed"]}
        blocker = client.submit_job([hold])
        wait_until_running(client, blocker)
        job_id = client.submit_job(
            [{"OP_ID": "OP_COMMAND_RUN", "argv": argv, "locks": ["followed"]}]
        )
        with (
            OtherWaiters(daemon, [job_id], followers, WAITER_TIMEOUT)
            if followers
            else (contextlib.nullcontext())
        ):
            before = daemon_cpu_seconds(daemon)
            client.cancel_job(blocker, True)
            wait_until_finished(client, [job_id], 120)
            used = daemon_cpu_seconds(daemon) - before
        (status,) = client.query_jobs([job_id], ["status"])[0]
        if status != "success":
            raise RuntimeError(f"followed job {job_id}: {status}")
    return used


def wait_until_running(client: Any, job_id: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.query_jobs([job_id], ["status"])[0][0] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not start")
        time.sleep(0.01)


def follower_rows(daemon: Daemon) -> Iterator[Row]:
    """Daemon CPU per change of a job followed by ``FOLLOWERS`` clients, and with none."""
    alone = followed_job_cpu(daemon, 0)
    followed = followed_job_cpu(daemon, FOLLOWERS)
    per_change = 1000 * followed / FOLLOWED_LINES
    detail = {"cpu_s_no_followers": alone, "cpu_s_followed": followed, "lines": FOLLOWED_LINES}
    yield Row(
        WATCH,
        f"daemon CPU per change, {FOLLOWERS} followers of a job logging 128 KiB",
        per_change,
        "ms",
        compared_with="no followers",
        ratio=followed / alone if alone else None,
        detail=detail,
    )


def run_watch(ctx: Context) -> Iterator[Row]:
    """Section 4: notification latency alone, then with many other clients waiting."""
    settings = ctx.settings
    changes, interval = settings.watch_changes, settings.watch_interval
    expected = changes * interval * 1.5 + 5
    workers = settings.daemon_workers
    with ctx.scratch_dir("watch-") as scratch, Daemon(scratch / "state", workers) as daemon:
        with connected(daemon) as client:
            alone = watch_job(client, changes, interval, expected * 4)
        yield from watch_rows("alone", alone)
        yield from follower_rows(daemon)
        # The others wait on a few long jobs that change only when they end;
        # killing those jobs afterwards wakes the waiters and ends them.
        blocker = {"OP_ID": "OP_TEST_DELAY", "duration": expected * 4 + 60}
        crowds = (
            (WAITER_TIMEOUT, f"{settings.watch_waiters} other waiters", True),
            (CHURNING_WAITER_TIMEOUT, f"{settings.watch_waiters} waiters asking every 2 s", False),
        )
        with connected(daemon) as client:
            for timeout, label, target in crowds:
                blockers = [client.submit_job([blocker]) for _ in range(BLOCKER_JOBS)]
                with OtherWaiters(daemon, blockers, settings.watch_waiters, timeout) as others:
                    crowded = watch_job(client, changes, interval, expected * 4)
                    still_waiting = others.waiting()
                    for job_id in blockers:
                        client.cancel_job(job_id, True)
                wait_until_finished(client, blockers, 120)
                yield from watch_rows(label, crowded, target=target, still_waiting=still_waiting)


def watch_rows(
    label: str, measured: dict[str, Any], *, target: bool = True, **detail: Any
) -> Iterator[Row]:
    """Rows for one watch run: p50 and p99 of the latency; with ``target``, p99 against 10 ms."""
    for row in latency_rows(WATCH, f"WaitForJobChange, {label},", measured["from_entry"], detail):
        if target and row.metric.endswith("p99"):
            at_most(row, 10.0)
        yield row
    printed = measured["from_print"]
    if printed:
        rows = list(latency_rows(WATCH, f"print to wake-up, {label},", printed, detail))
        yield rows[-1]


def timed_runs(command: list[str], runs: int) -> list[float]:
    """Run ``command`` ``runs`` times (after one warm-up); return wall times in ms.

    The warm-up may write the bytecode cache even where the caller's
    environment forbids it: an installed ``jobctl`` has its cache, and
    compiling its modules on every run would measure the compiler.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(command, env=env, check=False, **quiet)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, env=env, check=False, **quiet)
        times.append((time.perf_counter() - began) * 1000)
    return times


def run_cli(ctx: Context) -> Iterator[Row]:
    """Section 6: ``jobctl list`` on an empty queue against a bare interpreter."""
    jobctl = Path(sys.executable).parent / "jobctl"
    if not jobctl.exists():
        raise DaemonUnavailable(f"no jobctl beside {Path(sys.executable).name}")
    runs = ctx.settings.cli_runs
    with ctx.scratch_dir("cli-") as scratch, Daemon(scratch / "state", SUBMIT_WORKERS) as daemon:
        command = [str(jobctl), "--socket", daemon.socket_path, "list"]
        check = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            lines = (check.stderr or check.stdout).strip().splitlines() or ["no output"]
            raise RuntimeError(f"jobctl list exited {check.returncode}: {lines[-1]}")
        bare = median(timed_runs([sys.executable, "-c", "pass"], runs))
        listing = median(timed_runs(command, runs))
    yield Row(CLI, "python -c pass (median)", bare, "ms", detail={"runs": runs})
    row = Row(CLI, "jobctl list, empty queue (median)", listing, "ms", detail={"runs": runs})
    yield compare_ratio_max(row, bare, "python -c pass", 2.0)
