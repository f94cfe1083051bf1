"""``jobctl`` as shell users expect it (issue 18), against a scripted daemon:
the caller's directory and environment, stdin, ``log``, command exit statuses."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.cli.exitcodes import command_exit_code
from jobqueue.cli.outputlog import lines_start
from tests import fake_luxi as fake
from tests.fake_luxi import FakeLuxi, run_jobctl

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir


def submitted(luxi: FakeLuxi) -> dict[str, Any]:
    (args,) = luxi.args_of("SubmitJob")
    opcode: dict[str, Any] = args[0][0]
    return opcode


class TestDirectoryAndEnvironment:
    def test_the_caller_s_directory_and_a_relative_cwd(
        self, luxi: FakeLuxi, tmp_path: Path
    ) -> None:
        luxi.answers["SubmitJob"] = 5
        assert run_jobctl(luxi.path, "run", "pwd", cwd=str(tmp_path)).returncode == 0
        assert run_jobctl(luxi.path, "run", "--cwd", "sub/../x", "pwd", cwd=str(tmp_path)).stdout
        first, second = (args[0][0]["cwd"] for args in luxi.args_of("SubmitJob"))
        assert (first, second) == (str(tmp_path), str(tmp_path / "x"))

    def test_fanout_sends_the_directory_too(self, luxi: FakeLuxi, tmp_path: Path) -> None:
        luxi.answers["SubmitJob"] = 5
        args = ["fanout", "--item", "a", "--cwd", "d", "--then-run", "true", "--", "echo"]
        assert run_jobctl(luxi.path, *args, cwd=str(tmp_path)).returncode == 0
        opcode = submitted(luxi)
        assert opcode["cwd"] == opcode["then"][0]["cwd"] == str(tmp_path / "d")

    def test_environment_from_the_caller(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 5
        env = {"JQ_A": "from caller", "JQ_B": "b"}
        args = ["run", "--env-from-caller", "JQ_A", "--env", "JQ_B=set", "--", "env"]
        assert run_jobctl(luxi.path, *args, env=env).returncode == 0
        assert submitted(luxi)["env"] == {"JQ_A": "from caller", "JQ_B": "set"}

    def test_the_whole_environment_of_the_caller(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 5
        result = run_jobctl(luxi.path, "run", "--caller-env", "--env", "JQ_B=x", "env", env={})
        assert result.returncode == 0
        env = submitted(luxi)["env"]
        assert env["JQ_B"] == "x" and env["TZ"] == "UTC" and env["PATH"] == os.environ["PATH"]

    def test_a_missing_caller_variable_is_a_usage_error(self, luxi: FakeLuxi) -> None:
        result = run_jobctl(luxi.path, "run", "--env-from-caller", "JQ_NOT_SET_ANYWHERE", "env")
        assert result.returncode == 2
        assert result.stderr == (
            "--env-from-caller JQ_NOT_SET_ANYWHERE: JQ_NOT_SET_ANYWHERE is not set in your"
            " environment\n"
        )
        assert luxi.methods() == []


class TestStdin:
    def test_stdin_is_sent(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 5
        assert run_jobctl(luxi.path, "run", "--stdin", "cat", stdin="a\nb\n").returncode == 0
        assert base64.b64decode(submitted(luxi)["stdin"]) == b"a\nb\n"

    def test_without_stdin_nothing_is_read(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 5
        assert run_jobctl(luxi.path, "run", "cat", stdin="ignored").returncode == 0
        assert "stdin" not in submitted(luxi)

    def test_too_much_stdin_is_refused(self, luxi: FakeLuxi) -> None:
        data = "x" * (constants.COMMAND_STDIN_MAX + 1)
        result = run_jobctl(luxi.path, "run", "--stdin", "cat", stdin=data)
        assert result.returncode == 1
        assert result.stderr.startswith("Standard input is longer than 65536 bytes")
        assert luxi.methods() == []


class OutputScript:
    """Answers ReadJobOutput from streams that grow as ``more`` is given, like the daemon."""

    def __init__(self, **streams: bytes) -> None:
        self.streams = {"stdout": b"", "stderr": b"", **streams}
        self.finished = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.waits = 0
        #: The most bytes one answer carries, less than asked: clients must ask again.
        self.piece = 7

    def more(self, stream: str, data: bytes, *, finished: bool = False) -> None:
        with self.changed:
            self.streams[stream] += data
            self.finished = finished
            self.changed.notify_all()

    def __call__(
        self, job_id: int, offsets: dict[str, int], max_bytes: int, timeout: float = 0
    ) -> dict[str, Any]:
        with self.changed:
            if timeout and not self.finished and not self._data_at(offsets):
                self.waits += 1
                self.changed.notify_all()
                self.changed.wait(timeout)
            answer: dict[str, Any] = {"status": "running", "finished": self.finished}
            for name, offset in offsets.items():
                data = self.streams[name]
                start = max(0, len(data) + offset) if offset < 0 else offset
                chunk = data[start : start + min(max_bytes, self.piece)]  # short answers
                answer[name] = {
                    "offset": start,
                    "data": base64.b64encode(chunk).decode(),
                    "size": len(data),
                }
            return answer

    def _data_at(self, offsets: dict[str, int]) -> bool:
        return any(len(self.streams[name]) > offset for name, offset in offsets.items())


class TestLog:
    def test_streams_go_where_they_came_from(self, luxi: FakeLuxi) -> None:
        script = OutputScript(stdout=b"one\ntwo\nthree\n", stderr=b"warning\n")
        script.finished = True
        luxi.answers["ReadJobOutput"] = script
        result = run_jobctl(luxi.path, "log", "4")
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            "one\ntwo\nthree\n",
            "warning\n",
        )
        result = run_jobctl(luxi.path, "log", "4", "--stderr")
        assert (result.stdout, result.stderr) == ("warning\n", "")

    def test_tail(self, luxi: FakeLuxi) -> None:
        lines = b"".join(b"line %d\n" % n for n in range(20000))
        script = OutputScript(stdout=lines + b"last, unfinished")
        script.piece = 5000
        luxi.answers["ReadJobOutput"] = script
        result = run_jobctl(luxi.path, "log", "4", "--stdout", "--tail", "3")
        assert result.stdout == "line 19998\nline 19999\nlast, unfinished"
        result = run_jobctl(luxi.path, "log", "4", "--stdout", "--tail", "0")
        assert result.stdout == ""

    def test_follow_until_the_job_ends(self, luxi: FakeLuxi) -> None:
        script = OutputScript(stdout=b"old\n")
        luxi.answers["ReadJobOutput"] = script
        outcome: list[Any] = []
        runner = threading.Thread(
            target=lambda: outcome.append(run_jobctl(luxi.path, "log", "4", "--follow"))
        )
        runner.start()
        with script.changed:
            assert script.changed.wait_for(lambda: script.waits >= 1, 10)
        script.more("stdout", b"new output, more than one piece\n")
        with script.changed:
            assert script.changed.wait_for(lambda: script.waits >= 2, 10)
        script.more("stderr", b"bye\n", finished=True)
        runner.join(30)
        (result,) = outcome
        assert result.returncode == 0
        assert result.stdout == "old\nnew output, more than one piece\n"
        assert result.stderr == "bye\n"
        assert all(args[3] in (0, 30) for args in luxi.args_of("ReadJobOutput"))

    def test_unknown_job(self, luxi: FakeLuxi) -> None:
        def lost(*args: Any) -> Any:
            from jobqueue.errors import JobLost

            raise JobLost("Job 4 not found")

        luxi.answers["ReadJobOutput"] = lost
        result = run_jobctl(luxi.path, "log", "4")
        assert (result.returncode, result.stderr) == (7, "Job 4 not found\n")

    @pytest.mark.parametrize(
        ("data", "count", "start"),
        [
            (b"a\nb\nc\n", 2, 2),
            (b"a\nb\nc", 2, 2),
            (b"a\nb\nc\n", 3, None),  # "a" may be the end of a longer line
            (b"a\nb\nc\n", 4, None),
            (b"a\nb\n", 0, 4),
            (b"", 1, None),
        ],
    )
    def test_lines_start(self, data: bytes, count: int, start: int | None) -> None:
        assert lines_start(data, count) == start


class TestCommandExitCode:
    @pytest.mark.parametrize(
        ("status", "opresult", "code"),
        [
            ("error", [["OpExecError", ["exited", {"exit_code": 3}]]], 3),
            ("error", [["OpExecError", ["killed", {"signal": 9}]]], 137),
            ("error", [["OpExecError", ["timed out", {"exit_code": 0, "timed_out": True}]]], 1),
            ("error", [["OpExecError", ["Cannot run 'x': No such file or directory"]]], None),
            ("error", [["OpExecError", ["x", {"exit_code": 3}]], ["OpExecError", ["p"]]], None),
            ("canceled", ["Job canceled by request"], None),
            ("success", [{"exit_code": 0}], None),
        ],
    )
    def test_from_the_job_s_results(self, status: str, opresult: Any, code: int | None) -> None:
        assert command_exit_code(status, opresult) == code
