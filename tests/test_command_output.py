"""OP_COMMAND_RUN as shell users expect it: output on disk, input, directory,
environment and exit status, through a real queue on files."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import constants
from jobqueue.daemon import Core, build_core, start_core
from jobqueue.errors import OpPrereqError, StorageError
from jobqueue.livejobs import LiveJobs
from jobqueue.lus import builtin_registry
from jobqueue.lus.commandio import (
    CommandOutput,
    directory_problem,
    exit_description,
    signal_name,
)
from jobqueue.model import Submitter
from jobqueue.outputs import CUT_MARKER, OutputRecorder
from jobqueue.storage.files import FileJobStore
from jobqueue.storage.memory import MemoryJobStore
from tests.polling import poll_until
from tests.queue_harness import QueueUnderTest

WAIT = 15.0
FINAL = ("success", "error", "canceled")

MakeQueue = Callable[..., QueueUnderTest]


@pytest.fixture
def make_queue(tmp_path: Path) -> Iterator[MakeQueue]:
    cores: list[Core] = []

    def make(**options: Any) -> QueueUnderTest:
        store = FileJobStore(str(tmp_path / "queue"))
        core = build_core(
            store,
            builtin_registry(),
            kill_grace=1.0,
            logger=logging.getLogger("test.queue"),
            **options,
        )
        cores.append(core)
        start_core(core, 2)
        return QueueUnderTest(core)

    yield make
    for core in cores:
        core.queue.prepare_shutdown()
        core.queue.kill_running()
        core.stop()


@pytest.fixture
def queue(make_queue: MakeQueue) -> QueueUnderTest:
    return make_queue()


@pytest.fixture
def searchable() -> Iterator[Path]:
    """A directory every user may search, down from ``/`` (pytest's own are private)."""
    path = Path(tempfile.mkdtemp(prefix="jq"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def command(argv: list[str], **params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_COMMAND_RUN", "argv": argv, **params}


def py(code: str) -> list[str]:
    return [sys.executable, "-S", "-c", code]


def run_job(
    queue: QueueUnderTest, ops: list[dict[str, Any]], submitter: Submitter | None = None
) -> dict[str, Any]:
    job_id = queue.submit_job(ops, submitter=submitter)
    fields = ["id", "status", "opresult", "oplog"]

    def finished() -> bool:
        (row,) = queue.query_jobs([job_id], ["status"])
        return row[0] in FINAL

    assert poll_until(finished, WAIT, interval=0.01), f"job {job_id} did not finish"
    (row,) = queue.query_jobs([job_id], fields)
    return dict(zip(fields, row, strict=True))


def stored_output(queue: QueueUnderTest, job_id: int, op_index: int, stream: str) -> bytes:
    store = queue.core.store
    return store.read_output(job_id, op_index, stream, 0, 1 << 30)


def log_of(job: dict[str, Any], log_type: str, op_index: int = 0) -> list[Any]:
    return [entry[3] for entry in job["oplog"][op_index] if entry[2] == log_type]


class TestOutputOnDisk:
    def test_both_streams_are_kept_whole_while_the_log_is_capped(
        self, queue: QueueUnderTest
    ) -> None:
        lines = constants.COMMAND_LOG_MAX_LINES + 500
        code = (
            "import sys\n"
            f"for n in range({lines}): sys.stdout.write(f'line {{n}}\\n')\n"
            "sys.stdout.flush(); sys.stdout.buffer.write(b'\\xff no newline')\n"
            "sys.stderr.write('err\\n')\n"
        )
        job = run_job(queue, [command(py(code))])
        assert job["status"] == "success"
        expected = "".join(f"line {n}\n" for n in range(lines)).encode() + b"\xff no newline"
        assert stored_output(queue, job["id"], 0, "stdout") == expected
        assert stored_output(queue, job["id"], 0, "stderr") == b"err\n"
        assert len(log_of(job, "stdout")) == constants.COMMAND_LOG_MAX_LINES
        assert log_of(job, "message") == ["output truncated"]

    def test_each_opcode_has_its_own_streams(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(["echo", "first"]), command(["echo", "second"])])
        assert stored_output(queue, job["id"], 0, "stdout") == b"first\n"
        assert stored_output(queue, job["id"], 1, "stdout") == b"second\n"
        assert queue.core.store.output_sizes(job["id"]) == {(0, "stdout"): 6, (1, "stdout"): 7}

    def test_the_job_s_budget_cuts_with_a_marker_once(self, make_queue: MakeQueue) -> None:
        queue = make_queue(max_output_size=10)
        ops = [
            command(["printf", "12345678"]),
            command(py("import sys; sys.stdout.write('abcdef'); sys.stderr.write('xyz')")),
            command(["printf", "more"]),
        ]
        job = run_job(queue, ops)
        assert job["status"] == "success"
        marker = CUT_MARKER.format(limit=10).encode()
        assert stored_output(queue, job["id"], 0, "stdout") == b"12345678"
        assert stored_output(queue, job["id"], 1, "stdout") == b"ab" + marker
        assert stored_output(queue, job["id"], 1, "stderr") == marker
        assert stored_output(queue, job["id"], 2, "stdout") == marker
        assert log_of(job, "stdout", 1) == ["abcdef"]  # the log does not depend on it

    def test_a_failing_store_keeps_the_command_running(self) -> None:
        class FullDisk(MemoryJobStore):
            def open_output(self, job_id: int, op_index: int, stream: str) -> Any:
                raise StorageError("Cannot open it: No space left on device", 28)

        entries: list[tuple[str, Any]] = []
        recorder = OutputRecorder(FullDisk(), 100)
        output = CommandOutput(entries.extend, recorder.open(1, 0))
        output.add("stdout", b"hello\n")
        output.add("stdout", b"again\n")
        output.close()
        assert entries == [
            ("message", "Output not kept on disk: Cannot open it: No space left on device"),
            ("stdout", "hello"),
            ("stdout", "again"),
        ]

    def test_a_limit_of_zero_keeps_nothing(self) -> None:
        store = MemoryJobStore()
        output = OutputRecorder(store, 0).open(7, 0)
        output.write("stdout", b"dropped")
        output.close()
        assert store.output_sizes(7) == {}

    def test_followers_hear_of_every_write(self) -> None:
        heard: list[int] = []
        output = OutputRecorder(MemoryJobStore(), 4, heard.append).open(7, 0)
        output.write("stdout", b"ab")
        output.write("stdout", b"cdef")  # cut: "cd" and the marker
        output.write("stdout", b"gh")  # nothing kept, nothing to hear of
        assert heard == [7, 7]
        live = LiveJobs(lambda op_input: "summary")
        woken = threading.Event()
        with live.watch(7, woken.set):
            live.output_grew(7)
            assert woken.is_set()


class TestInputDirectoryEnvironment:
    def test_stdin_is_passed_to_the_command(self, queue: QueueUnderTest) -> None:
        data = bytes(range(256)) * 100
        op = command(["cat"], stdin=base64.b64encode(data).decode())
        job = run_job(queue, [op])
        assert job["status"] == "success"
        assert stored_output(queue, job["id"], 0, "stdout") == data

    def test_stdin_not_read_does_not_hold_the_job(self, queue: QueueUnderTest) -> None:
        data = base64.b64encode(b"x" * constants.COMMAND_STDIN_MAX).decode()
        job = run_job(queue, [command(["true"], stdin=data)])
        assert job["status"] == "success"

    def test_without_stdin_the_command_reads_nothing(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(["cat"])])
        assert job["status"] == "success"
        assert stored_output(queue, job["id"], 0, "stdout") == b""

    @pytest.mark.parametrize(
        "stdin",
        ["not base64!", base64.b64encode(b"x" * (constants.COMMAND_STDIN_MAX + 1)).decode(), 5],
    )
    def test_bad_stdin_is_refused_at_submission(self, queue: QueueUnderTest, stdin: Any) -> None:
        with pytest.raises(OpPrereqError, match="stdin"):
            queue.submit_job([command(["cat"], stdin=stdin)])

    def test_a_missing_directory_is_named(self, queue: QueueUnderTest, tmp_path: Path) -> None:
        missing = str(tmp_path / "gone")
        job = run_job(queue, [command(["true"], cwd=missing)])
        assert job["status"] == "error"
        (message,) = job["opresult"][0][1]
        assert message == f"Cannot use the working directory {missing!r}: No such file or directory"

    def test_a_directory_the_submitter_cannot_enter_is_named(
        self, queue: QueueUnderTest, searchable: Path
    ) -> None:
        if os.geteuid() != 0:
            pytest.skip("commands run as their submitter only under a root daemon")
        private = searchable / "private"
        (private / "inside").mkdir(parents=True)
        private.chmod(0o700)  # root's: nobody else may search it
        someone = Submitter.client(uid=54321, gid=54321, groups=[], pid=1)
        ops = [command(["pwd"], cwd=str(private / "inside"))]
        job = run_job(queue, ops, submitter=someone)
        assert job["status"] == "error"
        (message,) = job["opresult"][0][1]
        assert message == (
            f"Cannot use the working directory '{private / 'inside'}':"
            " Permission denied (for uid 54321)"
        )
        private.chmod(0o711)  # searchable by others: now it may
        assert run_job(queue, ops, submitter=someone)["status"] == "success"

    def test_directory_problems(self, searchable: Path) -> None:
        (searchable / "file").write_text("")
        assert directory_problem(str(searchable / "gone"), 0, ()) == "No such file or directory"
        assert directory_problem(str(searchable / "file"), 0, ()) == "Not a directory"
        assert directory_problem(str(searchable), 54321, ()) is None
        if os.geteuid() != 0:
            return
        group = searchable / "group"
        group.mkdir(mode=0o710)
        os.chown(group, 0, 4242)
        assert directory_problem(str(group), 54321, {4242}) is None
        assert directory_problem(str(group), 54321, {7}) == "Permission denied (for uid 54321)"
        assert directory_problem(str(group), 0, ()) is None

    def test_environment_ids_cannot_be_overridden(self, queue: QueueUnderTest) -> None:
        code = "import json, os; print(json.dumps(dict(os.environ)))"
        env = {"JOBQUEUE_JOB_ID": "forged", "JOBQUEUE_OPCODE_INDEX": "9", "PATH": "/mine"}
        job = run_job(queue, [{"OP_ID": "OP_TEST_DUMMY"}, command(py(code), env=env)])
        seen = json.loads(log_of(job, "stdout", 1)[0])
        assert seen["JOBQUEUE_JOB_ID"] == str(job["id"])
        assert seen["JOBQUEUE_OPCODE_INDEX"] == "1"
        assert seen["PATH"] == "/mine"


class TestExitStatus:
    def test_exit_code_in_the_error_s_details(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(["sh", "-c", "exit 3"])])
        assert job["opresult"][0] == [
            "OpExecError",
            ["Command 'sh' exited with code 3", {"exit_code": 3}],
        ]

    def test_a_signal_death_is_named(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(["sh", "-c", "kill -TERM $$"])])
        name, (message, details) = job["opresult"][0]
        assert name == "OpExecError"
        assert message == "Command 'sh' was killed by signal 15 (SIGTERM)"
        assert details == {"signal": 15}

    def test_a_timeout_says_what_ended_the_command(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(["sleep", "30"], timeout=0.2)])
        _, (message, details) = job["opresult"][0]
        assert message.startswith("Command timed out after 0.2s")
        assert details == {"signal": signal.SIGTERM, "timed_out": True}

    def test_descriptions(self) -> None:
        assert exit_description(0) == ("exited with code 0", {"exit_code": 0})
        assert exit_description(-9) == ("was killed by signal 9 (SIGKILL)", {"signal": 9})
        assert signal_name(99) == "signal 99"


class TestReadingOutput:
    def read(self, queue: QueueUnderTest, job_id: int, **offsets: int) -> dict[str, Any]:
        answer = queue.core.reader.read_output(job_id, offsets, 5)
        assert answer is not None
        for name in offsets:
            answer[name]["data"] = base64.b64decode(answer[name]["data"])
        return answer

    def test_a_stream_is_the_opcodes_streams_end_to_end(self, queue: QueueUnderTest) -> None:
        ops = [command(["printf", "abc"]), command(["true"]), command(["printf", "defgh"])]
        job = run_job(queue, ops)
        answer = self.read(queue, job["id"], stdout=0, stderr=0)
        assert answer["finished"] and answer["status"] == "success"
        assert answer["stdout"] == {"offset": 0, "data": b"abcde", "size": 8}
        assert answer["stderr"] == {"offset": 0, "data": b"", "size": 0}
        assert self.read(queue, job["id"], stdout=2)["stdout"]["data"] == b"cdefg"
        assert self.read(queue, job["id"], stdout=5)["stdout"]["data"] == b"fgh"
        assert self.read(queue, job["id"], stdout=8)["stdout"]["data"] == b""
        assert self.read(queue, job["id"], stdout=-4)["stdout"] == {
            "offset": 4,
            "data": b"efgh",
            "size": 8,
        }
        assert self.read(queue, job["id"], stdout=-100)["stdout"]["offset"] == 0

    def test_archived_jobs_keep_their_output(self, queue: QueueUnderTest) -> None:
        job = run_job(queue, [command(["printf", "kept"])])
        assert queue.archive_job(job["id"])
        assert self.read(queue, job["id"], stdout=0)["stdout"]["data"] == b"kept"

    def test_unknown_job(self, queue: QueueUnderTest) -> None:
        assert queue.core.reader.read_output(999, {"stdout": 0}, 5) is None
