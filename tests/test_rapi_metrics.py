"""/metrics end to end: a fresh master, a known sequence of jobs, the scrape parsed with
the Prometheus client's own parser and checked value by value."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helper import Daemon, state_dir_under, wait_until
from tests.rapi_client import RapiClient
from tests.rapi_helper import USERS, Rapi

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Rapi, RapiClient]]:
    master = Daemon(state_dir_under(tmp_path), workers=3).start()
    rapi = Rapi(tmp_path, master.paths.master_socket).start()
    client = RapiClient(rapi.url, str(rapi.cert), "reader", USERS["reader"][1])
    yield master, rapi, client
    rapi.stop()
    master.stop()


def scrape(client: RapiClient) -> Samples:
    _, text = client.text("/metrics")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status(master: Daemon, job_id: int) -> str:
    (row,) = master.client().query_jobs([job_id], ["status"])
    return str(row[0])


def test_a_known_sequence_of_jobs(pair: tuple[Daemon, Rapi, RapiClient], tmp_path: Path) -> None:
    master, _, client = pair
    flag = tmp_path / "go"
    try:
        sequence(master, client, flag)
    finally:
        flag.touch()  # the holding job ends, whatever failed


def sequence(master: Daemon, client: RapiClient, flag: Path) -> None:
    luxi = master.client()
    hold = f'while [ ! -e "{flag}" ]; do sleep 0.02; done'
    ok = [luxi.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 0}]) for _ in range(2)]
    failing = luxi.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": ["false"]}])
    holder = luxi.submit_job(
        [{"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", hold], "locks": ["host:m"]}]
    )
    blocked = luxi.submit_job(
        [{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "locks": ["host:m"], "priority": -10}]
    )
    assert luxi.submit_many_jobs([[{"OP_ID": "OP_NO_SUCH"}]])[0][0] is False
    luxi.set_drain_flag(True)
    with pytest.raises(Exception, match="drained"):
        luxi.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 0}])
    luxi.set_drain_flag(False)
    wait_until(lambda: all(status(master, j) in ("success", "error") for j in [*ok, failing]))
    wait_until(lambda: status(master, holder) == "running" and status(master, blocked) == "waiting")
    waiter = _WaitInThread(master, holder)
    wait_until(lambda: value(scrape(client), "jobqueue_luxi_waiters") == 1, what="one waiter")

    now = scrape(client)
    assert value(now, "jobqueue_master_up") == 1
    assert value(now, "jobqueue_role", role="master") == 1
    assert value(now, "jobqueue_role", role="standby") == 0
    assert value(now, "jobqueue_jobs_submitted_total", outcome="accepted") == 5
    assert value(now, "jobqueue_jobs_submitted_total", outcome="refused") == 1
    assert value(now, "jobqueue_jobs_submitted_total", outcome="drained") == 1
    assert value(now, "jobqueue_jobs", status="success") == 2
    assert value(now, "jobqueue_jobs", status="error") == 1
    assert value(now, "jobqueue_jobs", status="running") == 1
    assert value(now, "jobqueue_jobs", status="waiting") == 1
    assert value(now, "jobqueue_queue_depth", priority="-10") == 1
    # One runs, one waits for its lock: both hold a worker.
    assert value(now, "jobqueue_workers", state="busy") == 2
    assert value(now, "jobqueue_workers", state="idle") == 1
    assert value(now, "jobqueue_drained") == 0
    assert value(now, "jobqueue_jobs_started_total") == 5
    assert value(now, "jobqueue_job_start_delay_seconds_count") == 5
    assert value(now, "jobqueue_jobs_finished_total", status="success") == 2
    assert value(now, "jobqueue_jobs_finished_total", status="error") == 1
    assert value(now, "jobqueue_job_run_seconds_count", status="success") == 2
    assert value(now, "jobqueue_store_write_seconds_count", operation="create") == 5
    histogram_is_cumulative(now, "jobqueue_store_write_seconds", operation="replace")

    assert luxi.cancel_job(blocked)[0] is True  # its lock wait is given up
    flag.touch()
    wait_until(
        lambda: status(master, holder) == "success" and status(master, blocked) == "canceled"
    )
    waiter.join()
    after = scrape(client)
    assert value(after, "jobqueue_jobs_finished_total", status="success") == 3
    assert value(after, "jobqueue_jobs_finished_total", status="canceled") == 1
    assert value(after, "jobqueue_lock_wait_seconds_count", outcome="given_up") == 1
    assert value(after, "jobqueue_luxi_waiters") == 0
    assert value(after, "jobqueue_queue_depth", priority="-10") == 0
    assert value(after, "jobqueue_workers", state="busy") == 0


def histogram_is_cumulative(samples: Samples, name: str, **labels: str) -> None:
    buckets = sorted(
        (float(dict(key[1])["le"]), count)
        for key, count in samples.items()
        if key[0] == f"{name}_bucket" and all(dict(key[1]).get(k) == v for k, v in labels.items())
    )
    counts = [count for _, count in buckets]
    assert buckets and buckets[-1][0] == float("inf")
    assert counts == sorted(counts)
    assert counts[-1] == value(samples, f"{name}_count", **labels) > 0


def test_metrics_say_when_the_master_is_down(pair: tuple[Daemon, Rapi, RapiClient]) -> None:
    master, _, client = pair
    master.stop()
    samples = scrape(client)
    assert value(samples, "jobqueue_master_up") == 0
    assert {name for name, _ in samples} == {"jobqueue_master_up"}


class _WaitInThread:
    """A LUXI WaitForJobChange on ``job_id`` waiting in a thread until the job changes."""

    def __init__(self, master: Daemon, job_id: int) -> None:
        client = master.client()
        (row,) = client.query_jobs([job_id], ["status", "oplog"])
        serial = max([entry[0] for entries in row[1] for entry in entries], default=None)
        self.answers: list[Any] = []

        def wait() -> None:
            self.answers.append(
                client.wait_for_job_change(job_id, ["status"], [row[0]], serial, 60)
            )

        self._thread = threading.Thread(target=wait, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive() and self.answers
