"""The daemon's own metrics: counters, gauges and fixed-bucket histograms, cheap to feed.

A few points of the daemon feed one ``Metrics`` (built by ``daemon.py`` and
handed to whoever feeds it): the queue counts submissions, job starts and
ends and times its durable writes, the processor times lock waits, the LUXI
server counts the WaitForJobChange calls waiting, and the role sequencer
counts take-overs. ``QueryMetrics`` (a read-only LUXI method) returns
``Metrics.export``: those values plus a few read at that moment (jobs by
status, queue depth by priority, workers, drain flag, role), as plain JSON.
``jobqueue-rapi`` turns that into Prometheus' text format; the daemon itself
depends on no metrics library.

Feeding costs one uncontended lock and a few additions; a histogram also
bisects its fixed bucket bounds. Each metric has its own lock, held only for
that arithmetic, and nothing else is ever called with it held.

The export shape (``version`` 1)::

    {"version": 1, "families": [
        {"name": "jobqueue_jobs_finished", "type": "counter", "help": "...",
         "labels": ["status"], "samples": [[["success"], 12.0], ...]},
        {"name": "jobqueue_job_run_seconds", "type": "histogram", "help": "...",
         "labels": [], "buckets": [0.01, ...],
         "samples": [[[], {"counts": [per-bucket counts, the last for +Inf],
                          "sum": 3.5, "count": 12}]]},
        ...]}

Counter names carry no ``_total`` (Prometheus' client adds it), and bucket
counts are per bucket, not cumulative.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from jobqueue.constants import PENDING, Status
from jobqueue.livejobs import Limits

#: ``QueueState``'s limits where none are given.
_NO_LIMITS = Limits(0, 0, 0)

EXPORT_VERSION = 1

#: Seconds: from a millisecond to a day, for job waits and run times.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
#: Seconds: lock waits, from a millisecond to half an hour.
LOCK_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)
#: Seconds: one durable write, from 100 microseconds to 10 seconds.
WRITE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0)

LabelValues = tuple[str, ...]


class Counter:
    """A value per label set that only goes up."""

    kind = "counter"

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self._lock = threading.Lock()  # guards _values
        self._values: dict[LabelValues, float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0.0)

    def samples(self) -> list[list[Any]]:
        with self._lock:
            return [[list(labels), value] for labels, value in sorted(self._values.items())]


class Gauge(Counter):
    """A value per label set that goes up and down."""

    kind = "gauge"

    def set(self, value: float, *label_values: str) -> None:
        with self._lock:
            self._values[label_values] = value

    @contextmanager
    def tracking(self, *label_values: str) -> Iterator[None]:
        """One more while the block runs."""
        self.inc(*label_values)
        try:
            yield
        finally:
            self.inc(*label_values, amount=-1.0)


class Histogram:
    """Observations counted into fixed buckets (upper bounds, plus +Inf), with their sum."""

    kind = "histogram"

    def __init__(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()  # guards _series
        self._series: dict[LabelValues, _Series] = {}

    def observe(self, value: float, *label_values: str) -> None:
        index = bisect.bisect_left(self.buckets, value)  # a bound is "less than or equal"
        with self._lock:
            series = self._series.get(label_values)
            if series is None:
                series = self._series[label_values] = _Series([0] * (len(self.buckets) + 1))
            series.counts[index] += 1
            series.total += value
            series.count += 1

    def count(self, *label_values: str) -> int:
        with self._lock:
            series = self._series.get(label_values)
            return 0 if series is None else series.count

    def samples(self) -> list[list[Any]]:
        with self._lock:
            return [
                [list(labels), {"counts": list(s.counts), "sum": s.total, "count": s.count}]
                for labels, s in sorted(self._series.items())
            ]


@dataclasses.dataclass(slots=True)
class _Series:
    counts: list[int]
    total: float = 0.0
    count: int = 0


class _TimedWrite:
    """The context of ``Metrics.timed_write``: a plain class, cheaper than a generator."""

    __slots__ = ("_jobs", "_metrics", "_operation", "_started")

    def __init__(self, metrics: Metrics, operation: str, jobs: int) -> None:
        self._metrics, self._operation, self._jobs = metrics, operation, jobs
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = self._metrics.clock()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if not self._jobs:
            return
        if exc_type is not None:
            self._metrics.store_write_failures.inc(self._operation)
        else:
            elapsed = self._metrics.clock() - self._started
            self._metrics.store_writes.observe(elapsed, self._operation)


@dataclasses.dataclass(frozen=True)
class QueueState:
    """What the queue looks like now, read when metrics are asked for."""

    role: str
    #: Live jobs per (status, priority).
    jobs: Mapping[tuple[str, int], int]
    workers: int = 0
    busy_workers: int = 0
    drained: bool = False
    #: What the live jobs may hold, and the opcodes and bytes of inputs they hold.
    limits: Limits = _NO_LIMITS
    opcodes: int = 0
    opcode_bytes: int = 0
    #: Jobs held back now per (reason, filter rule uuid or "" for a start time).
    held: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    #: Job filter rules in force.
    filter_rules: int = 0


class Metrics:
    """Every metric the daemon feeds; one per daemon process, shared by its terms.

    ``clock`` measures durations (seconds, monotonic).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.jobs_submitted = Counter(
            "jobqueue_jobs_submitted",
            "Jobs submitted, by outcome (accepted, or refused: invalid, drained, full, ...)",
            ("outcome",),
        )
        self.jobs_started = Counter(
            "jobqueue_jobs_started", "Jobs a worker picked up for the first time"
        )
        self.jobs_finished = Counter(
            "jobqueue_jobs_finished", "Jobs that finished, by final status", ("status",)
        )
        self.job_start_delay = Histogram(
            "jobqueue_job_start_delay_seconds",
            "Time from a job's submission to its first pick-up by a worker",
            JOB_BUCKETS,
        )
        self.job_run_time = Histogram(
            "jobqueue_job_run_seconds",
            "Time from a job's first pick-up to its end, by final status",
            JOB_BUCKETS,
            ("status",),
        )
        self.lock_waits = Histogram(
            "jobqueue_lock_wait_seconds",
            "Time opcodes waited for a lock another job held, by outcome (acquired, given_up)",
            LOCK_BUCKETS,
            ("outcome",),
        )
        self.store_writes = Histogram(
            "jobqueue_store_write_seconds",
            "Latency of durable job writes (create: a submission, replace: a change)",
            WRITE_BUCKETS,
            ("operation",),
        )
        self.store_write_failures = Counter(
            "jobqueue_store_write_failures",
            "Durable job writes that failed",
            ("operation",),
        )
        self.luxi_waiters = Gauge(
            "jobqueue_luxi_waiters",
            "WaitForJobChange calls in progress (waiting for their job to change)",
        )
        self.takeovers = Counter(
            "jobqueue_takeovers",
            "Times this daemon became master where another one had led (a failover)",
        )
        self.leads_lost = Counter(
            "jobqueue_leads_lost", "Times this daemon lost the lead of the queue while master"
        )

    # -- feeding points -------------------------------------------------------------
    def submissions(self, accepted: int, refused: int, why: str = "refused") -> None:
        if accepted:
            self.jobs_submitted.inc("accepted", amount=accepted)
        if refused:
            self.jobs_submitted.inc(why, amount=refused)

    def job_started(self, received: Sequence[int] | None, started: Sequence[int] | None) -> None:
        """A job's first pick-up; the arguments are its ``[sec, usec]`` timestamps."""
        self.jobs_started.inc()
        if received is not None and started is not None:
            self.job_start_delay.observe(max(0.0, _seconds(started) - _seconds(received)))

    def job_finished(
        self, status: str, started: Sequence[int] | None, ended: Sequence[int] | None
    ) -> None:
        status = str(status)  # a Status is a str; keep the plain value as the label
        self.jobs_finished.inc(status)
        if started is not None and ended is not None:
            self.job_run_time.observe(max(0.0, _seconds(ended) - _seconds(started)), status)

    def lock_waited(self, seconds: float, acquired: bool) -> None:
        self.lock_waits.observe(seconds, "acquired" if acquired else "given_up")

    def timed_write(self, operation: str, jobs: int = 1) -> _TimedWrite:
        """Time a durable write of ``jobs`` jobs (none: nothing is counted), as a ``with``.

        A write that raises counts as a failure instead.
        """
        return _TimedWrite(self, operation, jobs)

    # -- export ---------------------------------------------------------------------
    def export(self, state: QueueState) -> dict[str, Any]:
        """Everything, as the JSON ``QueryMetrics`` answers (see the module docstring)."""
        families = [_family(metric) for metric in self._fed()]
        families.extend(_state_families(state))
        return {"version": EXPORT_VERSION, "families": families}

    def _fed(self) -> list[Counter | Histogram]:
        return [
            self.jobs_submitted,
            self.jobs_started,
            self.jobs_finished,
            self.job_start_delay,
            self.job_run_time,
            self.lock_waits,
            self.store_writes,
            self.store_write_failures,
            self.luxi_waiters,
            self.takeovers,
            self.leads_lost,
        ]


def _seconds(stamp: Sequence[int]) -> float:
    return stamp[0] + stamp[1] / 1_000_000


def _family(metric: Counter | Histogram) -> dict[str, Any]:
    family: dict[str, Any] = {
        "name": metric.name,
        "type": metric.kind,
        "help": metric.doc,
        "labels": list(metric.labels),
        "samples": metric.samples(),
    }
    if isinstance(metric, Histogram):
        family["buckets"] = list(metric.buckets)
    return family


def _gauge(name: str, doc: str, labels: list[str], samples: list[list[Any]]) -> dict[str, Any]:
    return {"name": name, "type": "gauge", "help": doc, "labels": labels, "samples": samples}


def _state_families(state: QueueState) -> list[dict[str, Any]]:
    """The gauges read from the queue's state when asked."""
    by_status = dict.fromkeys((status.value for status in Status), 0)
    depth: dict[int, int] = {}
    for (status, priority), count in state.jobs.items():
        by_status[status] = by_status.get(status, 0) + count
        if status in PENDING:
            depth[priority] = depth.get(priority, 0) + count
    idle = max(0, state.workers - state.busy_workers)
    return [
        _gauge(
            "jobqueue_jobs",
            "Live (not archived) jobs, by status",
            ["status"],
            [[[status], float(count)] for status, count in sorted(by_status.items())],
        ),
        _gauge(
            "jobqueue_queue_depth",
            "Jobs waiting to run (queued, waiting or canceling), by priority",
            ["priority"],
            [[[str(priority)], float(count)] for priority, count in sorted(depth.items())],
        ),
        _gauge(
            "jobqueue_workers",
            "Workers (slots of the pool), by state (busy: running a job's opcode; idle)",
            ["state"],
            [[["busy"], float(state.busy_workers)], [["idle"], float(idle)]],
        ),
        _gauge(
            "jobqueue_jobs_held",
            "Queued jobs held back now, by reason (paused, rate_limited: by the filter rule "
            "named; scheduled: a start time to come)",
            ["reason", "filter"],
            [
                [[reason, rule], float(count)]
                for (reason, rule), count in sorted(state.held.items())
            ],
        ),
        _gauge(
            "jobqueue_filter_rules",
            "Job filter rules in force",
            [],
            [[[], float(state.filter_rules)]],
        ),
        _gauge(
            "jobqueue_max_jobs",
            "Live jobs allowed before submissions are refused (--max-jobs)",
            [],
            [[[], float(state.limits.jobs)]],
        ),
        _gauge(
            "jobqueue_live_opcodes",
            "Opcodes the live jobs hold, all together",
            [],
            [[[], float(state.opcodes)]],
        ),
        _gauge(
            "jobqueue_max_opcodes",
            "Opcodes the live jobs may hold before submissions are refused (--max-opcodes)",
            [],
            [[[], float(state.limits.opcodes)]],
        ),
        _gauge(
            "jobqueue_live_opcode_bytes",
            "Bytes of JSON the inputs of the live jobs' opcodes take, all together",
            [],
            [[[], float(state.opcode_bytes)]],
        ),
        _gauge(
            "jobqueue_max_opcode_bytes",
            "Opcode input bytes the live jobs may hold before submissions are refused"
            " (--max-opcode-bytes)",
            [],
            [[[], float(state.limits.opcode_bytes)]],
        ),
        _gauge(
            "jobqueue_drained",
            "1 while the queue is drained (refuses new jobs)",
            [],
            [[[], 1.0 if state.drained else 0.0]],
        ),
        _gauge(
            "jobqueue_role",
            "1 for this daemon's role (master or standby), 0 for the other",
            ["role"],
            [[[role], 1.0 if state.role == role else 0.0] for role in ("master", "standby")],
        ),
    ]
