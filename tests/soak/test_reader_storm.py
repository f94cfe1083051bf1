"""Hostile readers: huge queries, clients that never read and connection floods, beside 16
clients that submit on the master socket.

The daemon runs with an output budget of 32 MiB, a send timeout of 3 s and
at most 300 connections per socket, beside 100 finished jobs with a 100 KB
log each. For the storm's length (12 s bounded, 300 s long):

* 16 submitters each submit a small job, again and again, on the master
  socket, timing every SubmitJob;
* 4 threads ask for answers over the cap (one job's 100 KB log, 5,000
  times) and must get ``AnswerTooLarge``;
* 4 threads open connections that ask every job's log and inputs (about
  10 MB) and never read, 20 a second each, keeping 40 of them open;
* 2 threads flood the query socket with idle connections past its limit,
  and must see the excess refused with "Too many connections";
* 2 threads send the regular expression that once froze the daemon for
  20 s (``(.|.|.|.)*Z`` against every job's summary) on the query socket,
  and must get an answer;
* 1 thread archives the finished jobs every 2 s, as ``jobqueue-cleaner``
  would: on a fast disk the submitters would otherwise reach the queue's
  limit of 50,000 jobs within the long storm (and get ``JobQueueFull``);

Asserted: the daemon's RSS stays under its baseline plus RSS_BOUND_MIB and
comes back within RSS_SETTLE_MIB of it afterwards; the p99 of SubmitJob
latency stays under P99_BOUND; every acknowledged job is on record and
ends in success (no job lost); what an operator's log gets (everything but
the per-connection DEBUG lines of the test daemon's ``--debug``) grows by
less than LOG_BOUND bytes.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.luxi.client import Client
from tests.daemon_helper import Daemon, request, wait_until
from tests.luxi_samples import DELAY0
from tests.polling import poll_until
from tests.soak.invariants import wait_all_final
from tests.soak.support import SoakReport, pick, seeded_rng, soak_timeout

pytestmark = [pytest.mark.soak, pytest.mark.timeout(soak_timeout())]

RSS_BOUND_MIB = 300
RSS_SETTLE_MIB = 40
P99_BOUND = 3.0
LOG_BOUND = 4 * 1024 * 1024
#: How a debug line of the daemon's log is marked (``LOG_FORMAT``).
DEBUG_MARK = " DEBUG "
BIG_JOBS = 100
NON_READERS = 40
FLOOD = 500


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclasses.dataclass
class Tally:
    """What the storm's threads saw; every list is appended to under ``lock``."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    latencies: list[float] = dataclasses.field(default_factory=list)
    acked: list[int] = dataclasses.field(default_factory=list)
    too_large: int = 0
    regexes: int = 0
    refused_connections: int = 0
    non_readers: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    peak_rss_kib: int = 0


class Storm:
    """The threads of the storm; ``start`` runs them, ``stop`` ends and joins them."""

    def __init__(self, daemon: Daemon, big_job: int, tally: Tally) -> None:
        self.daemon = daemon
        self.big_job = big_job
        self.tally = tally
        self.stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        roles: list[tuple[Callable[[], None], int]] = [
            (self._submitter, 16),
            (self._too_large, 4),
            (self._never_reads, 4),
            (self._flood, 2),
            (self._regexes, 2),
            (self._watch_rss, 1),
            (self._archiver, 1),
        ]
        for role, count in roles:
            for _ in range(count):
                thread = threading.Thread(target=self._guard(role))
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive(), "a storm thread did not stop"

    def _guard(self, role: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                role()
            except Exception as err:  # reported, and fails the test
                with self.tally.lock:
                    self.tally.failures.append(f"{role.__name__}: {err!r}")

        return run

    def _submitter(self) -> None:
        with Client(self.daemon.paths.master_socket, timeout=60) as client:
            while not self.stopped.is_set():
                begin = time.monotonic()
                job_id = client.submit_job([DELAY0])
                took = time.monotonic() - begin
                with self.tally.lock:
                    self.tally.latencies.append(took)
                    self.tally.acked.append(job_id)

    def _archiver(self) -> None:
        with Client(self.daemon.paths.master_socket, timeout=60) as client:
            while not self.stopped.wait(2):
                client.auto_archive_jobs(-1, 5)

    def _ask(self, call: Callable[[Client], Any]) -> Any:
        """``call`` on a new query-socket connection; None if the flood got it refused."""
        try:
            with Client(self.daemon.paths.query_socket, timeout=60) as client:
                return call(client)
        except errors.ConnectionClosed:
            return None  # refused: the daemon closed before the request was sent
        except errors.LuxiError as err:
            if "Too many connections" not in str(err):
                raise
            return None

    def _too_large(self) -> None:
        def ask(client: Client) -> bool:
            try:
                client.query_jobs([self.big_job] * 5000, ["oplog"])
            except errors.AnswerTooLarge:
                return True
            raise AssertionError("an answer over the cap was sent")

        while not self.stopped.is_set():
            if self._ask(ask):
                with self.tally.lock:
                    self.tally.too_large += 1

    def _regexes(self) -> None:
        backtracking = ["=~", "summary", "(.|.|.|.)*Z"]
        while not self.stopped.is_set():
            answer = self._ask(lambda client: client.query("job", ["id"], backtracking))
            if answer is not None:
                assert answer["data"] == [], answer["data"][:3]
                with self.tally.lock:
                    self.tally.regexes += 1

    def _never_reads(self) -> None:
        payload = request("QueryJobs", None, ["id", "oplog", "ops"])
        held: list[socket.socket] = []
        try:
            while not self.stopped.is_set():
                sock = socket.socket(socket.AF_UNIX)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(10)
                try:
                    sock.connect(self.daemon.paths.query_socket)
                    sock.sendall(payload)
                except OSError:
                    sock.close()  # refused while the flood holds every slot: fine
                    time.sleep(0.05)
                    continue
                held.append(sock)
                with self.tally.lock:
                    self.tally.non_readers += 1
                if len(held) > NON_READERS // 4:
                    held.pop(0).close()
                time.sleep(0.05)  # pace of a new connection per thread
        finally:
            for sock in held:
                sock.close()

    def _flood(self) -> None:
        while not self.stopped.is_set():
            socks: list[socket.socket] = []
            try:
                for _ in range(FLOOD // 2):
                    sock = socket.socket(socket.AF_UNIX)
                    socks.append(sock)
                    sock.settimeout(10)
                    try:
                        sock.connect(self.daemon.paths.query_socket)
                    except BlockingIOError:
                        continue  # the backlog is full: the daemon is behind, not down
                self._count_refusals(socks)
            finally:
                for sock in socks:
                    sock.close()

    def _count_refusals(self, socks: list[socket.socket]) -> None:
        """Wait up to a second for the refusals of the excess, count them."""
        selector = selectors.DefaultSelector()
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 1.0
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                selector.unregister(key.fileobj)
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    refused = b"Too many connections" in sock.recv(4096)
                except OSError:
                    continue
                if refused:
                    with self.tally.lock:
                        self.tally.refused_connections += 1
        selector.close()

    def _watch_rss(self) -> None:
        assert self.daemon.proc is not None
        while not self.stopped.is_set():
            rss = rss_kib(self.daemon.proc.pid)
            with self.tally.lock:
                self.tally.peak_rss_kib = max(self.tally.peak_rss_kib, rss)
            time.sleep(0.1)


def test_reader_storm(
    daemon_factory: Callable[..., Daemon], soak_report: SoakReport, tmp_path: Path
) -> None:
    started = time.monotonic()
    seconds = pick(12, 300)
    seed, _ = seeded_rng("reader storm")
    daemon = daemon_factory(
        "--max-pending-output",
        str(32 * 1024 * 1024),
        "--send-timeout",
        "3",
        "--max-connections",
        "300",
        workers=8,
    ).start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    client = daemon.client()
    big = {"OP_ID": "OP_TEST_DUMMY", "messages": ["x" * 100_000]}
    big_ids = [row[1] for row in client.submit_many_jobs([[big]] * BIG_JOBS)]
    wait_all_final(client, big_ids, 120)
    baseline = rss_kib(pid)
    log_start = len(daemon.log())
    tally = Tally()
    storm = Storm(daemon, big_ids[0], tally)
    storm.start()
    try:
        deadline = time.monotonic() + seconds
        wait_until(
            lambda: tally.failures or time.monotonic() > deadline, seconds + 10, "the storm's end"
        )
    finally:
        storm.stop()
    assert tally.failures == []
    client = daemon.client()  # the first one idled through the storm: the daemon closed it
    rows = wait_all_final(client, tally.acked, 120)
    lost = sum(row != ["success"] for row in rows)
    latencies = sorted(tally.latencies)
    p99 = latencies[int(len(latencies) * 0.99)]
    peak_mib = (tally.peak_rss_kib - baseline) / 1024
    settled = poll_until(lambda: rss_kib(pid) < baseline + RSS_SETTLE_MIB * 1024, 60, 0.1)
    settled_mib = (rss_kib(pid) - baseline) / 1024
    log_growth = operator_log_size(daemon.log()[log_start:])
    print(
        f"\nreader storm: {len(latencies)} submissions, p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms; RSS baseline {baseline // 1024} MiB, peak "
        f"+{peak_mib:.0f} MiB, after +{settled_mib:.0f} MiB; {tally.too_large} answers over "
        f"the cap refused, {tally.regexes} backtracking regexes answered, "
        f"{tally.non_readers} non-reading clients, "
        f"{tally.refused_connections} flood connections refused; log +{log_growth // 1024} KiB"
    )
    soak_report.record(
        tmp_path,
        started,
        test="reader storm",
        seed=seed,
        jobs=len(tally.acked),
        malformed=tally.too_large,
        **{"jobs lost": lost},
        **{"rss peak MiB": round(peak_mib), "p99 ms": round(p99 * 1000)},
        **{"log KiB": log_growth // 1024},
    )
    assert lost == 0
    assert peak_mib < RSS_BOUND_MIB
    assert settled, f"RSS still +{settled_mib:.0f} MiB over its baseline 60 s after the storm"
    assert p99 < P99_BOUND
    assert log_growth < LOG_BOUND
    assert tally.too_large > 0 and tally.non_readers > 0 and tally.refused_connections > 0
    assert tally.regexes > 0


def operator_log_size(text: str) -> int:
    """Bytes of ``text`` that a daemon without ``--debug`` would have logged."""
    return sum(len(line) + 1 for line in text.splitlines() if DEBUG_MARK not in line)
