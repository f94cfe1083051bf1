"""Failover storm: two real daemons on a real 3-member etcd cluster, failing over under load.

16 clients submit to whichever daemon leads; the master is killed with
SIGKILL or stopped with SIGTERM, again and again, and comes back as the
standby. Every acknowledged job must be there under its own tag, none may
run twice, and those cut off by a failover end in error saying so.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.daemon_helper import wait_until
from tests.ha_support import (
    Pair,
    Submitters,
    check_nothing_lost_nothing_run_twice,
    recording_job,
    role_of,
    wait_count,
    wait_master,
)
from tests.ha_support import pair as pair  # the fixture
from tests.soak.support import SoakReport, pick, soak_timeout

pytestmark = [pytest.mark.soak, pytest.mark.timeout(soak_timeout())]


def test_failover_storm(pair: Pair, tmp_path: Path, soak_report: SoakReport) -> None:
    """Failovers under load, alternating kill -9 and SIGTERM: 3 here, 24 in `make soak`."""
    started = time.monotonic()
    runs = tmp_path / "runs"
    rounds = pick(3, 24)
    # Paced: 16 clients submit at most 320 jobs a second, four times what the
    # 4 workers can run (each job sleeps 50 ms), so that the backlog a long
    # storm leaves can still be run within the final check's time.
    submitters = Submitters(pair.daemons, recording_job(runs), pace=0.05).start()
    try:
        for number in range(rounds):
            master, standby = (
                (pair.first, pair.second)
                if role_of(pair.first) == "master"
                else (pair.second, pair.first)
            )
            wait_count(submitters, submitters.count() + 20)
            if number % 2:
                master.stop(signal.SIGTERM)
            else:
                master.kill9()
            wait_master(standby, 60)
            master.start()  # comes back as the standby
            wait_until(lambda m=master: role_of(m) == "standby", 30, "a standby")
        wait_count(submitters, submitters.count() + 20)
    finally:
        submitters.stop()
    master = next(d for d in pair.daemons if role_of(d) == "master")
    statuses = check_nothing_lost_nothing_run_twice(master, submitters, runs, pick(60, 600))
    soak_report.record(
        tmp_path,
        started,
        test="failover storm",
        rounds=rounds,
        jobs=len(submitters.acked),
        kills=(rounds + 1) // 2,
        **{"jobs lost": 0, "run twice": 0, "failed over": statuses.get("error", 0)},
    )
