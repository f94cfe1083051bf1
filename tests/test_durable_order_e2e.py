"""The real daemon, compiled write helper included, under strace: nothing a
client hears of, and no command it starts, comes before the durable write
that backs it (doc/storage.rst, "What is durable when")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.constants import FINALIZED, Status
from jobqueue.storage.base import encode_job
from jobqueue.storage.durable import helper_built
from tests.daemon_helper import Daemon, state_dir_under, wait_until
from tests.store_samples import make_job
from tests.syscall_trace import STRACE_OPTIONS, Call, Versions, read_calls, replies

STRACE = shutil.which("strace")
DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


def _why_not_traced() -> str | None:
    if STRACE is None:
        return "strace is not installed (make test installs it when run as root)"
    probe = subprocess.run(
        [STRACE, "-f", "-qq", "-o", os.devnull, "true"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        return f"strace cannot trace here: {probe.stderr.decode(errors='replace')[:200]}"
    return None


class TracedDaemon(Daemon):
    """The daemon started by strace, which logs its calls to ``trace``."""

    def __init__(self, state_dir: Path, trace: Path) -> None:
        super().__init__(state_dir, workers=4)
        self.trace = trace

    def command(self) -> list[str]:
        assert STRACE is not None
        return [STRACE, *STRACE_OPTIONS, "-o", str(self.trace), "--", *super().command()]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Stop the daemon itself (strace ignores fatal signals) and wait for strace."""
        assert self.proc is not None
        for client in self._clients:
            client.close()
        if self.proc.poll() is None:
            pid = int(Path(self.paths.pid_file).read_text())
            os.kill(pid, signum)
        return self.proc.wait(timeout)


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[TracedDaemon]:
    reason = _why_not_traced()
    if reason is not None:
        pytest.skip(reason)
    daemon = TracedDaemon(state_dir_under(tmp_path), tmp_path / "daemon.strace")
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


def submit_all(daemon: TracedDaemon) -> tuple[dict[str, int], set[str]]:
    """Submissions from four clients at once and a batch; returns the job ids by name,
    and the names of the jobs that run a command (the name is the command's argument)."""
    jobs: dict[str, int] = {}
    commands: set[str] = set()
    lock = threading.Lock()

    def ops(name: str, runs_command: bool) -> list[dict[str, Any]]:
        if not runs_command:
            return [DELAY0]
        with lock:
            commands.add(name)
        return [{"OP_ID": "OP_COMMAND_RUN", "argv": ["true", name]}]

    def one_client(number: int) -> None:
        client = daemon.client()
        for index in range(6):
            name = f"c{number}-{index}"
            job_id = client.submit_job(ops(name, index % 3 == 0))
            with lock:
                jobs[name] = job_id

    threads = [threading.Thread(target=one_client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    names = [f"b-{index}" for index in range(8)]
    batch = [ops(name, index % 2 == 1) for index, name in enumerate(names)]
    results = daemon.client().submit_many_jobs(batch)
    for thread in threads:
        thread.join(60)
    for name, (ok, job_id) in zip(names, results, strict=True):
        assert ok, job_id
        jobs[name] = job_id
    return jobs, commands


def test_what_clients_hear_of_and_commands_run_come_after_their_durable_writes(
    traced: TracedDaemon,
) -> None:
    jobs, commands = submit_all(traced)
    assert len(jobs) == 32 and len(commands) == 12
    poller = traced.client()

    def all_finished() -> bool:
        rows = poller.query_jobs(sorted(jobs.values()), ["id", "status"])
        return all(status in FINALIZED for _, status in rows)

    wait_until(all_finished, timeout=120, what="every job to finish")
    rows = poller.query_jobs(sorted(jobs.values()), ["id", "status"])
    assert {status for _, status in rows} == {Status.SUCCESS}
    assert traced.stop() == 0
    if helper_built():  # the test is about the compiled helper wherever it is built
        assert "compiled helper" in traced.log()

    calls = read_calls(traced.trace.read_text())
    queue_dir = os.path.realpath(traced.paths.queue_dir)
    versions = Versions(calls, queue_dir)
    assert versions.faults == []
    assert versions.renames >= 2 * len(jobs)  # each job: made, and its end exchanged

    acknowledged, reported = _check_replies(calls, versions)
    assert acknowledged == set(jobs.values())  # every submission's answer was found
    assert reported >= len(jobs)  # the last poll alone reports every job
    assert _check_commands(calls, versions, jobs) == commands


def _check_replies(calls: list[Call], versions: Versions) -> tuple[set[int], int]:
    """Every job id acknowledged and every status reported was durable before the answer;
    returns the ids acknowledged and how many statuses were checked."""
    acknowledged: set[int] = set()
    reported = 0
    for call, message in replies(calls):
        result = message.get("result") if isinstance(message, dict) else None
        if isinstance(result, int) and not isinstance(result, bool):  # SubmitJob
            assert versions.durable_before(result, call.begin), f"job {result} acknowledged early"
            acknowledged.add(result)
        elif isinstance(result, list) and result and all(isinstance(r, list) for r in result):
            for row in result:
                if len(row) == 2 and isinstance(row[0], bool) and row[0]:  # SubmitManyJobs
                    assert versions.durable_before(row[1], call.begin), f"job {row[1]} early"
                    acknowledged.add(row[1])
                elif len(row) == 2 and isinstance(row[0], int) and row[1] in set(Status):
                    status = Status(row[1])  # QueryJobs id, status
                    assert versions.durable_before(row[0], call.begin, status), (
                        f"job {row[0]} reported {status} before that was durable"
                    )
                    reported += 1
    return acknowledged, reported


def _check_commands(calls: list[Call], versions: Versions, jobs: dict[str, int]) -> set[str]:
    """No command started before its job's running state was durable; returns the jobs
    whose command started."""
    started: set[str] = set()
    for call in calls:
        if call.name != "execve":
            continue
        for name in {s.decode(errors="replace") for s in call.strings} & jobs.keys():
            assert versions.durable_before(jobs[name], call.begin, Status.RUNNING), (
                f"the command of {name} (job {jobs[name]}) started before its start was durable"
            )
            if call.ok:
                started.add(name)
    return started


def _hex(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return "".join(f"\\x{byte:02x}" for byte in raw)


def test_the_trace_checks_catch_a_sync_missing_or_late() -> None:
    queue, spare = "/q", "/q/.spare-0"
    version = encode_job(make_job(7))
    reply = _hex(b'{"success": true, "result": 7}\n\x03')

    def log(*lines: str) -> str:
        return "\n".join(f"100  {line}" for line in lines)

    write = f'pwrite64(3<{_hex(spare)}>, "{_hex(version)}", {len(version)}, 0) = {len(version)}'
    fdatasync = f"fdatasync(3<{_hex(spare)}>) = 0"
    rename = (
        f'renameat(4<{_hex(queue)}>, "{_hex(".spare-0")}", 4<{_hex(queue)}>, "{_hex("job-7")}") = 0'
    )
    dir_sync = f"fsync(4<{_hex(queue)}>) = 0"
    answer = f'sendto(9<{_hex("socket:[1]")}>, "{reply}", 32, 0, NULL, 0) = 32'

    good = read_calls(log(write, fdatasync, rename, dir_sync, answer))
    versions = Versions(good, queue)
    assert versions.faults == [] and versions.renames == 1
    ((call, message),) = replies(good)
    assert message == {"success": True, "result": 7}
    assert versions.durable_before(7, call.begin)

    unsynced = Versions(read_calls(log(write, rename, fdatasync, dir_sync, answer)), queue)
    assert unsynced.faults == ["job-7 named (line 1) before its content was synced"]

    early = read_calls(log(write, fdatasync, rename, answer, dir_sync))
    ((call, _),) = replies(early)
    assert not Versions(early, queue).durable_before(7, call.begin)

    split = read_calls(  # a sync that began before the rename returned does not count
        "\n".join(
            [
                f"100  {write}",
                f"100  {fdatasync}",
                f'100  renameat(4<{_hex(queue)}>, "{_hex(".spare-0")}", <unfinished ...>',
                f"101  {dir_sync}",
                f'100  <... renameat resumed>4<{_hex(queue)}>, "{_hex("job-7")}") = 0',
                f"101  {answer}",
            ]
        )
    )
    ((call, _),) = replies(split)
    assert not Versions(split, queue).durable_before(7, call.begin)
