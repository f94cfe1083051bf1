"""The command LUs, OP_COMMAND_RUN and OP_COMMAND_FANOUT, through a real JobQueue on files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.children import ProcessGroups
from jobqueue.errors import OpPrereqError
from jobqueue.lus.command import OpCommandFanout, base_environment
from tests import lu_harness
from tests.lu_harness import (
    FINAL,
    PROMPT,
    MakeQueue,
    command,
    dummy,
    group_is_gone,
    info,
    kill,
    log_of,
    py,
    run_job,
    stamp,
    wait_for_status,
    wait_until,
)
from tests.queue_harness import QueueUnderTest

make_queue = lu_harness.make_queue  # the queue fixtures of the LU tests
queue = lu_harness.queue


class TestCommandRun:
    def test_output_becomes_log_entries(self, queue: QueueUnderTest) -> None:
        code = (
            "import sys\n"
            "for n in range(3):\n"
            "    print(f'out {n}', flush=True)\n"
            "    print(f'err {n}', file=sys.stderr, flush=True)\n"
            "sys.stdout.write('no newline at the end')\n"
        )
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "success"
        assert job["opresult"][0]["exit_code"] == 0
        assert log_of(job, 0, "stdout") == ["out 0", "out 1", "out 2", "no newline at the end"]
        assert log_of(job, 0, "stderr") == ["err 0", "err 1", "err 2"]
        serials = [entry[0] for entry in job["oplog"][0]]
        assert serials == sorted(set(serials))

    def test_non_zero_exit(self, queue: QueueUnderTest) -> None:
        code = "import sys; print('first problem', file=sys.stderr); sys.exit('last problem')"
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "error"
        name, (message, details) = job["opresult"][0]
        assert name == "OpExecError" and details == {"exit_code": 1}
        assert "code 1" in message and "last problem" in message
        assert log_of(job, 0, "stderr") == ["first problem", "last problem"]

    def test_exit_code_is_named(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(py("raise SystemExit(7)"))])
        assert "code 7" in job["opresult"][0][1][0]

    def test_missing_program(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        job = run_job(queue, [command([str(tmp_path / "no-such-program")])])
        assert job["status"] == "error"
        assert "Cannot run" in job["opresult"][0][1][0]

    def test_timeout(self, queue: QueueUnderTest) -> None:
        started = time.monotonic()
        job = run_job(queue, [command(py("import time; time.sleep(30)"), timeout=0.3)])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "error"
        assert "timed out" in job["opresult"][0][1][0]

    def test_timeout_with_output_closed(self, queue: QueueUnderTest) -> None:
        code = "import os, time; os.close(1); os.close(2); time.sleep(30)"
        started = time.monotonic()
        job = run_job(queue, [command(py(code), timeout=0.3)])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "error"
        assert "timed out" in job["opresult"][0][1][0]

    def test_environment_is_base_plus_requested(self, queue: QueueUnderTest) -> None:
        code = "import json, os; print(json.dumps(dict(os.environ)))"
        extra = {"JQ_TEST_VAR": "hello world", "HOME": "/nonexistent-home"}
        job = run_job(queue, [command(py(code), env=extra)])
        assert job["status"] == "success"
        (line,) = log_of(job, 0, "stdout")
        environment = json.loads(line)
        expected = base_environment(job["id"]) | extra
        assert environment == expected
        assert environment["JOBQUEUE_JOB_ID"] == str(job["id"])

    def test_cwd(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        workdir = tmp_path / "work dir"
        workdir.mkdir()
        job = run_job(queue, [command(py("import os; print(os.getcwd())"), cwd=str(workdir))])
        assert log_of(job, 0, "stdout") == [str(workdir)]

    def test_output_is_capped(self, queue: QueueUnderTest) -> None:
        lines = constants.COMMAND_LOG_MAX_LINES + 50
        code = f"import sys; sys.stdout.write(''.join(f'{{n}}\\n' for n in range({lines})))"
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "success"
        stdout = log_of(job, 0, "stdout")
        assert len(stdout) == constants.COMMAND_LOG_MAX_LINES
        assert stdout[:2] == ["0", "1"] and stdout[-1] == str(constants.COMMAND_LOG_MAX_LINES - 1)
        assert log_of(job, 0, "message") == ["output truncated"]
        assert job["oplog"][0][-1][2:] == ["message", "output truncated"]

    def test_output_cap_counts_bytes_as_written(self, queue: QueueUnderTest) -> None:
        line = "\u00e9" * 1000  # 1,000 characters, 2,000 bytes in UTF-8
        code = f"import sys; sys.stdout.buffer.write(({line!r} + '\\n').encode() * 600)"
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "success"
        stdout = log_of(job, 0, "stdout")
        assert len(stdout) == constants.COMMAND_LOG_MAX_BYTES // 2000
        assert set(stdout) == {line}
        assert log_of(job, 0, "message") == ["output truncated"]

    def test_output_without_newlines_is_logged_in_pieces(self, queue: QueueUnderTest) -> None:
        size = 3 * constants.COMMAND_LOG_MAX_BYTES
        code = (
            f"import sys; sys.stdout.write('x' * {size}); sys.stdout.flush(); "
            "sys.stderr.write('boom\\n'); sys.exit(1)"
        )
        job = run_job(queue, [command(py(code))])
        stdout = log_of(job, 0, "stdout")
        piece = constants.COMMAND_LOG_MAX_LINE_BYTES
        assert stdout == ["x" * piece] * (constants.COMMAND_LOG_MAX_BYTES // piece)
        assert log_of(job, 0, "message") == ["output truncated"]
        assert log_of(job, 0, "stderr") == []  # after the cap, output is dropped...
        assert job["status"] == "error"
        assert "stderr: boom" in str(job["opresult"][0])  # ...but the error still quotes it

    def test_background_child_does_not_hold_the_job(self, queue: QueueUnderTest) -> None:
        started = time.monotonic()
        job = run_job(queue, [command(["sh", "-c", "sleep 30 & echo started"])])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "success"
        assert log_of(job, 0, "stdout") == ["started"]

    def test_background_child_is_killed(self, queue: QueueUnderTest) -> None:
        started = time.monotonic()
        job = run_job(queue, [command(["sh", "-c", "echo $$; sleep 30 &"])])
        assert time.monotonic() - started < PROMPT
        assert job["status"] == "success"
        (pgid_text,) = log_of(job, 0, "stdout")
        pgid = int(pgid_text)
        assert wait_until(lambda: group_is_gone(pgid), PROMPT), f"group {pgid} still alive"

    def test_kill(self, queue: QueueUnderTest) -> None:
        job_id = queue.submit_job([command(py("import time; time.sleep(30)")), dummy()])
        wait_for_status(queue, job_id, "running")
        started = time.monotonic()
        assert queue.cancel_job(job_id, kill=True) == [True, f"Job {job_id} will be killed"]
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "canceled"
        assert time.monotonic() - started < PROMPT
        assert info(queue, job_id)["opresult"] == [constants.MSG_CANCELED] * 2

    def test_killed_by_a_slow_shutdown_is_an_error_not_a_cancel(
        self, queue: QueueUnderTest
    ) -> None:
        job_id = queue.submit_job([command(py("import time; time.sleep(30)")), dummy()])
        wait_for_status(queue, job_id, "running")
        queue.prepare_shutdown()
        queue.kill_running()
        assert wait_for_status(queue, job_id, FINAL, PROMPT) == "error"
        first, second = info(queue, job_id)["opresult"]
        assert first == ["OpExecError", [constants.MSG_KILLED_AT_SHUTDOWN]]
        assert second == ["OpExecError", [constants.MSG_PRECEDING_FAILED]]

    def test_running_command_group_is_recorded(self, make_queue: MakeQueue, tmp_path: Path) -> None:
        directory = tmp_path / "commands"
        directory.mkdir()
        queue = make_queue(processes=ProcessGroups(str(directory)))
        job_id = queue.submit_job([command(["sh", "-c", "echo $$; exec sleep 30"])])

        def pgid() -> int | None:
            lines = log_of(info(queue, job_id), 0, "stdout")
            return int(lines[0]) if lines else None

        assert wait_until(lambda: pgid() is not None)
        record = directory / str(pgid())
        assert wait_until(record.exists)
        assert record.read_text().split()[0] == str(job_id)
        kill(queue, job_id)
        assert os.listdir(directory) == []
        assert run_job(queue, [command(["true"])])["status"] == "success"
        assert os.listdir(directory) == []

    def test_dry_run(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        marker = tmp_path / "marker"
        argv = ["touch", str(marker)]
        job = run_job(queue, [command(argv, dry_run=True)])
        assert job["status"] == "success"
        assert job["opresult"] == [{"argv": argv}]
        assert not marker.exists()


TIMES_SCRIPT = (
    "import sys, time\n"
    "path = sys.argv[1]\n"
    "open(path + '.start', 'w').write(repr(time.time()))\n"
    "time.sleep(0.2)\n"
    "open(path + '.end', 'w').write(repr(time.time()))\n"
)


def intervals(directory: Path, items: list[str]) -> list[tuple[float, float]]:
    return [
        (float((directory / f"{i}.start").read_text()), float((directory / f"{i}.end").read_text()))
        for i in items
    ]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


class TestCommandFanout:
    def test_fanout_with_then_job(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        items = [f"item-{n:02d}" for n in range(50)]
        then_path = out / "then"
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": py(TIMES_SCRIPT, str(out / "{item}")),
            "items": items,
            "then": [command(py(TIMES_SCRIPT, str(then_path)))],
        }
        job = run_job(queue, [op])
        assert job["status"] == "success"
        submitted = job["opresult"][0]["jobs"]
        assert len(submitted) == 51 and all(ok for ok, _ in submitted)
        job_ids = [job_id for _, job_id in submitted]
        for job_id in job_ids:
            assert wait_for_status(queue, job_id, FINAL, 30) == "success"
        spans = intervals(out, items)
        assert 2 <= max_overlap(spans) <= 4, "children run in parallel, at most one per worker"
        then_start = float((out / "then.start").read_text())
        assert then_start > max(end for _, end in spans)
        # the job starts (and waits) at once; its opcode runs after every child ended
        (then_exec,) = queue.query_jobs([job_ids[-1]], ["opexec"])[0]
        child_ends = [stamp(info(queue, job_id)["end_ts"]) for job_id in job_ids[:-1]]
        assert stamp(then_exec[0]) >= max(child_ends)
        (ops,) = queue.query_jobs([job_ids[-1]], ["ops"])[0]
        assert sorted(dep[0] for dep in ops[0]["depends"]) == sorted(job_ids[:-1])

    def test_shared_exclusive_lock_serialises(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        items = ["s1", "s2", "s3"]
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": py(TIMES_SCRIPT, str(out / "{item}")),
            "items": items,
            "locks": ["shared-lock"],
        }
        job = run_job(queue, [op])
        job_ids = [job_id for _, job_id in job["opresult"][0]["jobs"]]
        assert len(job_ids) == 3
        for job_id in job_ids:
            assert wait_for_status(queue, job_id, FINAL) == "success"
        assert max_overlap(intervals(out, items)) == 1
        (ops,) = queue.query_jobs([job_ids[0]], ["ops"])[0]
        assert ops[0]["locks"] == ["shared-lock"]

    @pytest.mark.parametrize(
        "params",
        [
            {"locks": ["{item}"], "items": ["a", ""]},
            {"shared_locks": ["clus{item}"], "items": ["ter"]},
            {"items": ["x"] * (OpCommandFanout.FANOUT_LIMIT + 1)},
            {"then": [dummy(fail="no")]},
        ],
    )
    def test_fanout_refused_at_submit(self, queue: QueueUnderTest, params: dict[str, Any]) -> None:
        op = {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["true"], "items": ["a"], **params}
        with pytest.raises(OpPrereqError, match="OP_COMMAND_FANOUT"):
            queue.submit_job([op])
        assert queue.live.count() == 0

    def test_fanout_items_get_their_own_locks(self, queue: QueueUnderTest) -> None:
        op = {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": ["true", "{item}"],
            "items": ["h1", "h2"],
            "locks": ["host:{item}"],
            "shared_locks": ["site"],
        }
        job = run_job(queue, [op])
        job_ids = [job_id for _, job_id in job["opresult"][0]["jobs"]]
        ops = [queue.query_jobs([i], ["ops"])[0][0][0] for i in job_ids]
        assert [(o["argv"], o["locks"], o["shared_locks"]) for o in ops] == [
            (["true", "h1"], ["host:h1"], ["site"]),
            (["true", "h2"], ["host:h2"], ["site"]),
        ]
        for job_id in job_ids:
            assert wait_for_status(queue, job_id, FINAL) == "success"
