"""``jobctl`` and ``jobqueue-cleaner`` end to end, against the real daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from jobqueue import cleaner
from tests.daemon_helper import Daemon, wait_until
from tests.fake_luxi import run_jobctl


def jobctl(
    daemon: Daemon, *args: str, socket: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_jobctl(socket or daemon.paths.master_socket, *args)


def submit(daemon: Daemon, *args: str) -> int:
    result = jobctl(daemon, *args)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.splitlines()[0])


def status_of(daemon: Daemon, job_id: int) -> str:
    return jobctl(daemon, "list", str(job_id), "-o", "status", "--no-headers").stdout.strip()


class TestAgainstTheDaemon:
    def test_submit_follow_inspect_retry_archive(self, daemon: Daemon) -> None:
        result = jobctl(daemon, "delay", "0.01", "--repeat", "2", "--watch")
        assert result.returncode == 0, result.stderr
        ok_id, header, dashes, *log = result.stdout.splitlines()
        assert header == f"Output from job {ok_id} follows" and set(dashes) == {"-"}
        assert [line.split(" ", 2)[-1] for line in log] == [
            "Test delay iteration 1/2",
            "Test delay iteration 2/2",
        ]

        bad = submit(daemon, "run", "--", "sh", "-c", "echo out; exit 3")
        result = jobctl(daemon, "wait", str(bad))
        assert result.returncode == 3  # a job of one command: the command's exit status
        assert result.stderr.startswith(f"Job {bad} failed: ")
        assert "exited with code 3" in result.stderr

        result = jobctl(daemon, "list", "--no-headers", "-o", "id,status", "--separator", " ")
        assert result.stdout.splitlines() == [f"{ok_id} success", f"{bad} error"]
        info = jobctl(daemon, "info", str(bad)).stdout
        assert "  Status: error" in info and " stdout out" in info

        again = submit(daemon, "retry", str(bad))
        assert daemon.wait_job(again) == "error"
        ops = daemon.client().query_jobs([again], ["ops"])[0][0]
        assert ops[0]["comment"] == f"Retry of job {bad}"

        assert jobctl(daemon, "archive", ok_id).returncode == 0
        result = jobctl(daemon, "list", "--archived", "-o", "id", "--no-headers")
        assert result.stdout.split() == [ok_id]
        assert jobctl(daemon, "info", ok_id).returncode == 0
        result = jobctl(daemon, "autoarchive", "all")
        assert result.stdout == "Archived 2 jobs, 0 unchecked left\n"

    def test_drain_locks_cancel_and_permissions(self, daemon: Daemon) -> None:
        assert jobctl(daemon, "queue", "drain").returncode == 0
        assert jobctl(daemon, "queue", "info").stdout.startswith("The drain flag is set\n")
        result = jobctl(daemon, "delay", "0")
        assert (result.returncode, result.stderr) == (
            5,
            "The job queue is drained and refuses new jobs\n",
        )
        jobctl(daemon, "queue", "undrain")

        holder = submit(daemon, "run", "--lock", "x", "--", "sleep", "30")
        wait_until(lambda: status_of(daemon, holder) == "running", what="the lock holder")
        waiter = submit(daemon, "run", "--lock", "x", "--", "true")
        wait_until(lambda: status_of(daemon, waiter) == "waiting", what="the lock waiter")
        locks = jobctl(daemon, "locks", "--no-headers").stdout.splitlines()
        assert f"x exclusive {holder} exclusive:{waiter}" in [" ".join(x.split()) for x in locks]

        result = jobctl(daemon, "cancel", "--pending", "--force")
        assert result.returncode == 0 and f"Job {waiter}" in result.stdout
        assert jobctl(daemon, "cancel", "--kill", str(holder)).returncode == 0
        result = jobctl(daemon, "wait", str(holder), str(waiter))
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"Job {holder} failed: Job was canceled",
            f"Job {waiter} failed: Job was canceled",
        ]

        # One socket for everything: root may submit on the query socket too.
        result = jobctl(daemon, "delay", "0", socket=daemon.paths.query_socket)
        assert result.returncode == 0 and result.stdout.strip().isdigit(), result
        assert jobctl(daemon, "watch", "999").returncode == 7

    def test_cleaner_archives_then_prunes(self, daemon: Daemon) -> None:
        job_ids = [submit(daemon, "delay", "0") for _ in range(3)]
        assert jobctl(daemon, "wait", *map(str, job_ids)).returncode == 0
        state = str(daemon.state_dir)
        assert cleaner.main(["--state-dir", state, "--job-age", "all"]) == 0
        assert cleaner.main(["--state-dir", state, "--archive-age", "0"]) == 0
        with open(os.path.join(state, "log", cleaner.LOG_NAME), encoding="utf-8") as handle:
            first, second = (line[20:] for line in handle.read().splitlines())
        assert first.startswith("archived 3 jobs, pruned 0 archived jobs")
        assert second == "archived 0 jobs, pruned 3 archived jobs, removed 0 empty directories"
        result = jobctl(daemon, "info", str(job_ids[0]))
        assert (result.returncode, result.stderr) == (7, f"Job {job_ids[0]} not found\n")


class TestEveryCommandAgainstTheDaemon:
    """The commands and error lines the other tests here do not reach."""

    def test_submit_file_run_fanout_and_priority(self, daemon: Daemon, tmp_path: object) -> None:
        from pathlib import Path

        folder = Path(str(tmp_path))
        first = submit(daemon, "delay", "0")
        spec = folder / "jobs.json"
        spec.write_text('[[{"OP_ID": "OP_TEST_DUMMY", "result": 7}], [{"OP_ID": "OP_TEST_DUMMY"}]]')
        result = jobctl(
            daemon, "submit", str(spec), "--priority", "high", "--depends", f"{first}:success"
        )
        assert result.returncode == 0, result.stderr
        two = [int(line) for line in result.stdout.split()]
        assert len(two) == 2
        (row,) = daemon.client().query_jobs([two[0]], ["ops"])
        assert row[0][0]["priority"] == -10 and row[0][0]["depends"] == [[first, ["success"]]]
        assert jobctl(daemon, "wait", *map(str, two)).returncode == 0

        ran = submit(
            daemon,
            "run",
            "--lock",
            "host:a",
            "--env",
            "GREETING=hi",
            "--",
            "sh",
            "-c",
            'echo "$GREETING"',
        )
        assert jobctl(daemon, "watch", str(ran)).stdout.rstrip().endswith("hi")

        fan = submit(
            daemon,
            "fanout",
            "--item",
            "x",
            "--item",
            "y",
            "--then-run",
            "true",
            "--",
            "echo",
            "{item}",
        )
        assert jobctl(daemon, "wait", str(fan)).returncode == 0
        (row,) = daemon.client().query_jobs([fan], ["opresult"])
        children = [job_id for ok, job_id in row[0][0]["jobs"]]
        assert len(children) == 3
        assert jobctl(daemon, "wait", *map(str, children)).returncode == 0

        gate = folder / "gate"
        blocker = submit(
            daemon,
            "run",
            "--lock",
            "only",
            "--",
            "sh",
            "-c",
            f"while [ ! -e {gate} ]; do sleep 0.01; done",
        )
        queued = submit(daemon, "run", "--lock", "only", "--", "true")
        wait_until(lambda: status_of(daemon, queued) in ("queued", "waiting"))
        result = jobctl(daemon, "change-priority", "--priority", "high", str(queued))
        assert result.returncode == 0 and f"job {queued}" in result.stdout
        (row,) = daemon.client().query_jobs([queued], ["priority"])
        assert row == [-10]
        gate.touch()
        assert jobctl(daemon, "wait", str(blocker), str(queued)).returncode == 0

    def test_list_fields_and_unknown_field(self, daemon: Daemon) -> None:
        fields = jobctl(daemon, "list-fields", "--no-headers").stdout
        assert {"id", "status", "summary", "oplog"} <= {
            line.split()[0] for line in fields.splitlines()
        }
        result = jobctl(daemon, "list", "-o", "id,bogus")
        assert (result.returncode, result.stdout) == (14, "")
        assert result.stderr.startswith("Unknown field bogus;")

    def test_daemon_down(self, daemon: Daemon) -> None:
        socket = daemon.paths.master_socket
        daemon.stop()
        result = jobctl(daemon, "list")
        assert result.returncode == 3
        assert result.stderr.strip() == (
            f"Cannot reach the job queue daemon at {socket}; is it running?"
        )
        assert "Traceback" not in result.stderr


class TestTheNewcomersHour:
    """What a new user ran into, against the real daemon (issue 19)."""

    def test_wait_on_a_fanout_waits_for_the_jobs_it_submitted(self, daemon: Daemon) -> None:
        fan = submit(
            daemon, "fanout", "--item", "0", "--item", "3", "--", "sh", "-c", "exit {item}"
        )
        result = jobctl(daemon, "wait", str(fan))
        assert result.returncode == 1
        (row,) = daemon.client().query_jobs([fan], ["opresult"])
        first, second = (job_id for _, job_id in row[0][0]["jobs"])
        assert result.stderr == (
            f"Job {second} (submitted by job {fan}) failed: Command 'sh' exited with code 3\n"
        )
        statuses = daemon.client().query_jobs([first, second], ["status"])
        assert statuses == [["success"], ["error"]]  # both had ended when wait returned
        assert jobctl(daemon, "wait", "--no-children", str(fan)).returncode == 0

    def test_unknown_ids_are_exit_7_everywhere(self, daemon: Daemon) -> None:
        known = submit(daemon, "delay", "0")
        daemon.wait_job(known)
        for command in (
            ["list"],
            ["info"],
            ["watch"],
            ["wait"],
            ["cancel"],
            ["change-priority", "--priority", "low"],
            ["archive"],
            ["retry"],
        ):
            result = jobctl(daemon, *command, "99999")
            assert (result.returncode, result.stderr) == (7, "Job 99999 not found\n"), command
        result = jobctl(daemon, "list", str(known), "99999", "-o", "id", "--no-headers")
        assert (result.returncode, result.stdout) == (7, f"{known}\n")

    def test_archive_says_why_not(self, daemon: Daemon, tmp_path: Path) -> None:
        running = submit(daemon, "run", "--", "sleep", "30")
        wait_until(lambda: status_of(daemon, running) == "running", what="the job to run")
        result = jobctl(daemon, "archive", str(running))
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"Job {running} has not finished (status running), so it cannot be archived yet;"
        )
        jobctl(daemon, "cancel", "--kill", str(running))
        daemon.wait_job(running)
        assert jobctl(daemon, "archive", str(running)).returncode == 0
        result = jobctl(daemon, "archive", str(running))
        assert (result.returncode, result.stderr) == (1, f"Job {running} is already archived\n")

    def test_a_timeout_leaves_no_empty_stderr(self, daemon: Daemon) -> None:
        job_id = submit(daemon, "run", "--timeout", "0.2", "--", "sleep", "30")
        result = jobctl(daemon, "wait", str(job_id))
        assert result.stderr == f"Job {job_id} failed: Command timed out after 0.2s\n"

    def test_watch_shows_the_lock_a_job_waits_for(self, daemon: Daemon, tmp_path: Path) -> None:
        holder = submit(daemon, "run", "--lock", "x", "--", "sleep", "30")
        wait_until(lambda: status_of(daemon, holder) == "running", what="the lock holder")
        waiter = submit(daemon, "run", "--lock", "x", "--", "echo", "got it")
        out = tmp_path / "watch.out"
        command = [
            sys.executable,
            "-m",
            "jobqueue.cli.main",
            "--socket",
            daemon.paths.master_socket,
        ]
        with open(out, "w") as handle:
            watch = subprocess.Popen([*command, "watch", str(waiter)], stdout=handle, text=True)
        try:
            line = f"Waiting for lock x (exclusive), held by job {holder}"
            wait_until(lambda: line in out.read_text(), what="watch to say what the job waits for")
            jobctl(daemon, "cancel", "--kill", str(holder))
            assert watch.wait(30) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
        lines = out.read_text().splitlines()
        assert lines[0] == f"Output from job {waiter} follows"
        assert lines[-1].endswith(" got it")

    def test_two_stop_signals_stop_running_jobs_and_exit_0(self, daemon: Daemon) -> None:
        job_id = submit(daemon, "run", "--", "sleep", "30")
        wait_until(lambda: status_of(daemon, job_id) == "running", what="the job to run")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGINT)
        said = "Waiting up to 60 s for 1 running job; press Ctrl-C again to stop it now"
        wait_until(lambda: said in daemon.log(), what="the daemon to say what it waits for")
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(30) == 0
        job_file = daemon.state_dir / "queue" / f"job-{job_id}"
        assert '"status":"error"' in job_file.read_text()

    def test_daemon_option_errors_say_what_was_expected(self, tmp_path: Path) -> None:
        command = [sys.executable, "-m", "jobqueue.daemon", "--state-dir", str(tmp_path)]
        result = subprocess.run(
            [*command, "--workers", "abc"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].endswith(
            "argument --workers: expected a whole number of at least 1, got 'abc'"
        )
