"""What runs when, end to end: the real daemon, the real jobctl, real commands.

Filter rules (pause, reject, rate limit) and their durability, scheduled
starts across a restart, automatic retries with a dependent job, and the
number of workers changed under load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.daemon_helper import Daemon, wait_until
from tests.fake_luxi import run_jobctl

FINAL = ("success", "error", "canceled")


def jobctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return run_jobctl(daemon.paths.master_socket, *args)


def submit(daemon: Daemon, *args: str) -> int:
    result = jobctl(daemon, *args)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.splitlines()[0])


def submit_file(daemon: Daemon, tmp_path: Path, jobs: list[list[dict[str, Any]]]) -> list[int]:
    path = tmp_path / f"jobs-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(jobs))
    result = jobctl(daemon, "submit", str(path))
    assert result.returncode == 0, result.stderr
    return [int(line) for line in result.stdout.split()]


def command(*argv: str) -> dict[str, Any]:
    return {"OP_ID": "OP_COMMAND_RUN", "argv": list(argv)}


def row(daemon: Daemon, job_id: int, *fields: str) -> list[Any]:
    return list(daemon.client().query_jobs([job_id], list(fields))[0])


def wait_all(daemon: Daemon, job_ids: Sequence[int], timeout: float = 60.0) -> list[str]:
    return [daemon.wait_job(job_id, timeout) for job_id in job_ids]


def seconds(stamp: Sequence[int]) -> float:
    return stamp[0] + stamp[1] / 1e6


def exec_spans(daemon: Daemon, job_ids: Sequence[int]) -> list[tuple[float, float]]:
    """When each job's (single) opcode ran: from its locks being held to its end."""
    rows = daemon.client().query_jobs(list(job_ids), ["opexec", "opend"])
    return [(seconds(opexec[0]), seconds(opend[0])) for opexec, opend in rows]


def most_at_once(spans: Sequence[tuple[float, float]]) -> int:
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


def held(daemon: Daemon, job_id: int) -> Callable[[], Any]:
    return lambda: row(daemon, job_id, "hold")[0]


def test_pause_holds_new_jobs_while_running_ones_finish(daemon: Daemon) -> None:
    running = submit(daemon, "run", "--", "sleep", "1")
    earlier = submit(daemon, "run", "--in", "1s", "--", "true")  # queued before the pause
    wait_until(lambda: row(daemon, running, "status")[0] == "running")
    result = jobctl(daemon, "queue", "pause", "--comment", "maintenance")
    assert result.returncode == 0 and "Queue paused" in result.stdout, result.stderr
    new = submit(daemon, "run", "--", "echo", "after the pause")
    hold = wait_until(held(daemon, new), what="the new job to be held")
    assert hold["kind"] == "paused"
    listed = jobctl(daemon, "list", str(new), "--no-headers").stdout
    assert f"queued (paused by filter {hold['filter'][:8]})" in listed
    assert daemon.wait_job(running) == "success"  # what ran finished
    assert daemon.wait_job(earlier) == "success"  # what was queued before runs on
    assert row(daemon, new, "status") == ["queued"]
    info = jobctl(daemon, "queue", "info").stdout
    assert f"Paused: yes (filter rule {hold['filter']})" in info
    assert jobctl(daemon, "queue", "continue").returncode == 0
    assert daemon.wait_job(new) == "success"
    assert "Paused: no" in jobctl(daemon, "queue", "info").stdout


def test_reject_refuses_new_jobs_and_cancels_queued_matches(daemon: Daemon, tmp_path: Path) -> None:
    pause = jobctl(daemon, "filter", "add", "--action", "PAUSE", "--priority", "9")
    queued = submit_file(daemon, tmp_path, [[command("true")]] * 3)
    other = submit(daemon, "delay", "0")
    rule = jobctl(daemon, "filter", "add", "--opcode", "OP_COMMAND_RUN", "--action", "REJECT")
    assert rule.returncode == 0, rule.stderr
    uuid = rule.stdout.strip()
    assert wait_all(daemon, queued) == ["canceled"] * 3
    assert row(daemon, queued[0], "opresult") == [[f"Job canceled by filter rule {uuid}"]]
    refused = jobctl(daemon, "run", "--", "true")
    assert refused.returncode == 1 and f"refused by filter rule {uuid}" in refused.stderr
    jobctl(daemon, "filter", "delete", pause.stdout.strip())
    assert daemon.wait_job(other) == "success"  # not matched: it runs


def test_rate_limit_caps_matching_jobs_while_others_run_freely(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(workers=8).start()
    rule = jobctl(daemon, "filter", "add", "--opcode", '["=~", "argv", "sleep"]',
                  "--rate-limit", "3")  # fmt: skip
    assert rule.returncode == 0, rule.stderr
    limited = submit_file(daemon, tmp_path, [[command("sleep", "0.2")]] * 30)
    free = submit_file(daemon, tmp_path, [[command("echo", "free")]] * 4)
    waiting = wait_until(
        lambda: [j for j in limited if (row(daemon, j, "hold")[0] or {}).get("kind")],
        what="rate-limited jobs to be held",
    )
    assert row(daemon, waiting[-1], "hold")[0]["kind"] == "rate_limited"
    assert wait_all(daemon, limited + free, 120) == ["success"] * 34
    limited_spans = exec_spans(daemon, limited)
    assert most_at_once(limited_spans) == 3  # never more, and the limit was used
    free_ends = [end for _, end in exec_spans(daemon, free)]
    last_limited_start = max(start for start, _ in limited_spans)
    assert max(free_ends) < last_limited_start  # the others did not wait in line


def test_filters_survive_a_restart(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory().start()
    uuid = jobctl(daemon, "filter", "add", "--reason", "nightly", "--action", "PAUSE",
                  "--priority", "7", "--comment", "kept").stdout.strip()  # fmt: skip
    assert daemon.stop() == 0
    daemon = daemon_factory().start()
    listed = json.loads(jobctl(daemon, "filter", "list", "--output", "json").stdout)
    assert [(r["uuid"], r["priority"], r["action"]) for r in listed] == [(uuid, 7, "PAUSE")]
    assert listed[0]["reason_trail"][0][:2] == ["jobctl:filter", "kept"]
    path = daemon.state_dir / "job.json"
    path.write_text(json.dumps([{"OP_ID": "OP_TEST_DELAY", "duration": 0,
                                 "reason": [["nightly", "report", 1]]}]))  # fmt: skip
    job_id = submit(daemon, "submit", str(path))
    assert wait_until(held(daemon, job_id))["filter"] == uuid
    other = submit(daemon, "delay", "0")  # no such reason: not held
    assert daemon.wait_job(other) == "success"


def test_scheduled_jobs_start_on_time_and_survive_a_restart(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory().start()
    soon = submit(daemon, "run", "--in", "1s", "--", "true")
    later = submit(daemon, "run", "--in", "4s", "--", "true")
    listed = jobctl(daemon, "list", str(later), "--no-headers").stdout
    assert "queued (scheduled for " in listed
    (not_before,) = row(daemon, later, "not_before")
    assert daemon.wait_job(soon) == "success"
    assert row(daemon, later, "status") == ["queued"]
    assert daemon.stop() == 0
    daemon = daemon_factory().start()
    assert daemon.wait_job(later) == "success"
    (opexec,) = row(daemon, later, "opexec")
    assert seconds(not_before) <= seconds(opexec[0]) < seconds(not_before) + 10


def test_a_flaky_command_succeeds_on_its_third_attempt_before_its_dependent(
    daemon: Daemon, tmp_path: Path
) -> None:
    counter = tmp_path / "attempts"
    script = (
        "import sys; p = sys.argv[1]\n"
        "try: n = int(open(p).read())\n"
        "except OSError: n = 0\n"
        "open(p, 'w').write(str(n + 1)); print('attempt', n + 1)\n"
        "sys.exit(0 if n >= 2 else 1)"
    )
    job_id = submit(daemon, "run", "--retries", "3", "--retry-delay", "0.2", "--",
                    sys.executable, "-S", "-c", script, str(counter))  # fmt: skip
    dependent = submit(daemon, "run", "--depends", f"{job_id}:success", "--", "true")
    assert daemon.wait_job(dependent) == "success"
    status, attempt, attempts, end_ts = row(daemon, job_id, "status", "attempt", "attempts",
                                           "end_ts")  # fmt: skip
    assert (status, attempt, len(attempts), counter.read_text()) == ("success", 3, 2, "3")
    (dependent_exec,) = row(daemon, dependent, "opexec")
    assert seconds(dependent_exec[0]) >= seconds(end_ts)
    info = jobctl(daemon, "info", str(job_id)).stdout
    assert "Attempt: 3 of 4" in info and "Failed attempts:" in info
    assert "Attempt 1 of 4 failed" in info and "Attempt 2 of 4 failed" in info


def test_set_workers_up_and_down_under_load(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(workers=2).start()
    first = submit_file(daemon, tmp_path, [[command("sleep", "0.5")]] * 8)
    assert jobctl(daemon, "queue", "set-workers", "6").returncode == 0
    assert wait_all(daemon, first) == ["success"] * 8
    assert most_at_once(exec_spans(daemon, first)) > 2
    second = submit_file(daemon, tmp_path, [[command("sleep", "0.5")]] * 4)
    wait_until(lambda: row(daemon, second[0], "status")[0] == "running")
    assert jobctl(daemon, "queue", "set-workers", "1").returncode == 0
    assert wait_all(daemon, second) == ["success"] * 4  # running jobs were not disturbed
    third = submit_file(daemon, tmp_path, [[command("sleep", "0.2")]] * 3)
    assert wait_all(daemon, third) == ["success"] * 3
    assert most_at_once(exec_spans(daemon, third)) == 1
    assert daemon.stop() == 0
    daemon = daemon_factory(workers=2).start()
    assert "Workers: 1" in jobctl(daemon, "queue", "info").stdout
