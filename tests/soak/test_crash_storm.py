"""Crash storms: 16 clients submit while the daemon is SIGKILLed at random moments.

Each round starts the real daemon on the same state directory, lets the
clients load it until a random number of further acknowledgements (from a
seeded ``random.Random``; the seed is printed) and kills it with SIGKILL.
After every kill the files are checked: every acknowledged id is on disk,
every job file parses and holds the submission it was acknowledged for,
nothing went to ``corrupt/``, no id was handed out twice and new ids are
above every id on disk. After every restart, each job that was running (or
canceling) at the kill is in error with "Unclean master daemon shutdown".
After the last round the daemon runs until every job is final, and
dependency chains are checked: a dependent opcode that ran did so after its
dependency finished, with the wanted status.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon_helper import Daemon, wait_until
from tests.queue_files import corrupt_files, job_paths, load_jobs
from tests.soak.invariants import CrashChecker, check_final_state, wait_all_final
from tests.soak.load import Ledger, LoadClients
from tests.soak.support import SoakReport, pick, seeded_rng, soak_timeout

pytestmark = [pytest.mark.soak, pytest.mark.timeout(soak_timeout())]


def test_crash_storm(
    daemon_factory: Callable[..., Daemon], soak_report: SoakReport, tmp_path: Path
) -> None:
    started = time.monotonic()
    rounds = pick(6, 60)
    most_acks = pick(40, 400)
    seed, rng = seeded_rng("crash storm")
    ledger = Ledger()
    make = functools.partial(daemon_factory, workers=8)
    paths = make().paths  # every daemon of the test shares one state directory
    checker = CrashChecker(Path(paths.queue_dir))
    clients = LoadClients(paths.master_socket, ledger, seed, threads=16)
    clients.start()
    try:
        for _ in range(rounds):
            before = set(ledger.snapshot())
            daemon = make().start()
            checker.after_restart()
            clients.up.set()
            target = ledger.count() + rng.randint(0, most_acks)
            wait_until(functools.partial(ledger.reached, target), 60, "acks before the kill")
            clients.up.clear()
            daemon.kill9()
            acked = ledger.snapshot()
            checker.new_ids_are_fresh(before, acked, checker.max_id_at_kill)
            checker.after_kill(acked)
            assert clients.failures == []
    finally:
        clients.finish()
    assert ledger.duplicate_acks == []

    final = make().start()
    checker.after_restart()
    client = final.client()
    acked = ledger.snapshot()
    wait_all_final(client, sorted(acked), pick(120, 900))
    assert final.stop() == 0
    jobs = load_jobs(checker.queue_dir)
    assert set(acked) <= set(jobs)
    assert set(jobs) == set(job_paths(checker.queue_dir))
    dependencies = check_final_state(checker, jobs, acked)
    print(
        f"crash storm: {rounds} rounds, {len(acked)} acknowledged, {len(jobs)} on disk, "
        f"{checker.unclean_checked} running at a kill, {dependencies} dependencies checked, "
        f"{ledger.transport_errors} lost connections"
    )
    soak_report.record(
        tmp_path,
        started,
        test="crash storm",
        seed=seed,
        rounds=rounds,
        jobs=len(acked),
        kills=rounds,
        **{"jobs lost": len(checker.lost), "corrupt files": len(corrupt_files(checker.queue_dir))},
    )
