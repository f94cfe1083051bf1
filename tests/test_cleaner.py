"""``jobqueue-cleaner``: archive via the daemon when it runs, prune the archive always."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from jobqueue import cleaner, errors
from tests import fake_luxi as fake
from tests.fake_luxi import REPO_ROOT, FakeLuxi, in_order

luxi = fake.luxi  # fixtures shared with the CLI tests
short_dir = fake.short_dir
DAY = 86400
NOW = time.time()


def touch(path: str, age_days: float, content: str = "{}") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    stamp = NOW - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def tree(root: str) -> list[str]:
    """Every file and directory under ``root``, relative, sorted."""
    found = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


@pytest.fixture
def state(tmp_path: Any) -> str:
    """A state directory with archived jobs of various ages.

    archive/0: one old and one recent job; archive/1: only an old job;
    archive/2: empty; archive/3: an old non-job file; archive/4 and 5: old
    jobs, but 5 holds the newest id handed out (serial 50123) and 4 the one
    before, so both directories must stay; archive/7 holds an old job and
    the live job 70001 archives there next, so it stays too.
    """
    root = str(tmp_path / "state")
    queue = os.path.join(root, "queue")
    archive = os.path.join(queue, "archive")
    touch(os.path.join(archive, "0", "job-1"), 30)
    touch(os.path.join(archive, "0", "job-2"), 3)
    touch(os.path.join(archive, "1", "job-10001"), 22)
    os.makedirs(os.path.join(archive, "2"))
    touch(os.path.join(archive, "3", "notes"), 40)
    touch(os.path.join(archive, "4", "job-40000"), 25)
    touch(os.path.join(archive, "5", "job-50000"), 25)
    touch(os.path.join(archive, "7", "job-70000"), 25)
    touch(os.path.join(queue, "job-70001"), 0)
    touch(os.path.join(queue, "serial"), 0, "50123\n")
    return root


def read_log(root: str) -> list[str]:
    with open(os.path.join(root, "log", "jobqueue-cleaner.log"), encoding="utf-8") as handle:
        return handle.read().splitlines()


class TestPruning:
    def test_daemon_down_prunes_only(self, state: str) -> None:
        assert cleaner.main(["--state-dir", state]) == 0
        assert tree(os.path.join(state, "queue", "archive")) == [
            "0",
            "0/job-2",
            "3",
            "3/notes",
            "4",
            "5",
            "7",
        ]
        (line,) = read_log(state)
        assert line[20:] == (
            "daemon not running; skipped archiving, pruned 5 archived jobs,"
            " removed 2 empty directories"
        )
        time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")

    def test_archive_age_and_one_line_per_run(self, state: str) -> None:
        assert cleaner.main(["--state-dir", state, "--archive-age", "4w"]) == 0
        assert cleaner.main(["--state-dir", state, "--archive-age", "4w"]) == 0
        first, second = (line[20:] for line in read_log(state))
        assert "pruned 1 archived jobs, removed 1 empty directories" in first
        assert "pruned 0 archived jobs, removed 0 empty directories" in second
        archive = os.path.join(state, "queue", "archive")
        assert not os.path.exists(os.path.join(archive, "0", "job-1"))
        assert os.path.exists(os.path.join(archive, "1", "job-10001"))

    def test_missing_state_dir_is_an_error(
        self, tmp_path: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        missing = tmp_path / "typo"
        log = str(tmp_path / "cleaner.log")
        assert cleaner.main(["--state-dir", str(missing), "--log-file", log]) == 2
        assert capsys.readouterr().err == f"jobqueue-cleaner: no state directory at {missing}\n"
        assert sorted(os.listdir(tmp_path)) == []  # nothing created, not even the log

    def test_log_file_in_a_missing_directory_is_not_created(
        self, state: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        log = tmp_path / "nonexistent" / "dir" / "x.log"
        assert cleaner.main(["--state-dir", state, "--log-file", str(log)]) == 1
        assert capsys.readouterr().err == (
            f"jobqueue-cleaner: cannot write {log}: No such file or directory\n"
        )
        assert not (tmp_path / "nonexistent").exists()

    def test_unwritable_log_is_a_failure(
        self, state: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cleaner.main(["--state-dir", state, "--log-file", str(tmp_path)]) == 1
        assert capsys.readouterr().err.startswith(f"jobqueue-cleaner: cannot write {tmp_path}")

    def test_bad_age_is_a_usage_error(self, state: str) -> None:
        with pytest.raises(SystemExit) as exc:
            cleaner.main(["--state-dir", state, "--archive-age", "soon"])
        assert exc.value.code == 2

    def test_pruning_goes_through_the_daemon_when_it_runs(self, state: str, luxi: FakeLuxi) -> None:
        before = tree(os.path.join(state, "queue", "archive"))
        luxi.answers["AutoArchiveJobs"] = [0, 0]
        luxi.answers["PruneArchive"] = in_order(
            {"jobs": 4, "directories": 1, "unfinished": True, "failures": []},
            {"jobs": 2, "directories": 0, "unfinished": False, "failures": ["cannot delete x"]},
        )
        assert cleaner.main(["--state-dir", state, "--socket", luxi.path]) == 1
        assert luxi.args_of("PruneArchive") == [[21 * DAY, cleaner.PRUNE_TIMEOUT]] * 2
        (line,) = read_log(state)
        assert line[20:] == (
            "archived 0 jobs, pruned 6 archived jobs, removed 1 empty directories;"
            " errors: cannot delete x"
        )
        assert tree(os.path.join(state, "queue", "archive")) == before  # the daemon's job


PRUNED_5 = {"jobs": 5, "directories": 2, "unfinished": False, "failures": []}


class TestArchiving:
    def test_loops_until_nothing_is_left(self, state: str, luxi: FakeLuxi) -> None:
        luxi.answers["PruneArchive"] = PRUNED_5
        luxi.answers["AutoArchiveJobs"] = in_order([5, 3], [2, 1], [0, 0])
        assert cleaner.main(["--state-dir", state, "--socket", luxi.path]) == 0
        assert luxi.args_of("AutoArchiveJobs") == [[6 * 3600, 30]] * 3
        assert read_log(state)[0][20:] == (
            "archived 7 jobs, pruned 5 archived jobs, removed 2 empty directories"
        )

    def test_job_age_all(self, state: str, luxi: FakeLuxi) -> None:
        luxi.answers["PruneArchive"] = PRUNED_5
        luxi.answers["AutoArchiveJobs"] = [0, 0]
        assert cleaner.main(["--state-dir", state, "--socket", luxi.path, "--job-age", "all"]) == 0
        assert luxi.args_of("AutoArchiveJobs") == [[-1, 30]]

    def test_refusal_is_a_failure_but_pruning_still_happens(
        self, state: str, luxi: FakeLuxi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        luxi.answers["PruneArchive"] = PRUNED_5

        def refuse(age: int, timeout: int) -> None:
            raise errors.AccessDenied("AutoArchiveJobs is not allowed on this socket")

        luxi.answers["AutoArchiveJobs"] = refuse
        assert cleaner.main(["--state-dir", state, "--socket", luxi.path]) == 1
        (line,) = read_log(state)
        assert line[20:].startswith("archiving failed, pruned 5 archived jobs")
        assert line.endswith(
            "errors: archiving failed: AutoArchiveJobs is not allowed on this socket"
        )
        assert capsys.readouterr().err == (
            "jobqueue-cleaner: archiving failed: AutoArchiveJobs is not allowed on this socket\n"
        )

    def test_as_a_program(self, state: str, luxi: FakeLuxi) -> None:
        luxi.answers["PruneArchive"] = PRUNED_5
        luxi.answers["AutoArchiveJobs"] = [1, 0]
        command = [sys.executable, "-m", "jobqueue.cleaner", "--state-dir", state]
        result = subprocess.run(
            [*command, "--socket", luxi.path, "--job-age", "90m"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert luxi.args_of("AutoArchiveJobs") == [[5400, 30]]
        assert read_log(state)[0][20:].startswith("archived 1 jobs, pruned 5")


class TestPause:
    """``SetWatcherPause``: a paused cleaner does nothing but say so in one log line."""

    def test_paused_through_the_daemon(self, state: str, luxi: FakeLuxi) -> None:
        until = time.time() + 3600
        luxi.answers["QueryConfigValues"] = [until]
        luxi.answers["PruneArchive"] = PRUNED_5
        luxi.answers["AutoArchiveJobs"] = [1, 0]
        assert cleaner.main(["--state-dir", state, "--socket", luxi.path]) == 0
        assert luxi.methods() == ["QueryConfigValues"]
        assert luxi.args_of("QueryConfigValues") == [[["watcher_pause"]]]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
        (line,) = read_log(state)
        assert line[20:] == f"paused until {stamp}; did nothing"

    def test_not_paused_runs_as_usual(self, state: str, luxi: FakeLuxi) -> None:
        luxi.answers["QueryConfigValues"] = [None]
        luxi.answers["PruneArchive"] = PRUNED_5
        luxi.answers["AutoArchiveJobs"] = [1, 0]
        assert cleaner.main(["--state-dir", state, "--socket", luxi.path]) == 0
        assert luxi.methods() == ["QueryConfigValues", "AutoArchiveJobs", "PruneArchive"]

    def test_paused_in_the_store_while_the_daemon_is_down(self, state: str) -> None:
        from jobqueue.storage.base import WATCHER_PAUSE
        from jobqueue.storage.files import FileJobStore

        before = tree(os.path.join(state, "queue", "archive"))
        store = FileJobStore(os.path.join(state, "queue"), owner=False)
        store.write_setting(WATCHER_PAUSE, str(int(time.time()) + 600))
        assert cleaner.main(["--state-dir", state]) == 0
        assert tree(os.path.join(state, "queue", "archive")) == before
        (line,) = read_log(state)
        assert line[20:].startswith("paused until ")

    def test_an_expired_pause_is_no_pause(self, state: str) -> None:
        from jobqueue.storage.base import WATCHER_PAUSE
        from jobqueue.storage.files import FileJobStore

        store = FileJobStore(os.path.join(state, "queue"), owner=False)
        store.write_setting(WATCHER_PAUSE, str(int(time.time()) - 1))
        assert cleaner.main(["--state-dir", state]) == 0
        (line,) = read_log(state)
        assert line[20:].startswith("daemon not running; skipped archiving, pruned 5")
