"""The daemon's metrics registry (jobqueue.metrics) and the points of the queue that feed it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.daemon import Core, build_core, start_core
from jobqueue.errors import JobQueueDrainError
from jobqueue.livejobs import Limits
from jobqueue.locking import LockManager
from jobqueue.lus import builtin_registry
from jobqueue.metrics import Counter, Gauge, Histogram, Metrics, QueueState
from jobqueue.storage.files import FileJobStore
from tests.polling import poll_until

WAIT = 15.0


def family(export: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in export["families"] if f["name"] == name]
    return found


def values(export: dict[str, Any], name: str) -> dict[tuple[str, ...], Any]:
    return {tuple(labels): value for labels, value in family(export, name)["samples"]}


# -- the primitives ----------------------------------------------------------------------
def test_counter_counts_per_label_set() -> None:
    counter = Counter("c", "doc", ("outcome",))
    counter.inc("a")
    counter.inc("a", amount=2)
    counter.inc("b")
    assert counter.value("a") == 3
    assert counter.samples() == [[["a"], 3.0], [["b"], 1.0]]


def test_gauge_tracking_counts_only_while_inside() -> None:
    gauge = Gauge("g", "doc")
    with gauge.tracking():
        with gauge.tracking():
            assert gauge.value() == 2
        assert gauge.value() == 1
    assert gauge.value() == 0
    with pytest.raises(RuntimeError), gauge.tracking():
        raise RuntimeError
    assert gauge.value() == 0


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    histogram = Histogram("h", "doc", (1.0, 0.1, 10.0))
    for value in (0.05, 0.1, 0.5, 1.0, 99.0):
        histogram.observe(value)
    ((labels, series),) = histogram.samples()
    assert labels == []
    assert histogram.buckets == (0.1, 1.0, 10.0)  # sorted
    assert series["counts"] == [2, 2, 0, 1]  # <=0.1, <=1, <=10, +Inf
    assert series["count"] == 5
    assert series["sum"] == pytest.approx(100.65)


def test_counters_lose_nothing_under_concurrent_feeding() -> None:
    counter, histogram = Counter("c", "doc"), Histogram("h", "doc", (1.0,))
    barrier = threading.Barrier(8)

    def feed() -> None:
        barrier.wait()
        for _ in range(5000):
            counter.inc()
            histogram.observe(0.5)

    threads = [threading.Thread(target=feed) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value() == 40000
    assert histogram.count() == 40000


def test_timed_write_counts_failures_apart_and_skips_empty_writes() -> None:
    ticks = iter([1.0, 1.25, 2.0, 5.0])
    metrics = Metrics(clock=lambda: next(ticks))
    with metrics.timed_write("replace"):
        pass
    with pytest.raises(OSError), metrics.timed_write("replace"):
        raise OSError("disk full")
    with metrics.timed_write("create", 0):
        pass
    export = metrics.export(QueueState(role="master", jobs={}))
    ((labels, series),) = family(export, "jobqueue_store_write_seconds")["samples"]
    assert labels == ["replace"] and series["count"] == 1 and series["sum"] == 0.25
    assert values(export, "jobqueue_store_write_failures") == {("replace",): 1.0}


def test_export_reads_the_queue_state() -> None:
    state = QueueState(
        role="standby",
        jobs={("queued", 0): 3, ("waiting", -10): 1, ("running", 0): 2, ("success", 0): 5},
        workers=4,
        busy_workers=3,
        drained=True,
        limits=Limits(jobs=100, opcodes=500, opcode_bytes=4096),
        opcodes=12,
        opcode_bytes=3000,
        held={("paused", "u-1"): 2, ("scheduled", ""): 1},
        filter_rules=3,
    )
    export = Metrics().export(state)
    assert export["version"] == 1
    jobs = values(export, "jobqueue_jobs")
    assert jobs[("queued",)] == 3 and jobs[("success",)] == 5 and jobs[("error",)] == 0
    assert values(export, "jobqueue_queue_depth") == {("-10",): 1, ("0",): 3}
    assert values(export, "jobqueue_workers") == {("busy",): 3, ("idle",): 1}
    assert values(export, "jobqueue_role") == {("master",): 0, ("standby",): 1}
    assert values(export, "jobqueue_drained") == {(): 1}
    assert values(export, "jobqueue_max_jobs") == {(): 100}
    assert values(export, "jobqueue_live_opcodes") == {(): 12}
    assert values(export, "jobqueue_max_opcodes") == {(): 500}
    assert values(export, "jobqueue_live_opcode_bytes") == {(): 3000}
    assert values(export, "jobqueue_max_opcode_bytes") == {(): 4096}
    assert values(export, "jobqueue_jobs_held") == {("paused", "u-1"): 2, ("scheduled", ""): 1}
    assert values(export, "jobqueue_filter_rules") == {(): 3}
    for each in export["families"]:
        assert each["type"] in ("counter", "gauge", "histogram")
        assert each["name"].startswith("jobqueue_") and not each["name"].endswith("_total")


# -- fed by a real queue ---------------------------------------------------------------
@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    built = build_core(
        FileJobStore(str(tmp_path / "queue")),
        builtin_registry(),
        metrics=Metrics(),
        logger=logging.getLogger("test.metrics"),
    )
    start_core(built, 2)
    yield built
    built.queue.prepare_shutdown()
    built.queue.kill_running()
    built.stop()


def finished(core: Core, job_ids: list[int]) -> bool:
    rows = core.reader.query_jobs(job_ids, ["status"])
    return all(row[0] in ("success", "error", "canceled") for row in rows)


def test_a_known_sequence_of_jobs_is_counted(core: Core) -> None:
    queue = core.queue
    ok = [queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 0}]) for _ in range(3)]
    failing = queue.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": ["false"]}])
    refused = queue.submit_many_jobs([[{"OP_ID": "OP_NO_SUCH"}], [{"OP_ID": "OP_TEST_DELAY"}]])
    assert [ok for ok, _ in refused] == [False, False]
    queue.set_drain_flag(True)
    with pytest.raises(JobQueueDrainError):
        queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 0}])
    queue.set_drain_flag(False)
    assert poll_until(lambda: finished(core, [*ok, failing]), WAIT)

    export = queue.query_metrics()
    assert values(export, "jobqueue_jobs_submitted") == {
        ("accepted",): 4,
        ("refused",): 2,
        ("drained",): 1,
    }
    assert values(export, "jobqueue_jobs_finished") == {("success",): 3, ("error",): 1}
    assert values(export, "jobqueue_jobs_started") == {(): 4}
    assert family(export, "jobqueue_job_start_delay_seconds")["samples"][0][1]["count"] == 4
    run_time = dict(
        (labels[0], series["count"])
        for labels, series in family(export, "jobqueue_job_run_seconds")["samples"]
    )
    assert run_time == {"success": 3, "error": 1}
    writes = {
        labels[0]: series["count"]
        for labels, series in family(export, "jobqueue_store_write_seconds")["samples"]
    }
    assert writes["create"] == 4  # one durable write per stored submission
    assert writes["start"] >= 4  # each job's start (a start record)
    assert writes["replace"] >= 4  # and its end
    assert values(export, "jobqueue_jobs")[("success",)] == 3
    assert values(export, "jobqueue_workers") == {("busy",): 0, ("idle",): 2}
    assert values(export, "jobqueue_role") == {("master",): 1, ("standby",): 0}


def test_a_canceled_queued_job_is_counted_once(core: Core) -> None:
    queue = core.queue
    queue.pool.set_active(False)  # nothing starts: the job stays queued
    job_id = queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 0}])
    assert queue.cancel_job(job_id)[0] is True
    queue.pool.set_active(True)
    export = queue.query_metrics()
    assert values(export, "jobqueue_jobs_finished") == {("canceled",): 1}
    assert values(export, "jobqueue_jobs_started") == {}
    assert family(export, "jobqueue_job_run_seconds")["samples"] == []  # it never started


def test_lock_waits_are_timed(core: Core) -> None:
    queue = core.queue
    locks: LockManager = core.locks
    assert locks.acquire("test", ["host:a"], shared=False, timeout=0)
    job_id = queue.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "locks": ["host:a"]}])
    assert poll_until(lambda: core.reader.query_jobs([job_id], ["status"])[0][0] == "waiting", WAIT)
    locks.release("test")
    assert poll_until(lambda: finished(core, [job_id]), WAIT)
    samples = family(queue.query_metrics(), "jobqueue_lock_wait_seconds")["samples"]
    counts = {labels[0]: series["count"] for labels, series in samples}
    assert counts.get("acquired", 0) >= 1
