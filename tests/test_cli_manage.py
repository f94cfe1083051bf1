"""``watch``, ``wait``, ``cancel``, ``change-priority``, ``archive``, ``autoarchive``
and ``queue`` against a scripted daemon."""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any

import pytest

from jobqueue.cli.context import Context
from jobqueue.cli.main import main
from jobqueue.errors import OpPrereqError
from tests import fake_luxi as fake
from tests.cli_samples import JOBS, T0
from tests.fake_luxi import FakeLuxi, JobTable, in_order, run_jobctl

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir
PENDING_FILTER = ["|", ["=", "status", "queued"], ["=", "status", "waiting"]]


@pytest.fixture
def fake_daemon(luxi: FakeLuxi) -> FakeLuxi:
    JobTable(JOBS).install(luxi)
    return luxi


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def pending_daemon(luxi: FakeLuxi) -> JobTable:
    """Job 7 is queued (workers busy), then waits for lock db held by jobs 3 and 4,
    then for job 5, then runs and succeeds; each WaitForJobChange moves it on."""
    table = JobTable([{"id": 7, "status": "queued", "opresult": [None]}])
    table.install(luxi)
    job_query = luxi.answers["Query"]
    steps = [
        (["queued"], [], None),
        (["waiting"], [], [[[0, "db"], [0, "shared"], [0, [3, 4]], [0, [["exclusive", [7]]]]]]),
        (["waiting"], [], [[[0, "job/5"], [0, None], [0, None], [0, [["job", [7, 8]]]]]]),
        (["success"], [[1, [T0, 0], "stdout", "ran"]], []),
    ]
    locks: list[Any] = [[]]

    def change(job_id: int, fields: Any, prev: Any, serial: Any, timeout: float) -> Any:
        info, log, lock_rows = steps.pop(0) if len(steps) > 1 else steps[0]
        if lock_rows is not None:
            locks[0] = lock_rows
        table.live[7]["status"] = info[0]
        return [info, log]

    def query(what: str, fields: list[str], qfilter: Any, *rest: Any) -> Any:
        if what == "lock":
            return {"fields": [{"name": f, "kind": "other"} for f in fields], "data": locks[0]}
        return job_query(what, fields, qfilter, *rest)

    luxi.answers["WaitForJobChange"] = change
    luxi.answers["Query"] = query
    luxi.answers["QueryConfigValues"] = lambda fields: [2, 2]
    return table


#: ``queue info``'s values from a daemon older than ``busy_workers``.
OLDER_INFO: dict[str, Any] = {
    "drain_flag": False,
    "version": "0.0.9",
    "live_jobs": 0,
    "max_jobs": 50,
    "max_running_jobs": 4,
    "filters": 0,
    "held_jobs": {"paused": 0, "rate_limited": 0, "scheduled": 0},
    "role": "master",
    "master": "host1 pid 7",
}


def older_daemon(values: dict[str, Any]) -> Any:
    """QueryConfigValues of a daemon that knows the fields of ``values`` alone."""

    def answer(fields: list[str]) -> list[Any]:
        unknown = [name for name in fields if name not in values]
        if unknown:
            raise OpPrereqError(f"Unknown config fields: {', '.join(unknown)}")
        return [values[name] for name in fields]

    return answer


def failed_job(job_id: int) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": "error",
        "opstatus": ["success", "error"],
        "opresult": [None, ["OpExecError", ["exit status 3"]]],
    }


class TestWatch:
    def test_success(self, luxi: FakeLuxi) -> None:
        JobTable([{"id": 12, "status": "success", "opresult": [None]}]).install(luxi)
        luxi.answers["WaitForJobChange"] = in_order(
            [["running"], [[4, [T0, 0], "stdout", "line\twith tab"]]],
            [["success"], []],
        )
        result = run_jobctl(luxi.path, "watch", "12")
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.splitlines() == [
            "Output from job 12 follows",
            "--------------------------",
            "2023-11-14 22:13:20 line\\twith tab",
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

    def test_shows_what_a_pending_job_waits_for(self, luxi: FakeLuxi) -> None:
        table = pending_daemon(luxi)
        result = run_jobctl(luxi.path, "watch", "7")
        assert (result.returncode, result.stderr) == (0, "")
        header, dashes, *lines = result.stdout.splitlines()
        assert header == "Output from job 7 follows" and set(dashes) == {"-"}
        # Not a terminal: a timestamped line each time the reason changes.
        assert [line[20:] for line in lines] == [
            "Queued, waiting for a free worker (2 of 2 busy)",
            "Waiting for lock db (exclusive), held shared by jobs 3, 4",
            "Waiting for job 5 to end",
            "ran",
        ]
        assert luxi.args_of("QueryConfigValues") == [[["workers", "busy_workers"]]]
        assert table.live[7]["status"] == "success"

    def test_a_daemon_without_busy_workers_shows_no_worker_line(self, luxi: FakeLuxi) -> None:
        pending_daemon(luxi)
        luxi.answers["QueryConfigValues"] = older_daemon({"workers": 2})
        result = run_jobctl(luxi.path, "watch", "7")
        assert (result.returncode, result.stderr) == (0, "")
        lines = [line[20:] for line in result.stdout.splitlines()[2:]]
        assert lines[0] == "Waiting for lock db (exclusive), held shared by jobs 3, 4"

    def test_json_events(self, luxi: FakeLuxi) -> None:
        pending_daemon(luxi)
        result = run_jobctl(luxi.path, "watch", "7", "--output", "json")
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert [event["event"] for event in events] == ["status", "status", "status", "log", "end"]
        assert events[1]["waiting_for"] == [
            {"kind": "lock", "lock": "db", "mode": "exclusive", "held": "shared", "owners": [3, 4]}
        ]
        assert events[3] == {
            "job": 7,
            "event": "log",
            "time": "2023-11-14T22:13:20.000000Z",
            "serial": 1,
            "type": "stdout",
            "message": "ran",
        }
        assert events[4] == {"job": 7, "event": "end", "status": "success", "error": None}

    def test_updates_the_state_in_place_on_a_terminal(self, luxi: FakeLuxi) -> None:
        pending_daemon(luxi)
        out = Tty()
        context = Context(luxi.path, stdout=out, stderr=io.StringIO())
        with_env = {"COLUMNS": "40"}
        old = {key: os.environ.get(key) for key in with_env}
        os.environ.update(with_env)
        try:
            assert main(["watch", "7"], context=context) == 0
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key)
                else:
                    os.environ[key] = value
        text = out.getvalue()
        assert "\r\x1b[KQueued, waiting for a free worker (2...\r" in text
        assert "\r\x1b[KWaiting for job 5 to end" in text
        assert "\r\x1b[KWaiting for lock db (exclusive), hel...\r" in text  # 39 columns
        assert text.endswith("\r\x1b[K2023-11-14 22:13:20 ran\n")

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

    def children_daemon(self, luxi: FakeLuxi) -> JobTable:
        """Job 20 submitted 21 and 22; 22 submitted 23, which fails."""
        table = JobTable(
            [
                {"id": 20, "status": "running", "opresult": [None]},
                {"id": 21, "status": "success", "opresult": [None]},
                {"id": 22, "status": "running", "opresult": [None]},
                failed_job(23),
            ]
        )
        table.live[23]["status"] = "running"
        table.install(luxi)

        def ends(job_id: int, *args: Any) -> list[Any]:
            if job_id == 20:
                table.live[20].update(
                    status="success",
                    opresult=[{"jobs": [[True, 21], [True, 22], [False, "refused"]]}],
                )
            elif job_id == 22:
                table.live[22].update(status="success", opresult=[{"jobs": [[True, 23]]}])
            else:
                table.live[23]["status"] = "error"
            return [[table.live[job_id]["status"]], []]

        luxi.answers["WaitForJobChange"] = ends
        return table

    def test_waits_for_the_jobs_a_job_submitted(self, luxi: FakeLuxi) -> None:
        self.children_daemon(luxi)
        result = run_jobctl(luxi.path, "wait", "20")
        assert result.returncode == 1
        assert result.stderr == (
            "Job 23 (submitted by job 22) failed: partial failure (opcode 1): exit status 3\n"
        )
        assert [args[0] for args in luxi.args_of("WaitForJobChange")] == [20, 22, 23]

    def test_no_children_and_json(self, luxi: FakeLuxi) -> None:
        self.children_daemon(luxi)
        result = run_jobctl(luxi.path, "wait", "20", "--no-children", "--output", "json")
        assert result.returncode == 0
        assert json.loads(result.stdout) == [
            {"id": 20, "status": "success", "submitted_by": None, "error": None}
        ]
        result = run_jobctl(luxi.path, "wait", "20", "--output", "json")
        assert [(job["id"], job["submitted_by"]) for job in json.loads(result.stdout)] == [
            (20, None),
            (21, 20),
            (22, 20),
            (23, 22),
        ]

    def test_progress_line_counts_the_submitted_jobs(self, luxi: FakeLuxi) -> None:
        self.children_daemon(luxi)
        err = Tty()
        context = Context(luxi.path, stdout=io.StringIO(), stderr=err)
        assert main(["wait", "20"], context=context) == 1
        lines = err.getvalue().replace("\x1b[K", "").split("\r")
        assert "0/1 finished, 0 failed" in lines
        assert "2/3 finished, 0 failed (2 submitted by the jobs)" in lines
        assert "4/4 finished, 1 failed (3 submitted by the jobs)\nJob 23 (submitted by job 22)" in (
            err.getvalue().replace("\x1b[K", "")
        )


class TestCancel:
    def test_ids(self, luxi: FakeLuxi) -> None:
        JobTable([{"id": 1, "status": "queued"}, {"id": 3, "status": "running"}]).install(luxi)
        luxi.answers["CancelJob"] = in_order(
            [True, "Job 1 canceled"], [True, "Job 3 will be killed"]
        )
        result = run_jobctl(luxi.path, "cancel", "1", "2", "3", "--kill")
        assert result.returncode == 7  # the unknown id decides the exit status
        assert result.stdout == "Job 1 canceled\nJob 3 will be killed\n"
        assert result.stderr == "Job 2 not found\n"
        assert luxi.args_of("CancelJob") == [[1, True], [3, True]]

    def test_running_job_names_kill(self, luxi: FakeLuxi) -> None:
        JobTable([{"id": 3, "status": "running"}]).install(luxi)
        luxi.answers["CancelJob"] = [False, "Job 3 is running; cancel it with kill to stop it"]
        result = run_jobctl(luxi.path, "cancel", "3")
        assert (result.returncode, result.stderr) == (
            1,
            "Job 3 is running; 'jobctl cancel --kill 3' stops it\n",
        )

    def test_only_unknown_ids(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "cancel", "99")
        assert (result.returncode, result.stdout, result.stderr) == (7, "", "Job 99 not found\n")
        assert "CancelJob" not in fake_daemon.methods()

    def test_pending_asks_first(self, fake_daemon: FakeLuxi) -> None:
        fake_daemon.answers["CancelJob"] = lambda job_id, kill: [True, f"Job {job_id} canceled"]
        result = run_jobctl(fake_daemon.path, "cancel", "--pending", stdin="n\n")
        assert result.returncode == 13
        assert result.stderr == (
            "  12 OP_TEST_DELAY(5),OP_TEST_DELAY(1)\nCancel 1 job? [y/N] Not canceling any job\n"
        )
        assert "CancelJob" not in fake_daemon.methods()
        assert fake_daemon.args_of("Query")[0] == [
            "job",
            ["id", "status", "summary"],
            PENDING_FILTER,
        ]
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
            [True, "Priority of job 2 changed"], [False, "Job 12 is not pending"]
        )
        result = run_jobctl(fake_daemon.path, "change-priority", "--priority", "high", "2")
        assert (result.returncode, result.stdout) == (0, "Priority of job 2 changed\n")
        result = run_jobctl(fake_daemon.path, "change-priority", "--priority", "low", "--pending")
        assert (result.returncode, result.stderr) == (1, "Job 12 is not pending\n")
        assert fake_daemon.args_of("ChangeJobPriority") == [[2, -10], [12, 10]]
        result = run_jobctl(fake_daemon.path, "change-priority", "--priority", "low", "4")
        assert (result.returncode, result.stderr) == (7, "Job 4 not found\n")


class TestArchive:
    def test_archive(self, luxi: FakeLuxi) -> None:
        table = JobTable(
            [{"id": 1, "status": "success"}, {"id": 2, "status": "running"}],
            [{"id": 3, "status": "error"}],
        )
        table.install(luxi)
        luxi.answers["ArchiveJob"] = lambda job_id: job_id == 1
        result = run_jobctl(luxi.path, "archive", "1", "2", "3", "4")
        assert result.returncode == 7
        assert result.stderr.splitlines() == [
            "Job 4 not found",
            "Job 2 has not finished (status running), so it cannot be archived yet;"
            " wait for it ('jobctl wait 2') or stop it ('jobctl cancel --kill 2')",
            "Job 3 is already archived",
        ]
        assert luxi.args_of("ArchiveJob") == [[1], [3]]  # not the running job
        # "Is 3 live?" is asked with a filter that does not reach the archive.
        assert luxi.args_of("Query") == [["job", ["id"], ["&", ["=", "id", 3]]]]
        result = run_jobctl(luxi.path, "archive", "2")
        assert result.returncode == 1

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
        result = run_jobctl(luxi.path, "autoarchive", "all", "--output", "json")
        assert json.loads(result.stdout) == {"archived": 0, "unchecked": 5}


class TestQueue:
    def test_info_drain_undrain(self, luxi: FakeLuxi) -> None:
        drained = threading.Event()

        def set_flag(flag: bool) -> bool:
            (drained.set if flag else drained.clear)()
            return True

        luxi.answers["SetDrainFlag"] = set_flag
        values = {
            "version": "0.1.0",
            "live_jobs": 3,
            "max_jobs": 50,
            "live_opcodes": 7,
            "max_opcodes": 500000,
            "live_opcode_bytes": 420,
            "max_opcode_bytes": 268435456,
            "max_running_jobs": 25,
            "busy_workers": 3,
            "filters": 0,
            "held_jobs": {"paused": 0, "rate_limited": 0, "scheduled": 0},
            "role": "master",
            "master": "host1 pid 7",
        }
        luxi.answers["QueryConfigValues"] = lambda fields: [
            drained.is_set() if name == "drain_flag" else values[name] for name in fields
        ]
        luxi.answers["Query"] = lambda what, fields, qfilter: {"fields": [], "data": []}
        assert run_jobctl(luxi.path, "queue", "info").stdout == (
            "The drain flag is unset\nPaused: no\nDaemon version: 0.1.0\nLive jobs: 3\n"
            "Most live jobs allowed: 50\nLive opcodes: 7\nMost live opcodes allowed: 500000\n"
            "Bytes of their inputs: 420\nMost input bytes allowed: 268435456\n"
            "Workers: 25 (3 busy)\nFilter rules: 0\n"
            "This daemon: master\n"
            "Master: host1 pid 7\n"
        )
        result = run_jobctl(luxi.path, "queue", "info", "--output", "json")
        assert json.loads(result.stdout) == {
            "drain_flag": False,
            "paused_by": [],
            **values,
        }
        result = run_jobctl(luxi.path, "queue", "drain")
        assert (result.returncode, result.stdout) == (0, "")
        assert run_jobctl(luxi.path, "queue", "info").stdout.startswith("The drain flag is set\n")
        run_jobctl(luxi.path, "queue", "undrain")
        assert luxi.args_of("SetDrainFlag") == [[True], [False]]
        assert luxi.args_of("QueryConfigValues")[0] == [
            [
                "drain_flag",
                "version",
                "live_jobs",
                "max_jobs",
                "live_opcodes",
                "max_opcodes",
                "live_opcode_bytes",
                "max_opcode_bytes",
                "max_running_jobs",
                "busy_workers",
                "filters",
                "held_jobs",
                "role",
                "master",
            ]
        ]

    def test_info_from_a_daemon_without_the_opcode_counts_keeps_its_busy_workers(
        self, luxi: FakeLuxi
    ) -> None:
        luxi.answers["QueryConfigValues"] = older_daemon({**OLDER_INFO, "busy_workers": 3})
        luxi.answers["Query"] = lambda what, fields, qfilter: {"fields": [], "data": []}
        result = run_jobctl(luxi.path, "queue", "info")
        assert (result.returncode, result.stderr) == (0, "")
        assert "Workers: 4 (3 busy)\n" in result.stdout and "opcodes" not in result.stdout
        assert len(luxi.args_of("QueryConfigValues")) == 2  # asked again without the newest

    def test_info_from_a_daemon_without_busy_workers(self, luxi: FakeLuxi) -> None:
        luxi.answers["QueryConfigValues"] = older_daemon(OLDER_INFO)
        luxi.answers["Query"] = lambda what, fields, qfilter: {"fields": [], "data": []}
        result = run_jobctl(luxi.path, "queue", "info")
        assert (result.returncode, result.stderr) == (0, "")
        assert "Workers: 4\n" in result.stdout
        for label in ("Live opcodes", "Most live opcodes", "Bytes of their inputs", "input bytes"):
            assert label not in result.stdout
        result = run_jobctl(luxi.path, "queue", "info", "--output", "json")
        answer = json.loads(result.stdout)
        assert answer["busy_workers"] is None and answer["max_opcodes"] is None
        assert answer["max_opcode_bytes"] is None


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
        assert err.endswith("Cancel 1 job? [y/N] ")

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
