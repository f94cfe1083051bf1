"""The real ``jobctl`` in a subprocess against a scripted daemon: every command,
its output, and every error line with its exit code."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

from jobqueue import errors
from tests import fake_luxi as fake
from tests.cli_samples import ARCHIVED, DELAY, JOBS, T0, job
from tests.fake_luxi import REPO_ROOT, FakeLuxi, JobTable, in_order, run_jobctl

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir


@pytest.fixture
def fake_daemon(luxi: FakeLuxi) -> FakeLuxi:
    JobTable(JOBS, ARCHIVED).install(luxi)
    return luxi


class TestErrors:
    def test_daemon_not_running(self, short_dir: str) -> None:
        path = os.path.join(short_dir, "missing.sock")
        result = run_jobctl(path, "list")
        assert result.returncode == 3
        assert result.stderr == f"Cannot reach the job queue daemon at {path}; is it running?\n"
        assert result.stdout == ""

    def test_default_socket_comes_from_the_state_dir(self, short_dir: str) -> None:
        result = run_jobctl(None, "queue", "info", env={"JOBQUEUE_STATE_DIR": short_dir})
        assert result.returncode == 3
        assert os.path.join(short_dir, "run", "master.sock") in result.stderr
        result = run_jobctl(None, "--state-dir", os.path.join(short_dir, "x"), "queue", "info")
        assert os.path.join(short_dir, "x", "run", "master.sock") in result.stderr

    def test_no_daemon_hints(self, short_dir: str) -> None:
        """Where the socket came from, and a ./state socket that exists (make run's)."""
        env = {"JOBQUEUE_STATE_DIR": "", "HOME": short_dir, "XDG_STATE_HOME": short_dir}
        result = run_jobctl(None, "list", env=env, cwd=short_dir)
        assert result.returncode == 3
        assert result.stderr.splitlines()[1] == (
            "Hint: neither --state-dir nor JOBQUEUE_STATE_DIR is set, so the default state"
            " directory was used; give the daemon's with --state-dir DIR or"
            " JOBQUEUE_STATE_DIR=DIR"
        )
        env["JOBQUEUE_STATE_DIR"] = os.path.join(short_dir, "elsewhere")
        result = run_jobctl(None, "list", env=env, cwd=short_dir)
        assert result.stderr.splitlines()[1:] == [
            "Hint: the state directory comes from JOBQUEUE_STATE_DIR;"
            " give the daemon's with --state-dir DIR"
        ]
        os.makedirs(os.path.join(short_dir, "state", "run"))
        open(os.path.join(short_dir, "state", "run", "master.sock"), "w").close()
        result = run_jobctl(None, "list", env=env, cwd=short_dir)
        assert result.stderr.splitlines()[1:] == [
            "Hint: ./state/run/master.sock exists; use it with --state-dir ./state"
            " or export JOBQUEUE_STATE_DIR=$PWD/state"
        ]
        result = run_jobctl(None, "--state-dir", "nowhere", "list", env=env, cwd=short_dir)
        assert len(result.stderr.splitlines()) == 2  # still names the socket that exists

    def test_read_only_commands_fall_back_to_the_query_socket(self, short_dir: str) -> None:
        run = os.path.join(short_dir, "run")
        os.makedirs(run)
        master = FakeLuxi(os.path.join(run, "master.sock"))
        query = FakeLuxi(os.path.join(run, "query.sock"))
        try:

            def refuse(*args: Any) -> None:
                raise errors.AccessDenied("Permission denied: not allowed to use the master socket")

            for method in ("Query", "QueryJobs", "SubmitJob", "QueryConfigValues"):
                master.answers[method] = refuse
            JobTable(JOBS).install(query)
            query.answers["SubmitJob"] = refuse
            result = run_jobctl(None, "--state-dir", short_dir, "list", "-o", "id", "--no-headers")
            assert (result.returncode, result.stdout.split()) == (0, ["1", "2", "12"])
            assert (master.methods(), query.methods()) == (["Query"], ["Query"])
            result = run_jobctl(None, "--state-dir", short_dir, "delay", "1")  # not read-only
            assert result.returncode == 4
            assert query.methods().count("SubmitJob") == 0
            result = run_jobctl(master.path, "list")  # an explicit --socket is kept
            assert result.returncode == 4
        finally:
            master.stop()
            query.stop()

    def test_permission_denied(self, luxi: FakeLuxi) -> None:
        def refuse(*args: Any) -> None:
            raise errors.AccessDenied("Method SubmitJob is not allowed on this socket")

        luxi.answers["SubmitJob"] = refuse
        result = run_jobctl(luxi.path, "delay", "1")
        assert result.returncode == 4
        assert result.stderr == (
            "Permission denied: Method SubmitJob is not allowed on this socket\n"
        )

    def test_drained_and_full(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = in_order(
            errors.JobQueueDrainError("Job queue is drained, refusing job"),
            errors.JobQueueFull("Job queue is full (50000 jobs)"),
        )
        result = run_jobctl(luxi.path, "delay", "1")
        assert (result.returncode, result.stderr) == (
            5,
            "The job queue is drained and refuses new jobs\n",
        )
        result = run_jobctl(luxi.path, "delay", "1")
        assert result.returncode == 6
        assert result.stderr == "The job queue is full: Job queue is full (50000 jobs)\n"

    def test_other_failure_is_one_line_and_debug_adds_the_traceback(
        self,
        luxi: FakeLuxi,
    ) -> None:
        def refuse(*args: Any) -> None:
            raise errors.OpPrereqError("Unknown opcode\nOP_NOPE", errors.ECODE_INVAL)

        luxi.answers["SubmitJob"] = refuse
        result = run_jobctl(luxi.path, "delay", "1")
        assert (result.returncode, result.stderr) == (
            1,
            "Request refused: Unknown opcode OP_NOPE\n",
        )
        result = run_jobctl(luxi.path, "--debug", "delay", "1")
        assert result.returncode == 1
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.endswith("Request refused: Unknown opcode OP_NOPE\n")

    @pytest.mark.parametrize(
        ("args", "prog", "message"),
        [
            ([], "jobctl", "the following arguments are required: COMMAND"),
            (["frobnicate"], "jobctl", "argument COMMAND: invalid choice: 'frobnicate'"),
            (["info"], "jobctl info", "the following arguments are required: ID"),
            (["info", "abc"], "jobctl info", "argument ID: expected a job id"),
            (["delay", "-1"], "jobctl delay", "argument SECONDS: expected a number of seconds"),
            (["autoarchive", "6x"], "jobctl autoarchive", "argument AGE|all: Invalid time"),
            (
                ["run", "--timeout", "abc", "--", "true"],
                "jobctl run",
                "argument --timeout: expected a number of seconds (such as 30 or 0.5), got 'abc'",
            ),
            (["delay", "1", "--repeat", "x"], "jobctl delay", "argument --repeat: expected a"),
        ],
    )
    def test_usage_errors_are_one_line_and_a_hint(
        self, args: list[str], prog: str, message: str
    ) -> None:
        result = run_jobctl("/nonexistent", *args)
        assert result.returncode == 2
        error, hint = result.stderr.splitlines()
        assert error.startswith(f"{prog}: {message}")
        assert hint == f"Try '{prog} --help' for more information."

    def test_bare_jobctl_shows_the_help(self) -> None:
        result = run_jobctl(None)
        assert result.returncode == 2
        assert result.stderr.startswith("usage: jobctl") and "change-priority" in result.stderr

    def test_version(self) -> None:
        from jobqueue import __version__

        result = run_jobctl(None, "--version")
        assert (result.returncode, result.stdout) == (0, f"jobctl {__version__}\n")

    def test_help_everywhere(self) -> None:
        result = run_jobctl(None, "--help")
        assert result.returncode == 0
        assert "change-priority" in result.stdout and "Exit status" in result.stdout
        result = run_jobctl(None, "fanout", "--help")
        assert result.returncode == 0 and "--items-file" in result.stdout

    def test_console_script(self) -> None:
        script = os.path.join(os.path.dirname(sys.executable), "jobctl")
        if not os.path.exists(script):
            pytest.skip("the jobctl console script is not installed")
        import subprocess

        result = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
        assert result.returncode == 0 and "usage: jobctl" in result.stdout


class TestSubmit:
    def test_one_job_from_a_file_with_options(self, luxi: FakeLuxi, short_dir: str) -> None:
        path = os.path.join(short_dir, "job.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump([DELAY, {"OP_ID": "OP_TEST_DELAY", "duration": 2}], handle)
        luxi.answers["SubmitJob"] = 17
        result = run_jobctl(
            luxi.path,
            "submit",
            path,
            "--priority",
            "low",
            "--depends",
            "3:success,error",
            "--depends",
            "4",
            "--comment",
            "nightly",
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "17\n", "")
        extra = {
            "priority": 10,
            "depends": [[3, ["success", "error"]], [4, []]],
            "comment": "nightly",
        }
        assert luxi.args_of("SubmitJob") == [
            [[{**DELAY, **extra}, {"OP_ID": "OP_TEST_DELAY", "duration": 2, **extra}]]
        ]

    def test_many_jobs_from_stdin(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitManyJobs"] = [[True, 18], [False, "Job queue is full"], [True, 20]]
        jobs = [[DELAY], [DELAY], [DELAY]]
        result = run_jobctl(luxi.path, "submit", "-", "--depends=-1", stdin=json.dumps(jobs))
        assert result.returncode == 1
        assert result.stdout == "18\n20\n"
        assert result.stderr == "Failed to submit job 2: Job queue is full\n"
        sent = luxi.args_of("SubmitManyJobs")[0][0]
        assert sent == [[{**DELAY, "depends": [[-1, []]]}]] * 3

    def test_bad_job_files(self, luxi: FakeLuxi, short_dir: str) -> None:
        result = run_jobctl(luxi.path, "submit", "-", stdin="[{")
        assert result.returncode == 1
        assert result.stderr.startswith("Invalid job file -: Not valid JSON")
        missing = os.path.join(short_dir, "nope.json")
        result = run_jobctl(luxi.path, "submit", missing)
        assert (result.returncode, result.stderr) == (
            1,
            f"Cannot read {missing}: No such file or directory\n",
        )
        assert luxi.calls == []

    def test_run_builds_the_opcode(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 5
        result = run_jobctl(
            luxi.path,
            "run",
            "--lock",
            "db",
            "--shared-lock",
            "net",
            "--shared-lock",
            "dns",
            "--timeout",
            "30",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--cwd",
            "/srv",
            "--priority",
            "high",
            "--",
            "backup",
            "--full",
            "-v",
        )
        assert (result.returncode, result.stdout) == (0, "5\n")
        assert luxi.args_of("SubmitJob") == [
            [
                [
                    {
                        "OP_ID": "OP_COMMAND_RUN",
                        "argv": ["backup", "--full", "-v"],
                        "locks": ["db"],
                        "shared_locks": ["net", "dns"],
                        "timeout": 30.0,
                        "env": {"A": "1", "B": "x=y"},
                        "cwd": "/srv",
                        "priority": -10,
                    }
                ]
            ]
        ]

    def test_run_defaults(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 6
        assert run_jobctl(luxi.path, "run", "true").returncode == 0
        assert luxi.args_of("SubmitJob")[0][0] == [
            {
                "OP_ID": "OP_COMMAND_RUN",
                "argv": ["true"],
                "locks": [],
                "shared_locks": [],
                "timeout": None,
                "env": {},
                "cwd": REPO_ROOT,  # the caller's directory
            }
        ]

    def test_fanout_from_items_file(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 7
        result = run_jobctl(
            luxi.path,
            "fanout",
            "--items-file",
            "-",
            "--lock",
            "host:{item}",
            "--then-run",
            "notify 'all hosts'",
            "--",
            "ssh",
            "{item}",
            "uptime",
            stdin="web1\n# spare\n\nweb2\n",
        )
        assert (result.returncode, result.stdout) == (0, "7\n")
        opcode = luxi.args_of("SubmitJob")[0][0][0]
        assert opcode == {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": ["ssh", "{item}", "uptime"],
            "items": ["web1", "web2"],
            "locks": ["host:{item}"],
            "cwd": REPO_ROOT,
            "then": [
                {
                    "OP_ID": "OP_COMMAND_RUN",
                    "argv": ["notify", "all hosts"],
                    "locks": [],
                    "shared_locks": [],
                    "timeout": None,
                    "env": {},
                    "cwd": REPO_ROOT,
                }
            ],
        }

    def test_fanout_items_on_the_command_line(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 8
        result = run_jobctl(
            luxi.path, "fanout", "--item", "a", "b", "--item", "c", "--", "x", "{item}"
        )
        assert result.returncode == 0
        opcode = luxi.args_of("SubmitJob")[0][0][0]
        assert (opcode["items"], "then" in opcode) == (["a", "b", "c"], False)

    def test_delay_and_watch(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 9
        JobTable([job(9, "success", ["OP_TEST_DELAY(0.5)"], opresult=[None])]).install(luxi)
        luxi.answers["WaitForJobChange"] = in_order(
            [["running"], [[1, [T0, 0], "message", "Test delay iteration 1/2"]]],
            "nochange",
            [["success"], [[2, [T0 + 1, 0], "message", "Test delay iteration 2/2"]]],
        )
        result = run_jobctl(luxi.path, "delay", "0.5", "--repeat", "1", "--watch")
        assert luxi.args_of("SubmitJob")[0][0] == [
            {"OP_ID": "OP_TEST_DELAY", "duration": 0.5, "repeat": 1}
        ]
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "9",
            "Output from job 9 follows",
            "-------------------------",
            "2023-11-14 22:13:20 Test delay iteration 1/2",
            "2023-11-14 22:13:21 Test delay iteration 2/2",
        ]
        prev_serials = [args[3] for args in luxi.args_of("WaitForJobChange")]
        assert prev_serials == [None, 1, 1]
        # Looked for jobs it submitted, found none.
        assert luxi.args_of("QueryJobs") == [[[9], ["id", "opresult"]]]

    def fanout_daemon(self, luxi: FakeLuxi) -> JobTable:
        """Job 9 is a fan-out that submitted jobs 10 (succeeds) and 11 (fails)."""
        luxi.answers["SubmitJob"] = 9
        table = JobTable(
            [
                job(
                    9,
                    "success",
                    ["COMMAND_FANOUT(x x2)"],
                    opresult=[{"jobs": [[True, 10], [True, 11]]}],
                ),
                job(10, "running", ["COMMAND_RUN(x)"], opresult=[None]),
                job(11, "queued", ["COMMAND_RUN(x)"], opstatus=["queued"], opresult=[None]),
            ]
        )
        table.install(luxi)

        def change(job_id: int, *args: Any) -> Any:
            if job_id == 9:
                return [["success"], [[1, [T0, 0], "message", "Submitted 2 jobs"]]]
            table.live[10]["status"] = "success"
            table.live[11].update(
                status="error", opstatus=["error"], opresult=[["OpExecError", ["boom"]]]
            )
            return [[table.live[job_id]["status"]], []]

        luxi.answers["WaitForJobChange"] = change
        return table

    def test_fanout_watch_waits_for_the_jobs_it_submitted(self, luxi: FakeLuxi) -> None:
        self.fanout_daemon(luxi)
        result = run_jobctl(luxi.path, "fanout", "--item", "a", "b", "--watch", "--", "x", "{item}")
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "9",
            "Output from job 9 follows",
            "-------------------------",
            "2023-11-14 22:13:20 Submitted 2 jobs",
            "Job 9 submitted 2 jobs (10, 11); waiting for them",
        ]
        assert result.stderr == "Job 11 (submitted by job 9) failed: boom\n"
        assert [args[0] for args in luxi.args_of("WaitForJobChange")] == [9, 10]

    def test_no_children_waits_for_the_job_alone(self, luxi: FakeLuxi) -> None:
        self.fanout_daemon(luxi)
        result = run_jobctl(
            luxi.path, "fanout", "--item", "a", "--watch", "--no-children", "--", "x"
        )
        assert (result.returncode, result.stderr) == (0, "")
        assert [args[0] for args in luxi.args_of("WaitForJobChange")] == [9]
        assert "opresult" not in str(luxi.args_of("QueryJobs"))

    def test_retry(self, fake_daemon: FakeLuxi) -> None:
        fake_daemon.answers["SubmitJob"] = 40
        dep = {**DELAY, "depends": [[1, []]], "comment": "first"}
        JobTable([*JOBS, job(30, "error", ["x"], ops=[dep])]).install(fake_daemon)
        result = run_jobctl(fake_daemon.path, "retry", "30")
        assert (result.returncode, result.stdout) == (0, "40\n")
        assert fake_daemon.args_of("QueryJobs") == [[[30], ["ops", "status"]]]
        assert fake_daemon.args_of("SubmitJob") == [[[{**DELAY, "comment": "Retry of job 30"}]]]

    def test_retry_refuses_unfinished_and_unknown_jobs(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "retry", "2")
        assert result.returncode == 1
        assert result.stderr == (
            "Job 2 has not finished (status running); only finished jobs can be retried\n"
        )
        result = run_jobctl(fake_daemon.path, "retry", "99")
        assert (result.returncode, result.stderr) == (7, "Job 99 not found\n")
        assert "SubmitJob" not in fake_daemon.methods()
