"""``watch``, ``wait``, ``cancel``, ``change-priority``, ``archive``, ``autoarchive``
and ``queue`` against a scripted daemon."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from jobqueue.cli.context import Context
from jobqueue.cli.main import main
from tests import test_cli_fakeluxi as fake
from tests.test_cli_commands import JOBS, T0
from tests.test_cli_fakeluxi import FakeLuxi, JobTable, in_order, run_jobctl

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir
PENDING_FILTER = ["|", ["=", "status", "queued"], ["=", "status", "waiting"]]


@pytest.fixture
def fake_daemon(luxi: FakeLuxi) -> FakeLuxi:
    JobTable(JOBS).install(luxi)
    return luxi


def failed_job(job_id: int) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": "error",
        "opstatus": ["success", "error"],
        "opresult": [None, ["OpExecError", ["exit status 3"]]],
    }


class TestWatch:
    def test_success(self, luxi: FakeLuxi) -> None:
        luxi.answers["WaitForJobChange"] = in_order(
            [["running"], [[4, [T0, 0], "stdout", "line\twith tab"]]],
            [["success"], []],
        )
        result = run_jobctl(luxi.path, "watch", "12")
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.splitlines() == [
            "Output from job 12 follows",
            "--------------------------",
            "Tue Nov 14 22:13:20 2023 line\\twith tab",
        ]
        assert luxi.args_of("WaitForJobChange")[0][:4] == [12, ["status"], None, None]

    def test_error(self, luxi: FakeLuxi) -> None:
        JobTable([failed_job(5)]).install(luxi)
        luxi.answers["WaitForJobChange"] = [["error"], []]
        result = run_jobctl(luxi.path, "watch", "5")
        assert result.returncode == 1
        assert result.stderr == "Job 5 failed: partial failure (opcode 1): exit status 3\n"

    def test_canceled(self, luxi: FakeLuxi) -> None:
        JobTable([{"id": 6, "status": "canceled"}]).install(luxi)
        luxi.answers["WaitForJobChange"] = in_order([["canceling"], []], [["canceled"], []])
        result = run_jobctl(luxi.path, "watch", "6")
        assert (result.returncode, result.stderr) == (1, "Job 6 failed: Job was canceled\n")

    def test_not_found_and_lost(self, fake_daemon: FakeLuxi) -> None:
        fake_daemon.answers["WaitForJobChange"] = None
        result = run_jobctl(fake_daemon.path, "watch", "99")
        assert (result.returncode, result.stdout, result.stderr) == (7, "", "Job 99 not found\n")
        result = run_jobctl(fake_daemon.path, "watch", "2")
        assert (result.returncode, result.stderr) == (1, "Job 2 failed: Job lost\n")


class TestWait:
    def test_waits_for_all_and_reports_failures(self, luxi: FakeLuxi) -> None:
        table = JobTable(
            [{"id": 1, "status": "running"}, {"id": 2, "status": "success"}, failed_job(3)]
        )
        table.live[3]["status"] = "queued"
        table.install(luxi)

        def job_ends(job_id: int, *args: Any) -> list[Any]:
            table.live[job_id]["status"] = {1: "success", 3: "error"}[job_id]
            if job_id == 1:  # job 3 fails while we wait for job 1
                table.live[3]["status"] = "error"
            return [[table.live[job_id]["status"]], []]

        luxi.answers["WaitForJobChange"] = job_ends
        result = run_jobctl(luxi.path, "wait", "1", "2", "3")
        assert result.returncode == 1
        assert result.stderr == "Job 3 failed: partial failure (opcode 1): exit status 3\n"
        assert result.stdout == ""
        assert [args[0] for args in luxi.args_of("WaitForJobChange")] == [1]

    def test_all_succeeded(self, fake_daemon: FakeLuxi) -> None:
        assert run_jobctl(fake_daemon.path, "wait", "1").returncode == 0

    def test_unknown_job(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "wait", "1", "98", "99")
        assert (result.returncode, result.stderr) == (7, "Job 98 not found\nJob 99 not found\n")


class TestCancel:
    def test_ids(self, luxi: FakeLuxi) -> None:
        luxi.answers["CancelJob"] = in_order(
            [True, "Job 1 canceled"], [False, "Job 2 not found"], [True, "Job 3 will be canceled"]
        )
        result = run_jobctl(luxi.path, "cancel", "1", "2", "3", "--kill")
        assert result.returncode == 1
        assert result.stdout == "Job 1 canceled\nJob 3 will be canceled\n"
        assert result.stderr == "Job 2 not found\n"
        assert luxi.args_of("CancelJob") == [[1, True], [2, True], [3, True]]

    def test_pending_asks_first(self, fake_daemon: FakeLuxi) -> None:
        fake_daemon.answers["CancelJob"] = lambda job_id, kill: [True, f"Job {job_id} canceled"]
        result = run_jobctl(fake_daemon.path, "cancel", "--pending", stdin="n\n")
        assert result.returncode == 13
        assert result.stderr == (
            "  12 OP_TEST_DELAY(5),OP_TEST_DELAY(1)\nCancel 1 jobs? [y/N] Not canceling any job\n"
        )
        assert "CancelJob" not in fake_daemon.methods()
        assert fake_daemon.args_of("Query")[0] == ["job", ["id", "summary"], PENDING_FILTER]
        result = run_jobctl(fake_daemon.path, "cancel", "--pending", stdin="y\n")
        assert (result.returncode, result.stdout) == (0, "Job 12 canceled\n")
        assert fake_daemon.args_of("CancelJob") == [[12, False]]

    def test_force_and_end_of_input(self, fake_daemon: FakeLuxi) -> None:
        fake_daemon.answers["CancelJob"] = [True, "Job 12 canceled"]
        assert run_jobctl(fake_daemon.path, "cancel", "--queued").returncode == 13
        result = run_jobctl(fake_daemon.path, "cancel", "--queued", "--force")
        assert (result.returncode, result.stdout, result.stderr) == (0, "Job 12 canceled\n", "")

    def test_nothing_selected(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "cancel", "--waiting")
        assert (result.returncode, result.stdout) == (0, "No jobs to cancel\n")
        result = run_jobctl(fake_daemon.path, "cancel")
        assert result.returncode == 2 and "No jobs selected" in result.stderr
        result = run_jobctl(fake_daemon.path, "cancel", "4", "--pending")
        assert result.returncode == 2


class TestChangePriority:
    def test_ids_and_bulk(self, fake_daemon: FakeLuxi) -> None:
        fake_daemon.answers["ChangeJobPriority"] = in_order(
            [True, "Priority of job 4 changed"], [False, "Job 12 is not pending"]
        )
        result = run_jobctl(fake_daemon.path, "change-priority", "--priority", "high", "4")
        assert (result.returncode, result.stdout) == (0, "Priority of job 4 changed\n")
        result = run_jobctl(fake_daemon.path, "change-priority", "--priority", "low", "--pending")
        assert (result.returncode, result.stderr) == (1, "Job 12 is not pending\n")
        assert fake_daemon.args_of("ChangeJobPriority") == [[4, -10], [12, 10]]


class TestArchive:
    def test_archive(self, luxi: FakeLuxi) -> None:
        luxi.answers["ArchiveJob"] = lambda job_id: job_id != 2
        result = run_jobctl(luxi.path, "archive", "1", "2", "3")
        assert (result.returncode, result.stderr) == (1, "Failed to archive job with ID '2'\n")
        assert luxi.args_of("ArchiveJob") == [[1], [2], [3]]
        assert run_jobctl(luxi.path, "archive", "1").returncode == 0

    def test_autoarchive_loops_until_nothing_is_left(self, luxi: FakeLuxi) -> None:
        luxi.answers["AutoArchiveJobs"] = in_order([10, 7], [4, 2], [1, 0])
        result = run_jobctl(luxi.path, "autoarchive", "2d")
        assert (result.returncode, result.stdout) == (0, "Archived 15 jobs, 0 unchecked left\n")
        assert luxi.args_of("AutoArchiveJobs") == [[172800, 30]] * 3

    def test_autoarchive_all_and_stalled(self, luxi: FakeLuxi) -> None:
        luxi.answers["AutoArchiveJobs"] = in_order([0, 5], [0, 5])
        result = run_jobctl(luxi.path, "autoarchive", "all")
        assert result.stdout == "Archived 0 jobs, 5 unchecked left\n"
        assert luxi.args_of("AutoArchiveJobs") == [[-1, 30], [-1, 30]]


class TestQueue:
    def test_info_drain_undrain(self, luxi: FakeLuxi) -> None:
        drained = threading.Event()

        def set_flag(flag: bool) -> bool:
            (drained.set if flag else drained.clear)()
            return True

        luxi.answers["SetDrainFlag"] = set_flag
        luxi.answers["QueryConfigValues"] = lambda fields: [drained.is_set(), "0.1.0"]
        assert run_jobctl(luxi.path, "queue", "info").stdout == (
            "The drain flag is unset\nDaemon version: 0.1.0\n"
        )
        result = run_jobctl(luxi.path, "queue", "drain")
        assert (result.returncode, result.stdout) == (0, "")
        assert run_jobctl(luxi.path, "queue", "info").stdout.startswith("The drain flag is set\n")
        run_jobctl(luxi.path, "queue", "undrain")
        assert luxi.args_of("SetDrainFlag") == [[True], [False]]
        assert luxi.args_of("QueryConfigValues")[0] == [["drain_flag", "version"]]


class TestInProcess:
    """``main`` called directly with a Context: the same code, no subprocess."""

    def run(self, luxi: FakeLuxi, *args: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        context = Context(luxi.path, stdin=io.StringIO(stdin), stdout=out, stderr=err)
        code = main(list(args), context=context)
        return code, out.getvalue(), err.getvalue()

    def test_list_and_cancel(self, fake_daemon: FakeLuxi) -> None:
        code, out, _ = self.run(fake_daemon, "list", "--running", "--no-headers", "-o", "id")
        assert (code, out) == (0, "2\n")
        fake_daemon.answers["CancelJob"] = [True, "Job 12 canceled"]
        code, out, err = self.run(fake_daemon, "cancel", "--pending", stdin="yes\n")
        assert (code, out) == (0, "Job 12 canceled\n")
        assert err.endswith("Cancel 1 jobs? [y/N] ")

    def test_interrupt(self) -> None:
        err = io.StringIO()
        context = Context(
            "/unused",
            client_factory=lambda path: _Interrupting(),  # type: ignore[arg-type,return-value]
            stdout=io.StringIO(),
            stderr=err,
        )
        assert main(["queue", "info"], context=context) == 130
        assert err.getvalue() == "Interrupted\n"


class _Interrupting:
    def query_config_values(self, fields: list[str]) -> list[Any]:
        raise KeyboardInterrupt

    def close(self) -> None:
        pass
