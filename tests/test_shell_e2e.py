"""Issue 18 end to end: real commands, the real daemon and the real jobctl.

The caller's directory and environment, a missing directory, output kept
whole on disk while the log is capped, ``log --tail/--follow`` on a running
job, exit codes, a finish hook, and stdin.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from jobqueue import cleaner, constants
from tests.daemon_helper import Daemon, jobctl, wait_until
from tests.fake_luxi import REPO_ROOT

WAIT = 30.0


def submit(daemon: Daemon, *args: str, **options: object) -> int:
    result = jobctl(daemon, "run", *args, **options)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def log(daemon: Daemon, job_id: int, *args: str) -> bytes:
    result = jobctl(daemon, "log", str(job_id), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_directory_environment_and_input(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    here = submit(daemon, "--wait", "--", "pwd", cwd=tmp_path)
    assert log(daemon, here) == f"{tmp_path}\n".encode()
    relative = submit(daemon, "--wait", "--cwd", "sub", "--", "pwd", cwd=tmp_path)
    assert log(daemon, relative) == f"{tmp_path / 'sub'}\n".encode()

    missing = tmp_path / "gone"
    result = jobctl(daemon, "run", "--wait", "--cwd", str(missing), "--", "true")
    job_id = int(result.stdout)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"Job {job_id} failed: Cannot use the working directory '{missing}':"
        " No such file or directory\n"
    )

    args = ["--wait", "--env", "JQ_SET=x y", "--env-from-caller", "JQ_MINE", "--", "env"]
    env_job = submit(daemon, *args, env={"JQ_MINE": "mine", "JQ_NOT_PASSED": "no"})
    seen = dict(line.split("=", 1) for line in log(daemon, env_job).decode().splitlines())
    assert set(seen) == {
        *("PATH", "LANG", "HOME", "USER", "LOGNAME"),
        *("JOBQUEUE_JOB_ID", "JOBQUEUE_OPCODE_INDEX", "JQ_SET", "JQ_MINE"),
    }
    assert (seen["JOBQUEUE_JOB_ID"], seen["JOBQUEUE_OPCODE_INDEX"]) == (str(env_job), "0")
    assert (seen["JQ_SET"], seen["JQ_MINE"], seen["LANG"]) == ("x y", "mine", "C.UTF-8")

    data = bytes(range(256)) * 40 + b"no newline at the end"
    echoed = submit(daemon, "--stdin", "--wait", "--", "cat", stdin=data)
    assert log(daemon, echoed) == data
    silent = submit(daemon, "--wait", "--", "cat", stdin=b"not passed")
    assert log(daemon, silent) == b""


def test_exit_codes(daemon: Daemon) -> None:
    def run_wait(*argv: str) -> tuple[int, int, str]:
        result = jobctl(daemon, "run", "--wait", "--", *argv)
        return result.returncode, int(result.stdout), result.stderr.decode()

    assert run_wait("true")[0] == 0
    code, three, stderr = run_wait("sh", "-c", "echo oops >&2; exit 3")
    assert (code, stderr) == (
        3,
        f"Job {three} failed: Command 'sh' exited with code 3; stderr: oops\n",
    )
    code, killed, stderr = run_wait("sh", "-c", "kill -KILL $$")
    assert (code, stderr) == (
        137,
        f"Job {killed} failed: Command 'sh' was killed by signal 9 (SIGKILL)\n",
    )
    assert jobctl(daemon, "wait", str(three)).returncode == 3
    assert jobctl(daemon, "watch", str(killed)).returncode == 137
    assert jobctl(daemon, "wait", str(three), str(killed)).returncode == 1  # several: the table
    info = jobctl(daemon, "info", str(killed)).stdout.decode()
    assert "Result: OpExecError: Command 'sh' was killed by signal 9 (SIGKILL)" in info
    assert "exit code -" not in info
    code, _, stderr = run_wait("/nonexistent/program")
    assert code == 1 and "Cannot run" in stderr  # it never ran: the documented code


def test_large_output_is_kept_whole_while_the_log_is_capped(daemon: Daemon) -> None:
    size = 50 * 1024 * 1024
    line = b"the quick brown fox jumps over the lazy dog\n"
    expected = (line * (size // len(line) + 1))[:size]
    job_id = submit(
        daemon, "--wait", "--", "sh", "-c", f"yes '{line.decode().strip()}' | head -c {size}"
    )
    path = daemon.paths.queue_dir + f"/output/{job_id}/0.stdout"
    assert os.path.getsize(path) == size
    with open(path, "rb") as handle:
        assert hashlib.sha256(handle.read()).digest() == hashlib.sha256(expected).digest()
    assert (os.stat(path).st_mode & 0o777) == 0o600
    (oplog,) = daemon.client().query_jobs([job_id], ["oplog"])[0]
    assert len(oplog[0]) == constants.COMMAND_LOG_MAX_LINES + 1
    assert oplog[0][-1][2:] == ["message", "output truncated"]
    partial = size % len(line)  # the last line is cut by head -c
    assert partial and log(daemon, job_id, "--tail", "2") == line + line[:partial]


def test_log_tail_and_follow_on_a_running_job(daemon: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    script = (
        "for i in 1 2 3; do echo line $i; done; echo warning >&2;"
        f" read x < {gate}; echo after; printf 'no newline'"
    )
    job_id = submit(daemon, "--", "sh", "-c", script)
    client = daemon.client()
    wait_until(
        lambda: client.read_job_output(job_id, {"stdout": 0})["stdout"]["size"] == 21,
        WAIT,
        "the first lines",
    )
    assert log(daemon, job_id, "--tail", "2", "--stdout") == b"line 2\nline 3\n"
    follower = subprocess.Popen(
        [
            *(sys.executable, "-m", "jobqueue.cli.main", "--socket", daemon.paths.master_socket),
            *("log", "--follow", "--tail", "1", str(job_id)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == b"line 3\n"  # printed while the job runs
        with open(gate, "w") as writer:
            writer.write("go\n")
        out, err = follower.communicate(timeout=WAIT)
    finally:
        follower.kill()
    assert follower.returncode == 0  # it ended with the job
    assert out == b"after\nno newline" and err == b"warning\n"
    assert log(daemon, job_id, "--stdout") == b"line 1\nline 2\nline 3\nafter\nno newline"

    assert jobctl(daemon, "archive", str(job_id)).returncode == 0
    assert log(daemon, job_id, "--stderr") == b"warning\n"  # archived: still there
    archive = Path(daemon.paths.queue_dir, "archive")
    assert [path.name for path in archive.glob("*/output-*")] == [f"output-{job_id}"]
    assert cleaner.main(["--state-dir", str(daemon.state_dir), "--archive-age", "0"]) == 0
    assert jobctl(daemon, "log", str(job_id)).returncode == 7  # pruned, with its output
    assert list(archive.glob("*/output-*")) == []


def test_a_finish_hook_records_its_environment(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    records = tmp_path / "records"
    records.mkdir()
    hook = hooks / "record"
    hook.write_text(f'#!/bin/sh\nenv > "{records}/$JOBQUEUE_JOB_ID"\n')
    hook.chmod(0o755)
    daemon = daemon_factory("--hooks-dir", str(hooks)).start()
    result = jobctl(daemon, "run", "--wait", "--", "sh", "-c", "exit 5")
    job_id = int(result.stdout)
    assert result.returncode == 5
    record = records / str(job_id)
    wait_until(record.exists, WAIT, "the hook to run")
    wait_until(lambda: "JOBQUEUE_JOB_ERROR" in record.read_text(), WAIT, "the hook's record")
    seen = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
    assert seen["JOBQUEUE_JOB_ID"] == str(job_id)
    assert seen["JOBQUEUE_JOB_STATUS"] == "error"
    assert seen["JOBQUEUE_JOB_SUMMARY"] == "sh -c 'exit 5'"
    assert seen["JOBQUEUE_JOB_ERROR"] == "Command 'sh' exited with code 5"
    assert seen["JOBQUEUE_JOB_SUBMITTER"] == pwd.getpwuid(os.getuid()).pw_name
    assert seen["JOBQUEUE_STATE_DIR"] == str(daemon.state_dir)
