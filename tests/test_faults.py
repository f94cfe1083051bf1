"""Storage faults: the real daemon on a disk that fails with ENOSPC or EIO on demand.

The daemon runs with ``JOBQUEUE_FAULT_FILE`` pointing at a control file
(see ``jobqueue.storage.faults``). While it says so, every write, fsync, rename and
directory sync of job storage fails. The promises checked here are those of
``doc/reliability.rst``: a change that cannot be made durable is reported as
an error and is not visible; reads keep working; nothing stored is damaged;
everything resumes once the disk works again.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.constants import FINALIZED, MSG_CANCELED, MSG_PRECEDING_FAILED, Status
from jobqueue.daemon import Core, build_core, start_core
from jobqueue.errors import StorageError, encode_error
from jobqueue.livejobs import LiveJobs
from jobqueue.lus import builtin_registry
from jobqueue.lus.test import LUTestDummy
from jobqueue.luxi.client import Client
from jobqueue.model import Job, merge_time
from jobqueue.processor import Processor
from jobqueue.queue import JobQueue
from jobqueue.storage.base import JobStore
from jobqueue.storage.faults import FAULT_FILE_ENV
from jobqueue.storage.memory import MemoryJobStore
from tests.daemon_helper import Daemon, wait_until
from tests.queue_files import (
    clear_fault,
    file_bytes,
    job_paths,
    load_jobs,
    read_job,
    set_fault,
    temp_files,
)

DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
LONG = {"OP_ID": "OP_TEST_DELAY", "duration": 60}
MESSAGES = {"ENOSPC": "No space left on device", "EIO": "Input/output error"}


@dataclasses.dataclass
class FaultyDaemon:
    daemon: Daemon
    control: Path
    client: Client

    @property
    def queue_dir(self) -> Path:
        return self.daemon.state_dir / "queue"

    def status(self, job_id: int) -> str:
        (row,) = self.client.query_jobs([job_id], ["status"])
        return str(row[0])

    def disk_status(self, job_id: int) -> str:
        return str(read_job(job_paths(self.queue_dir)[job_id]).status)


@pytest.fixture
def faulty(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> Iterator[FaultyDaemon]:
    """A daemon with one worker on a fault-injecting disk, faults off."""
    control = tmp_path / "faults"
    daemon = daemon_factory(workers=1, env={FAULT_FILE_ENV: str(control)}).start()
    yield FaultyDaemon(daemon, control, daemon.client())
    clear_fault(control)


def _busy_queue(fd: FaultyDaemon) -> tuple[list[int], int, int]:
    """Two finished jobs, one running (holding the only worker) and one queued."""
    finished = [fd.client.submit_job([DELAY0]) for _ in range(2)]
    for job_id in finished:
        fd.daemon.wait_job(job_id)
    running = fd.client.submit_job([LONG])
    wait_until(lambda: fd.status(running) == "running", what="the long job to run")
    queued = fd.client.submit_job([DELAY0])
    assert fd.status(queued) == "queued"
    return finished, running, queued


@pytest.mark.parametrize("fault", ["ENOSPC", "EIO"])
def test_no_change_is_reported_or_visible_while_writes_fail(
    faulty: FaultyDaemon, fault: str
) -> None:
    client = faulty.client
    finished, running, queued = _busy_queue(faulty)
    before = file_bytes(faulty.queue_dir)
    set_fault(faulty.control, fault)
    message = MESSAGES[fault]

    with pytest.raises(errors.StorageError, match=message):
        client.submit_job([DELAY0])
    results = client.submit_many_jobs([[DELAY0], [DELAY0]])
    assert [ok for ok, _ in results] == [False, False]
    for _, reason in results:  # the plain message, not a tuple of arguments
        assert reason.startswith("Cannot write ") and reason.endswith(message), reason
    with pytest.raises(errors.StorageError, match=message):
        client.set_drain_flag(True)
    with pytest.raises(errors.StorageError, match=message):
        client.cancel_job(queued)
    with pytest.raises(errors.StorageError, match=message):
        client.change_job_priority(queued, -10)
    with pytest.raises(errors.StorageError, match=message):
        client.cancel_job(running, kill=True)

    # Reads keep working and show the old state.
    assert client.query_config_values(["drain_flag", "live_jobs"]) == [False, 4]
    rows = client.query_jobs([*finished, running, queued], ["status", "priority"])
    assert rows == [["success", 0], ["success", 0], ["running", 0], ["queued", 0]]
    assert client.wait_for_job_change(queued, ["status"], None, None, 0) == [["queued"], []]
    query = client.query("job", ["id"], ["=", "status", "queued"])
    assert query["data"] == [[[0, queued]]]
    # Nothing on disk changed, nothing was left behind, the running job still runs.
    assert file_bytes(faulty.queue_dir) == before
    assert temp_files(faulty.queue_dir) == []
    assert faulty.disk_status(running) == "running"

    clear_fault(faulty.control)
    assert client.cancel_job(queued) == [True, f"Job {queued} canceled"]
    assert client.cancel_job(running, kill=True)[0] is True
    assert faulty.daemon.wait_job(running) == "canceled"
    new_job = client.submit_job([DELAY0])
    assert faulty.daemon.wait_job(new_job) == "success"
    jobs = load_jobs(faulty.queue_dir)
    assert sorted(jobs) == sorted([*finished, running, queued, new_job])
    assert jobs[queued].ops[0].result == MSG_CANCELED
    assert all(jobs[i].status == "success" for i in finished)
    assert all(file_bytes(faulty.queue_dir)[f"job-{i}"] == before[f"job-{i}"] for i in finished)


def test_failed_directory_sync_leaves_no_trace(faulty: FaultyDaemon) -> None:
    """Only the directory fsync fails: a new name must not survive unreported."""
    client = faulty.client
    job_ids = set(job_paths(faulty.queue_dir))
    set_fault(faulty.control, "EIO fsync_dir")
    with pytest.raises(errors.StorageError, match="Input/output error"):
        client.submit_job([DELAY0])
    assert set(job_paths(faulty.queue_dir)) == job_ids
    with pytest.raises(errors.StorageError, match="Input/output error"):
        client.set_drain_flag(True)
    assert client.query_config_values(["drain_flag"]) == [False]
    assert not (faulty.queue_dir / "drain").exists()

    clear_fault(faulty.control)
    assert client.set_drain_flag(True) is True
    set_fault(faulty.control, "EIO fsync_dir")
    with pytest.raises(errors.StorageError, match="Input/output error"):
        client.set_drain_flag(False)
    assert client.query_config_values(["drain_flag"]) == [True]
    assert (faulty.queue_dir / "drain").exists()

    clear_fault(faulty.control)
    assert client.set_drain_flag(False) is True
    assert client.query_config_values(["drain_flag"]) == [False]
    assert temp_files(faulty.queue_dir) == []


@pytest.mark.parametrize("fault", ["ENOSPC", "EIO fsync_dir"])
def test_archive_failure_keeps_the_job_in_one_place(faulty: FaultyDaemon, fault: str) -> None:
    client = faulty.client
    job_id = client.submit_job([DELAY0])
    faulty.daemon.wait_job(job_id)
    set_fault(faulty.control, fault)
    with pytest.raises(errors.StorageError):
        client.archive_job(job_id)
    with pytest.raises(errors.StorageError):
        client.auto_archive_jobs(-1, 10)
    paths = job_paths(faulty.queue_dir)  # fails if the job were in two places
    live = paths[job_id].parent == faulty.queue_dir
    assert client.query_jobs(None, ["id"]) == ([[job_id]] if live else [])
    assert client.query_jobs([job_id], ["status"]) == [["success"]]
    clear_fault(faulty.control)
    assert client.auto_archive_jobs(-1, 10) == [1 if live else 0, 0]
    assert client.query_jobs(None, ["id"]) == []
    assert job_paths(faulty.queue_dir)[job_id].parent.parent.name == "archive"


@pytest.mark.parametrize("op_count", [1, 2])
def test_running_job_whose_end_cannot_be_written_ends_final_and_consistent(
    faulty: FaultyDaemon, op_count: int
) -> None:
    """The write of a running job's end fails; once space returns it ends in error."""
    client = faulty.client
    done = client.submit_job([DELAY0])
    faulty.daemon.wait_job(done)
    done_bytes = (faulty.queue_dir / f"job-{done}").read_bytes()
    first = {"OP_ID": "OP_TEST_DELAY", "duration": 0.5}
    job_id = client.submit_job([first, DELAY0][:op_count])
    # Told by the daemon, so durable: a reader of the files may see a start
    # before its sync, which the fault set right after could still fail.
    wait_until(lambda: faulty.status(job_id) == "running", what="the job to run")
    assert faulty.disk_status(job_id) == "running"
    set_fault(faulty.control, "ENOSPC")
    wait_until(
        lambda: f"Cannot write job {job_id}" in faulty.daemon.log(),
        what="a failed write of the running job",
    )
    assert faulty.disk_status(job_id) == "running"
    clear_fault(faulty.control)

    status = faulty.daemon.wait_job(job_id)
    job = read_job(faulty.queue_dir / f"job-{job_id}")
    assert job.status == status == "error"
    assert all(op.status in FINALIZED for op in job.ops)
    assert job.ops[0].result.startswith("Result lost: Cannot write")
    assert job.ops[0].end_timestamp is not None
    for op in job.ops[1:]:  # never run after the first one failed
        assert op.status == "error" and op.exec_timestamp is None
    assert job.end_timestamp is not None
    assert client.query_jobs([job_id], ["status", "opstatus"]) == [
        [status, [op.status for op in job.ops]]
    ]
    assert (faulty.queue_dir / f"job-{done}").read_bytes() == done_bytes
    assert temp_files(faulty.queue_dir) == []
    # The queue still works normally.
    assert faulty.daemon.wait_job(client.submit_job([DELAY0])) == "success"


def test_a_disk_full_for_a_while_does_not_end_a_running_command(
    faulty: FaultyDaemon, tmp_path: Path
) -> None:
    """A command prints a line every 0.1 s while the disk is full for a while: the job
    goes on, and every line is on disk once there is room again (issue 14, item 8)."""
    progress = tmp_path / "progress"
    lines = 60
    script = f'for i in $(seq 1 {lines}); do echo "line $i"; echo $i > {progress}; sleep 0.1; done'
    job_id = faulty.client.submit_job([{"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", script]}])

    def printed() -> int:
        try:
            return int(progress.read_text())
        except (OSError, ValueError):
            return 0

    wait_until(lambda: printed() >= 5, what="the command to print")
    set_fault(faulty.control, "ENOSPC")
    wait_until(
        lambda: f"Cannot write job {job_id}" in faulty.daemon.log(), what="a failed log write"
    )
    full_from = printed()
    wait_until(lambda: printed() >= full_from + 10, what="ten lines printed on a full disk")
    assert faulty.disk_status(job_id) == "running"
    clear_fault(faulty.control)

    assert faulty.daemon.wait_job(job_id) == "success"
    job = read_job(faulty.queue_dir / f"job-{job_id}")
    output = [entry[3] for entry in job.ops[0].log if entry[2] == "stdout"]
    assert output == [f"line {number}" for number in range(1, lines + 1)]
    serials = [entry[0] for entry in job.ops[0].log]
    assert serials == sorted(set(serials))
    assert f"Job {job_id} written again with" in faulty.daemon.log()
    assert temp_files(faulty.queue_dir) == []


class FailingMemoryStore(MemoryJobStore):
    """Job writes of the ids in ``fail_ids`` fail with ENOSPC; ``failed`` records them."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_ids: set[int] = set()
        self.failed: set[int] = set()

    def replace_job(self, job: Job) -> None:
        if job.id in self.fail_ids:
            self.failed.add(job.id)
            raise StorageError("Cannot write: No space left on device", 28)
        super().replace_job(job)


def test_dependents_wait_for_an_end_that_is_on_disk() -> None:
    """A job whose end could not be written is not final to its dependents (found by the
    fault storm: a dependent ran while its dependency's file still said running)."""
    store = FailingMemoryStore()
    with _started_core(store, 2) as core:
        queue, live = core.queue, core.live
        first = _running_job(queue, live)
        store.fail_ids.add(first)
        wait_until(lambda: first in store.failed, what="its end to fail to be written")
        second = queue.submit_job([{**DELAY0, "depends": [[first, []]]}])
        wait_until(
            lambda: (
                second in queue.depmgr.waiting_jobs() or _indexed_status(live, second) in FINALIZED
            ),
            what="the dependent to park or to finish",
        )
        assert second in queue.depmgr.waiting_jobs()
        assert _indexed_status(live, first) == Status.RUNNING
        store.fail_ids.clear()
        wait_until(lambda: _indexed_status(live, second) in FINALIZED, what="the dependent")
        first_job, second_job = store.read_job(first), store.read_job(second)
        assert first_job is not None and second_job is not None
        assert first_job.ops[0].status == Status.ERROR
        assert str(first_job.ops[0].result).startswith("Result lost: Cannot write")
        assert second_job.status == Status.SUCCESS
        assert first_job.end_timestamp is not None and second_job.ops[0].exec_timestamp
        assert merge_time(first_job.end_timestamp) <= merge_time(second_job.ops[0].exec_timestamp)


def test_a_job_no_store_can_encode_ends_in_error_not_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last line behind the processor's check (``jobqueue.plainjson``): should a
    result no job can store get past it, the job's write fails as on a full disk
    and the job ends in error; before, the worker died and the job stayed running."""
    monkeypatch.setattr(Processor, "_refuse_unstorable", lambda *args: None)
    monkeypatch.setattr(LUTestDummy, "exec", lambda self: {"sizes": {1, 2}})
    store = MemoryJobStore()
    with _started_core(store, 1) as core:
        job_id = core.queue.submit_job([{"OP_ID": "OP_TEST_DUMMY"}])
        wait_until(lambda: _indexed_status(core.live, job_id) in FINALIZED, what="its end")
        job = store.read_job(job_id)
        assert job is not None and job.status == Status.ERROR
        lost = f"Result lost: Job {job_id} cannot be stored as JSON"
        assert str(job.ops[0].result).startswith(lost)


def test_a_bug_in_a_jobs_step_ends_it_in_error_and_its_dependents_go_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception no handler expects (a bug of ours) used to be swallowed by the
    worker pool, and the job stayed queued for ever; it now fails, naming the bug."""
    job_started = JobQueue.job_started

    def buggy_job_started(queue: JobQueue, job: Job) -> None:
        if len(job.ops) == 2:  # the first job alone
            raise RuntimeError("boom")
        job_started(queue, job)

    monkeypatch.setattr(JobQueue, "job_started", buggy_job_started)
    store = MemoryJobStore()
    with _started_core(store, 2) as core:
        queue, live = core.queue, core.live
        first = queue.submit_job([DELAY0, DELAY0])
        dependent = queue.submit_job([{**DELAY0, "depends": [[first, ["error"]]]}])
        wait_until(lambda: _indexed_status(live, dependent) in FINALIZED, what="the dependent")
        job = store.read_job(first)
        assert job is not None and [str(op.status) for op in job.ops] == ["error", "error"]
        assert job.ops[0].result == [
            "OpExecError",
            ["Internal error of the daemon: RuntimeError: boom"],
        ]
        assert job.ops[1].result == encode_error(errors.OpExecError(MSG_PRECEDING_FAILED))
        assert _indexed_status(live, dependent) == Status.SUCCESS
        assert f"Job {first}: internal error; the job fails" in caplog.text


def test_a_bug_after_a_jobs_end_was_written_leaves_that_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug after the end was written changes nothing stored; the job counts as
    ended (before, it stayed active and its dependents waited for ever)."""
    publish = JobQueue._publish

    def publish_then_break(queue: JobQueue, job: Job) -> None:
        publish(queue, job)
        if job.is_finalized:
            raise RuntimeError("broken after the end was written")

    monkeypatch.setattr(JobQueue, "_publish", publish_then_break)
    store = MemoryJobStore()
    with _started_core(store, 2) as core:
        queue = core.queue
        job_id, dependent = _kill_while_a_dependent_waits(queue, core.live)
        job = store.read_job(job_id)
        assert job is not None and job.status == Status.CANCELED
        assert _indexed_status(core.live, dependent) == Status.SUCCESS
        assert queue.active_job(job_id) is None


class BrokenEndStore(MemoryJobStore):
    """The first write of a finished version of a job raises what no handler expects."""

    def __init__(self) -> None:
        super().__init__()
        self.broke: list[int] = []

    def replace_job(self, job: Job) -> None:
        if job.is_finalized and not self.broke:
            self.broke.append(job.id)
            raise RuntimeError("a bug in the store")
        super().replace_job(job)


def test_an_end_that_a_bug_kept_from_the_disk_is_written_before_anyone_is_told() -> None:
    """The job ended in memory, but its write raised something other than a
    StorageError: it is written again as it ended before it counts as ended."""
    store = BrokenEndStore()
    with _started_core(store, 2) as core:
        queue = core.queue
        job_id, dependent = _kill_while_a_dependent_waits(queue, core.live)
        assert store.broke == [job_id]
        job = store.read_job(job_id)
        assert job is not None and job.status == Status.CANCELED
        assert _indexed_status(core.live, job_id) == Status.CANCELED
        assert _indexed_status(core.live, dependent) == Status.SUCCESS


@contextlib.contextmanager
def _started_core(store: JobStore, workers: int, **options: Any) -> Iterator[Core]:
    """A queue on ``store`` with ``workers`` workers, shut down when the block ends."""
    core = build_core(store, builtin_registry(), **options)
    start_core(core, workers)
    try:
        yield core
    finally:
        core.queue.prepare_shutdown()
        core.stop()


def _kill_while_a_dependent_waits(queue: JobQueue, live: LiveJobs) -> tuple[int, int]:
    """Kill a running job once a job waits for it to be canceled; both ids, once
    the dependent has ended."""
    job_id = _running_job(queue, live, duration=60)
    dependent = queue.submit_job([{**DELAY0, "depends": [[job_id, ["canceled"]]]}])
    wait_until(lambda: dependent in queue.depmgr.waiting_jobs(), what="the dependent to wait")
    assert queue.cancel_job(job_id, kill=True)[0]
    wait_until(lambda: _indexed_status(live, dependent) in FINALIZED, what="the dependent")
    return job_id, dependent


def _running_job(queue: JobQueue, live: LiveJobs, duration: float = 0.3) -> int:
    """Submit a job that runs for ``duration`` seconds; its id once it shows as running."""
    job_id = queue.submit_job([{"OP_ID": "OP_TEST_DELAY", "duration": duration}])
    wait_until(lambda: _indexed_status(live, job_id) == Status.RUNNING, what="it to run")
    return job_id


def _indexed_status(live: LiveJobs, job_id: int) -> Status | None:
    """The status as last written and published."""
    return live.status_of(job_id)


class UnknownOutcomeStore(MemoryJobStore):
    """The next end written of a job in ``apply_then_fail`` is stored, then reported
    as failed: a write whose outcome the writer cannot know (an etcd member lost
    before it answered, a rename whose directory sync failed)."""

    def __init__(self) -> None:
        super().__init__()
        self.apply_then_fail: set[int] = set()

    def replace_job(self, job: Job) -> None:
        super().replace_job(job)
        if job.id in self.apply_then_fail and job.is_finalized:
            self.apply_then_fail.discard(job.id)
            raise StorageError("Cannot write job: connection lost", 5)


def test_an_end_stored_despite_a_failed_write_is_published_once() -> None:
    """Found by the etcd member test: the end was stored, the write reported a lost
    connection, and the job stayed ``running`` to every reader forever."""
    store = UnknownOutcomeStore()
    ended: list[int] = []
    with _started_core(store, 2, on_job_end=lambda job: ended.append(job.id)) as core:
        queue, live = core.queue, core.live
        first = _running_job(queue, live)
        store.apply_then_fail.add(first)
        second = queue.submit_job([{**DELAY0, "depends": [[first, []]]}])
        wait_until(lambda: _indexed_status(live, first) in FINALIZED, what="its end to show")
        assert _indexed_status(live, first) == Status.SUCCESS  # as stored
        assert first not in store.apply_then_fail  # the end write did fail
        wait_until(lambda: _indexed_status(live, second) == Status.SUCCESS, what="the dependent")
        wait_until(lambda: queue.active_job(first) is None, what="the first to leave the queue")
        assert ended.count(first) == 1
