"""Fault storms: 16 clients load the daemon while its disk fails on and off.

The daemon runs on a ``FaultyDisk`` (``JOBQUEUE_FAULT_FILE``). Periods with
ENOSPC, EIO, or failing directory syncs alternate with healthy ones; some
faulty periods end with a SIGKILL, and the daemon is restarted on a healthy
disk. Clients must only ever see ``JobQueueError`` refusals (never an
unexpected error class), acknowledged jobs must all be on disk and parse,
and once the disk is healthy every job ends final, with the same status in
the daemon's answers as in its file.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobqueue.storage.faults import FAULT_FILE_ENV
from tests.daemon_helper import Daemon, wait_until
from tests.queue_files import clear_fault, corrupt_files, load_jobs, set_fault
from tests.soak.invariants import CrashChecker, check_final_state, wait_all_final
from tests.soak.load import Ledger, LoadClients
from tests.soak.support import SoakReport, pick, seeded_rng, soak_timeout

pytestmark = [pytest.mark.soak, pytest.mark.timeout(soak_timeout())]

FAULTS = ["ENOSPC", "EIO", "EIO fsync_dir", "ENOSPC write", "EIO replace"]


def test_fault_storm(
    daemon_factory: Callable[..., Daemon], soak_report: SoakReport, tmp_path: Path
) -> None:
    started = time.monotonic()
    periods = pick(8, 80)
    seed, rng = seeded_rng("fault storm")
    control = tmp_path / "faults"
    make = functools.partial(daemon_factory, workers=8, env={FAULT_FILE_ENV: str(control)})
    ledger = Ledger()
    paths = make().paths  # every daemon of the test shares one state directory
    checker = CrashChecker(Path(paths.queue_dir))
    clients = LoadClients(paths.master_socket, ledger, seed, threads=16)
    clients.start()
    kills = 0
    daemon = make().start()
    try:
        clients.up.set()
        for _ in range(periods):
            target = ledger.count() + rng.randint(1, pick(30, 200))
            wait_until(functools.partial(ledger.reached, target), 60, "acks on a healthy disk")
            set_fault(control, rng.choice(FAULTS))
            refusals = ledger.refusal_count() + rng.randint(1, pick(30, 200))
            wait_until(functools.partial(ledger.refused_at_least, refusals), 60, "refusals")
            if rng.random() < 0.3:
                clients.up.clear()
                daemon.kill9()
                kills += 1
                checker.after_kill(ledger.snapshot())
                clear_fault(control)
                daemon = make().start()
                checker.after_restart()
                clients.up.set()
            clear_fault(control)
            assert clients.failures == []
    finally:
        clear_fault(control)
        clients.finish()
    assert ledger.duplicate_acks == []
    acked = ledger.snapshot()
    checker.after_kill(acked)  # the same checks while it runs: all there, all parse
    client = daemon.client()
    rows = wait_all_final(client, sorted(acked), pick(120, 900))
    answers = dict(zip(sorted(acked), rows, strict=True))
    assert daemon.stop() == 0
    jobs = load_jobs(checker.queue_dir)
    assert {job_id: [str(jobs[job_id].status)] for job_id in acked} == answers
    dependencies = check_final_state(checker, jobs, acked)
    print(
        f"fault storm: {periods} fault periods, {kills} kills, {len(acked)} acknowledged, "
        f"{sum(ledger.refusals.values())} refusals, {dependencies} dependencies checked; "
        f"refusals by kind: {ledger.refusals.most_common(6)}"
    )
    soak_report.record(
        tmp_path,
        started,
        test="fault storm",
        seed=seed,
        rounds=periods,
        jobs=len(acked),
        kills=kills,
        faults=periods,
        **{"jobs lost": len(checker.lost), "corrupt files": len(corrupt_files(checker.queue_dir))},
    )
