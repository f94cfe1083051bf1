"""Finish hooks: what they are told, how they run, and that the queue never waits for them."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.constants import Status
from jobqueue.daemon import Core, build_core, start_core
from jobqueue.hooks import FinishHooks, JobEnd, hook_environment, list_hooks
from jobqueue.lus import builtin_registry
from jobqueue.model import Job, Submitter
from jobqueue.storage.memory import MemoryJobStore
from tests.polling import poll_until

WAIT = 15.0
LOGGER = "test.hooks"


def hook(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def ended_job(job_id: int = 7, *ops: dict[str, Any], status: Status = Status.ERROR) -> Job:
    job = Job.new(job_id, list(ops) or [{"OP_ID": "OP_COMMAND_RUN", "argv": ["ls", "a b"]}], [0, 0])
    for op in job.ops:
        op.status = Status.SUCCESS
    job.ops[-1].status = status
    if status == Status.ERROR:
        job.ops[-1].result = ["OpExecError", ["Command 'ls' exited with code 2", {"exit_code": 2}]]
    return job


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hooks"
    directory.mkdir()
    return directory


@pytest.fixture
def make_hooks(hooks_dir: Path) -> Iterator[Callable[..., FinishHooks]]:
    made: list[FinishHooks] = []

    def make(**options: Any) -> FinishHooks:
        hooks = FinishHooks(
            str(hooks_dir),
            lambda op_input: f"SUMMARY({op_input['OP_ID']})",
            logger=logging.getLogger(LOGGER),
            **options,
        )
        hooks.start()
        made.append(hooks)
        return hooks

    yield make
    for hooks in made:
        hooks.stop(0)


def test_which_files_are_hooks(hooks_dir: Path) -> None:
    hook(hooks_dir, "20-mail", "")
    hook(hooks_dir, "10-log.sh", "")
    hook(hooks_dir, ".hidden", "")
    hook(hooks_dir, "backup~", "")
    hook(hooks_dir, "notes", "", mode=0o644)
    (hooks_dir / "subdir").mkdir(mode=0o755)
    assert [os.path.basename(path) for path in list_hooks(str(hooks_dir))] == [
        "10-log.sh",
        "20-mail",
    ]
    assert list_hooks(str(hooks_dir / "missing")) == []


def test_the_submitter_is_a_user_name_when_it_has_one() -> None:
    job = ended_job(7)
    assert JobEnd.of(job, str).submitter == ""  # stored before submitters were recorded
    job.submitter = Submitter.client(uid=0, gid=0, groups=[], pid=1)
    assert JobEnd.of(job, str).submitter == "root"
    job.submitter = Submitter.client(uid=54321, gid=54321, groups=[], pid=1)
    assert JobEnd.of(job, str).submitter == "54321"
    job.submitter = Submitter.daemon()
    assert JobEnd.of(job, str).submitter == ""


def test_what_a_job_end_says() -> None:
    job = ended_job(
        7, {"OP_ID": "OP_TEST_DUMMY"}, {"OP_ID": "OP_COMMAND_RUN", "argv": ["ls", "a b"]}
    )
    end = JobEnd.of(job, lambda op_input: "DUMMY")
    assert end == JobEnd(
        job_id=7,
        status="error",
        submitter="",
        summary="DUMMY; ls 'a b'",
        error="Command 'ls' exited with code 2",
    )


def test_a_hook_is_told_about_the_job(
    make_hooks: Callable[..., FinishHooks], hooks_dir: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    hook(hooks_dir, "record", f"env > {record}\npwd >> {record}\n")
    hooks = make_hooks(extra_env={"JOBQUEUE_STATE_DIR": "/the/state"})
    hooks.job_ended(ended_job(7))
    assert hooks.wait_idle(WAIT)
    lines = record.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)
    assert {key: env[key] for key in env if key.startswith("JOBQUEUE_")} == {
        "JOBQUEUE_JOB_ID": "7",
        "JOBQUEUE_JOB_STATUS": "error",
        "JOBQUEUE_JOB_SUBMITTER": "",
        "JOBQUEUE_JOB_SUMMARY": "ls 'a b'",
        "JOBQUEUE_JOB_ERROR": "Command 'ls' exited with code 2",
        "JOBQUEUE_STATE_DIR": "/the/state",
    }
    assert lines[-1] == str(hooks_dir)


def test_output_and_failures_go_to_the_log(
    make_hooks: Callable[..., FinishHooks], hooks_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook(hooks_dir, "a-fails", "echo to stdout; echo to stderr >&2; exit 3\n")
    hook(hooks_dir, "b-hangs", "exec sleep 30\n")
    hook(hooks_dir, "c-runs", "echo still run\n")
    hooks = make_hooks(timeout=0.5)
    started = time.monotonic()
    hooks.job_ended(ended_job(7))
    assert hooks.wait_idle(WAIT)
    assert time.monotonic() - started < 10
    messages = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert messages == [
        "Finish hook a-fails for job 7: to stdout",
        "Finish hook a-fails for job 7: to stderr",
        "Finish hook a-fails for job 7 exited with 3",
        "Finish hook b-hangs for job 7 timed out after 0.5s; killed",
        "Finish hook c-runs for job 7: still run",
    ]


def test_the_caller_never_waits(
    make_hooks: Callable[..., FinishHooks],
    hooks_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate, started, seen = tmp_path / "gate", tmp_path / "started", tmp_path / "seen"
    os.mkfifo(gate)
    seen.touch()
    hook(
        hooks_dir,
        "slow",
        f'echo "$JOBQUEUE_JOB_ID" >> {started}; read line < {gate};'
        f' echo "$JOBQUEUE_JOB_ID" >> {seen}\n',
    )
    hooks = make_hooks(max_pending=2)
    hooks.job_ended(ended_job(1))
    assert poll_until(started.exists, WAIT)  # job 1's hook runs, and waits
    before = time.monotonic()
    for job_id in range(2, 6):
        hooks.job_ended(ended_job(job_id))  # 2 and 3 wait for their turn, 4 and 5 are dropped
    assert time.monotonic() - before < 1
    assert not hooks.wait_idle(0.2)
    for done in range(1, 4):
        with open(gate, "w") as writer:
            writer.write("go\n")
        assert poll_until(lambda count=done: len(seen.read_text().split()) == count, WAIT)
    assert hooks.wait_idle(WAIT)
    assert seen.read_text().split() == ["1", "2", "3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Finish hooks skipped for 2 jobs: too many pending"]


class TestTheQueueAnnouncesEnds:
    @pytest.fixture
    def queue_with_ends(self) -> Iterator[tuple[Core, list[tuple[int, str]]]]:
        ends: list[tuple[int, str]] = []
        lock = threading.Lock()

        def on_end(job: Job) -> None:
            with lock:
                ends.append((job.id, job.status.value))

        core = build_core(MemoryJobStore(), builtin_registry(), on_job_end=on_end)
        start_core(core, 2)
        yield core, ends
        core.queue.prepare_shutdown()
        core.queue.kill_running()
        core.stop()

    def test_once_per_job_however_it_ends(
        self, queue_with_ends: tuple[Core, list[tuple[int, str]]]
    ) -> None:
        core, ends = queue_with_ends
        queue = core.queue
        ok = queue.submit_job([{"OP_ID": "OP_TEST_DUMMY"}, {"OP_ID": "OP_TEST_DUMMY"}])
        bad = queue.submit_job([{"OP_ID": "OP_TEST_DUMMY", "fail": True}])
        blocker = queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": 30}])
        assert poll_until(lambda: core.live.status_of(blocker) == Status.RUNNING, WAIT)
        queue.cancel_job(blocker, kill=True)
        assert poll_until(lambda: len(ends) == 3, WAIT)
        assert sorted(ends) == [(ok, "success"), (bad, "error"), (blocker, "canceled")]


def test_the_example_hook_logs_and_mails(tmp_path: Path) -> None:
    """doc/examples/hooks/notify, with stand-ins for logger, sendmail and jobctl."""
    example = Path(__file__).parent.parent / "doc" / "examples" / "hooks" / "notify"
    script = example.read_text().replace('MAIL_TO=""', 'MAIL_TO="ops@example.org"', 1)
    assert script != example.read_text()
    installed = hook(tmp_path, "notify", script.split("\n", 1)[1])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("logger", "sendmail", "jobctl"):  # each records its arguments and input
        hook(bin_dir, name, f'echo "$*" > {tmp_path}/{name}; cat >> {tmp_path}/{name}\n')
    end = JobEnd(7, "error", "", "ls 'a b'", "Command 'ls' exited with code 2")
    env = hook_environment(end, {"JOBQUEUE_STATE_DIR": "/state"})
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(
        [str(installed)], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "logger").read_text() == (
        "-t jobqueue -- job 7 error: ls 'a b' (Command 'ls' exited with code 2)\n"
    )
    mail = (tmp_path / "sendmail").read_text()
    assert mail.startswith("-t\nTo: ops@example.org\nSubject: [jobqueue] job 7 error\n\n")
    assert "Command:   ls 'a b'\n" in mail and mail.endswith("Last lines of its output:\n\n")
    assert (tmp_path / "jobctl").read_text() == "--state-dir /state log --tail 20 7\n"
