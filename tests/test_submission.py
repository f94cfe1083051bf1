"""Submission: typed once, reason trails, nesting bounds, and no orphaned dependents."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import submission
from jobqueue.constants import FINALIZED, Status
from jobqueue.daemon import Core, build_core, start_core
from jobqueue.errors import (
    ECODE_INVAL,
    AccessDenied,
    GenericError,
    JobQueueDrainError,
    JobQueueError,
    JobQueueFull,
    OpPrereqError,
)
from jobqueue.livejobs import Limits
from jobqueue.lus import builtin_registry, command, test
from jobqueue.model import Job, Submitter
from jobqueue.opcodes import (
    INT,
    MAX_NESTING,
    REASON_SOURCE_DAEMON,
    Dependency,
    InvalidOpCode,
    OpCode,
    Param,
    ReasonEntry,
    Registry,
)
from jobqueue.queue import JobQueue
from jobqueue.storage.files import Disk, FileJobStore
from jobqueue.submission import JobSubmission, load_opcodes, prepare_jobs
from tests.opcode_samples import LUPluginThing
from tests.polling import poll_until
from tests.queue_harness import QueueUnderTest

DUMMY = {"OP_ID": "OP_TEST_DUMMY"}


class FailJob(Disk):
    """Fails the rename that would put one job's file in place."""

    def __init__(self) -> None:
        self.failing: str | None = None
        self.failing_dir_syncs: list[bool] = []  # per coming directory sync: fail it?

    def fsync_dir(self, path: str) -> None:
        if self.failing_dir_syncs and self.failing_dir_syncs.pop(0):
            raise OSError(errno.EIO, "Input/output error")
        super().fsync_dir(path)

    def replace(self, src: str, dst: str) -> None:
        if self.failing is not None and dst.endswith(f"/{self.failing}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        super().replace(src, dst)


@pytest.fixture
def disk() -> FailJob:
    return FailJob()


@pytest.fixture
def make_queue(tmp_path: Path, disk: FailJob) -> Iterator[Callable[..., JobQueue]]:
    made: list[Core] = []

    def make(
        max_jobs: int = 100,
        *,
        max_opcodes: int = 1000,
        max_opcode_bytes: int = 1 << 20,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.time,
        run: bool = False,
    ) -> JobQueue:
        store = FileJobStore(str(tmp_path / "queue"), disk=disk)
        core = build_core(
            store,
            registry or builtin_registry(),
            limits=Limits(max_jobs, max_opcodes, max_opcode_bytes),
            clock=clock,
        )
        start_core(core, 1 if run else 0)  # unless asked, nothing runs: only submission is tested
        made.append(core)
        return QueueUnderTest(core)  # type: ignore[return-value]

    yield make
    for core in made:
        core.queue.prepare_shutdown()
        core.stop()


def test_dependent_of_a_job_refused_for_room_is_refused(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue(max_jobs=1)
    queue.submit_job([DUMMY])
    results = queue.submit_many_jobs([[DUMMY], [{**DUMMY, "depends": [[-1, []]]}], [DUMMY]])
    assert results[0][0] is False and "full" in results[0][1]
    assert results[1][0] is False
    assert "of this submission was refused" in results[1][1]
    assert results[2][0] is False and "full" in results[2][1]
    assert queue.live.count() == 1


def test_jobs_past_the_opcode_limit_are_refused_until_room_is_made(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue(max_opcodes=5)
    first = queue.submit_job([DUMMY] * 3)
    results = queue.submit_many_jobs([[DUMMY] * 3, [DUMMY] * 2, [DUMMY]])
    assert results[0] == [False, "The job queue is full (5 opcodes)"]
    assert results[1][0] is True  # the smaller job after it still fits
    assert results[2][0] is False and "full (5 opcodes)" in results[2][1]
    assert queue.live.opcode_count() == 5
    with pytest.raises(JobQueueFull):
        queue.submit_job([DUMMY])
    assert queue.cancel_job(first)[0] is True
    assert queue.archive_job(first) is True
    assert queue.live.opcode_count() == 2
    queue.submit_job([DUMMY] * 3)
    assert queue.live.opcode_count() == 5


def test_a_job_larger_than_the_opcode_limit_is_refused_as_invalid(
    make_queue: Callable[..., JobQueue],
) -> None:
    """It could never be taken, however empty the queue: the job is at fault."""
    queue = make_queue(max_opcodes=3)
    with pytest.raises(OpPrereqError, match="4 opcodes; the queue takes at most 3"):
        queue.submit_job([DUMMY] * 4)
    assert queue.live.count() == 0 and queue.live.opcode_count() == 0


def test_jobs_are_refused_once_their_inputs_pass_the_byte_limit(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue(max_opcode_bytes=10_000)
    large = {**DUMMY, "messages": ["x" * 4000]}
    first = queue.submit_job([large])
    queue.submit_job([large])  # 8,000 and more: still under the limit
    assert queue.live.input_bytes() > 8000
    results = queue.submit_many_jobs([[large], [DUMMY]])  # measured once stored: both go in
    assert [ok for ok, _ in results] == [True, True]
    with pytest.raises(JobQueueFull, match="10000 bytes of opcodes"):
        queue.submit_job([DUMMY])
    assert queue.cancel_job(first)[0] is True and queue.archive_job(first) is True
    assert queue.live.input_bytes() < 10_000
    queue.submit_job([DUMMY])


def test_a_job_larger_than_the_opcode_limit_is_invalid_even_when_the_queue_is_full(
    make_queue: Callable[..., JobQueue],
) -> None:
    """Not JobQueueFull: a client would try again a job that can never be taken."""
    queue = make_queue(max_jobs=1, max_opcodes=3)
    queue.submit_job([DUMMY])
    with pytest.raises(OpPrereqError, match="4 opcodes"):
        queue.submit_job([DUMMY] * 4)


def test_opcodes_of_a_submission_being_written_are_not_given_twice(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue(max_opcodes=5)
    store = queue.core.store  # type: ignore[attr-defined]
    create, entered, release = store.create_jobs, threading.Event(), threading.Event()

    def held_create(jobs: list[Job]) -> list[Any]:
        entered.set()
        assert release.wait(30)
        return create(jobs)

    store.create_jobs = held_create
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(queue.submit_job([DUMMY] * 3)))
    thread.start()
    try:
        assert entered.wait(30)
        store.create_jobs = create  # the next call writes at once
        with pytest.raises(JobQueueFull, match="5 opcodes"):
            queue.submit_job([DUMMY] * 3)
        queue.submit_job([DUMMY] * 2)  # what is left of the room
    finally:
        release.set()
        thread.join(30)
    assert len(first) == 1 and queue.live.opcode_count() == 5


def test_room_claimed_by_a_submission_that_failed_is_given_back(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue(max_jobs=1, max_opcodes=3)
    real = queue.core.queue  # type: ignore[attr-defined]

    def broken_clock() -> list[int]:
        raise RuntimeError("a bug between claiming room and writing")

    real.now = broken_clock
    with pytest.raises(RuntimeError, match="a bug"):
        queue.submit_job([DUMMY] * 3)
    del real.now
    queue.submit_job([DUMMY] * 3)  # neither the slot nor the opcodes leaked
    assert queue.live.count() == 1 and queue.live.opcode_count() == 3


def test_concurrent_callers_share_the_opcode_room(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue(max_opcodes=5)
    callers = [JobSubmission([DUMMY] * 3, None) for _ in range(3)]
    results = queue.submit_each(callers)
    assert sum(isinstance(result, int) for result in results) == 1
    assert [type(result) for result in results if not isinstance(result, int)] == [
        JobQueueFull,
        JobQueueFull,
    ]
    assert queue.live.opcode_count() == 3


def test_dependent_of_a_job_whose_write_failed_is_withdrawn(
    make_queue: Callable[..., JobQueue], disk: FailJob, tmp_path: Path
) -> None:
    queue = make_queue()
    first = queue.submit_job([DUMMY])
    disk.failing = f"job-{first + 1}"  # the next job's file cannot be written
    results = queue.submit_many_jobs(
        [
            [DUMMY],
            [{**DUMMY, "depends": [[-1, ["success"]]]}],
            [{**DUMMY, "depends": [[-1, []]]}],  # depends on the withdrawn one: also refused
            [DUMMY],
        ]
    )
    assert [ok for ok, _ in results] == [False, False, False, True]
    assert "No space left on device" in results[0][1]
    assert f"Dependency job {first + 1} of this submission was refused" in results[1][1]
    assert f"Dependency job {first + 2} of this submission was refused" in results[2][1]
    files = sorted(p.name for p in (tmp_path / "queue").glob("job-*"))
    assert files == sorted([f"job-{first}", f"job-{results[3][1]}"])
    assert queue.live.ids() == [first, results[3][1]]


def test_a_withdrawn_job_whose_removal_was_not_synced_is_still_refused(
    make_queue: Callable[..., JobQueue], disk: FailJob, tmp_path: Path
) -> None:
    """Its file is gone (if not durably): acknowledging it would promise a lost job."""
    queue = make_queue()
    first = queue.submit_job([DUMMY])
    disk.failing = f"job-{first + 1}"
    disk.failing_dir_syncs = [False, True]  # the batch's sync works, the withdrawal's fails
    results = queue.submit_many_jobs([[DUMMY], [{**DUMMY, "depends": [[-1, []]]}]])
    assert [ok for ok, _ in results] == [False, False]
    assert not (tmp_path / "queue" / f"job-{first + 2}").exists()
    assert queue.live.ids() == [first]


CLIENT_ENTRY = ["gnt:client:gnt-debug", "testing", 1_600_000_000_000_000_000]


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def test_every_opcode_gets_the_queues_reason_entry(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue(clock=lambda: 1_700_000_000.25)
    stamp = int(1_700_000_000.25 * 1_000_000_000)
    results = queue.submit_many_jobs([[{**DUMMY, "reason": [CLIENT_ENTRY]}], [DUMMY, DUMMY]])
    (first, second) = [job_id for _, job_id in results]
    first_job, second_job = queue.store.read_job(first), queue.store.read_job(second)
    assert first_job is not None and second_job is not None
    assert first_job.ops[0].input["reason"] == [
        CLIENT_ENTRY,
        [REASON_SOURCE_DAEMON, f"submitted as job {first}", stamp],
    ]
    assert [op.input["reason"] for op in second_job.ops] == [
        [[REASON_SOURCE_DAEMON, f"submitted as job {second}", stamp]]
    ] * 2
    (row,) = queue.query_jobs([first], ["ops"])
    assert row[0][0]["reason"][-1][0] == REASON_SOURCE_DAEMON


def test_prepared_records_hold_resolved_dependencies_and_the_trail() -> None:
    registry = builtin_registry()
    jobs = [[DUMMY], [{**DUMMY, "depends": [[-1, ["success"]], ["7", []]]}], [{"OP_ID": "OP_X"}]]
    prepared = prepare_jobs(
        jobs,
        registry,
        exists=lambda job_id: job_id == 7,
        relative_ok=True,
        allocate_ids=lambda count: list(range(50, 50 + count)),
        timestamp_ns=99,
    )
    first, second, third = prepared
    assert isinstance(third, Exception) and "OP_X" in str(third)
    assert isinstance(first, tuple) and isinstance(second, tuple)
    job_id, (op,) = second
    assert job_id == 51
    assert op.depends == (Dependency(50, (Status.SUCCESS,)), Dependency(7, ()))
    assert op.reason == (ReasonEntry(REASON_SOURCE_DAEMON, "submitted as job 51", 99),)
    assert op.to_dict() == {
        "OP_ID": "OP_TEST_DUMMY",
        "depends": [[50, ["success"]], [7, []]],
        "reason": [[REASON_SOURCE_DAEMON, "submitted as job 51", 99]],
        "result": None,
        "messages": [],
        "fail": False,
        "submit_jobs": [],
    }
    assert first[1][0].reason == (ReasonEntry(REASON_SOURCE_DAEMON, "submitted as job 50", 99),)


def test_opcodes_with_the_same_trail_share_its_extension() -> None:
    """A job of many opcodes keeps one trail while it waits, not one per opcode."""
    client = [CLIENT_ENTRY]
    ops = [DUMMY, DUMMY, {**DUMMY, "reason": client}, {**DUMMY, "reason": list(client)}]
    (prepared,) = prepare_jobs(
        [ops],
        builtin_registry(),
        exists=lambda job_id: False,
        relative_ok=False,
        allocate_ids=lambda count: [60],
        timestamp_ns=5,
    )
    assert isinstance(prepared, tuple)
    bare_a, bare_b, given_a, given_b = prepared[1]
    ours = [REASON_SOURCE_DAEMON, "submitted as job 60", 5]
    assert bare_a.to_dict()["reason"] == [ours]
    assert given_a.to_dict()["reason"] == given_b.to_dict()["reason"] == [CLIENT_ENTRY, ours]
    assert bare_a.reason is bare_b.reason and bare_a.stored()["reason"] is bare_b.stored()["reason"]
    assert given_a.reason is given_b.reason
    assert given_a.reason is not bare_a.reason and given_a.reason[-1] == bare_a.reason[0]


def test_older_style_plugin_opcodes_keep_a_trail_each() -> None:
    """Their LUs get plain lists, theirs to change: one opcode's never reaches another's."""

    class OpOlder(OpCode):
        OP_ID = "OP_OLDER"
        PARAMS = (Param("size", INT, default=0),)

    registry = builtin_registry()
    registry.register(OpOlder, LUPluginThing)
    (prepared,) = prepare_jobs(
        [[{"OP_ID": "OP_OLDER"}] * 2],
        registry,
        exists=lambda job_id: False,
        relative_ok=False,
        allocate_ids=lambda count: [61],
        timestamp_ns=5,
    )
    assert isinstance(prepared, tuple)
    first, second = prepared[1]
    assert first.reason == second.reason == [[REASON_SOURCE_DAEMON, "submitted as job 61", 5]]
    first.reason.append(["gnt:plugin", "changed", 6])
    assert len(second.reason) == 1 and len(second.stored()["reason"]) == 1


@pytest.mark.parametrize("where", ["result", "then"])
def test_too_deeply_nested_opcodes_are_refused_at_submission(
    make_queue: Callable[..., JobQueue], where: str
) -> None:
    queue = make_queue()
    if where == "result":
        deep = {**DUMMY, "result": nested(MAX_NESTING)}
    else:
        then = [{**DUMMY, "result": nested(MAX_NESTING)}]
        deep = {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["true"], "items": ["a"], "then": then}
    with pytest.raises(OpPrereqError) as info:
        queue.submit_job([deep])
    assert info.value.args[1] == ECODE_INVAL and "nested deeper than 64" in str(info.value)
    results = queue.submit_many_jobs([[deep], [DUMMY]])
    assert results[0][0] is False and "nested deeper than 64" in results[0][1]
    assert results[1][0] is True
    assert queue.live.ids() == [results[1][1]]


class CountingRegistry(Registry):
    """The built-in opcodes; counts how often opcodes are typed and loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.register_all([*test.PAIRS, *command.PAIRS])
        self.typed_calls = 0
        self.load_calls = 0

    def typed(self, data: Any) -> OpCode:
        self.typed_calls += 1
        return super().typed(data)

    def load(self, data: dict[str, Any]) -> OpCode | InvalidOpCode:
        self.load_calls += 1
        return super().load(data)


def wait_finished(queue: JobQueue, job_id: int) -> str:
    rows: list[list[Any]] = []

    def finished() -> bool:
        rows[:] = queue.query_jobs([job_id], ["status"])
        return rows[0][0] in FINALIZED

    assert poll_until(finished, 15.0), f"job {job_id} is {rows}"
    return str(rows[0][0])


def test_a_job_that_only_waits_has_no_kill_event(make_queue: Callable[..., JobQueue]) -> None:
    """An event costs about 1 KB: a queue of waiting jobs makes none."""
    queue = make_queue()
    job_ids = [queue.submit_job([DUMMY]) for _ in range(3)]
    queue.change_job_priority(job_ids[0], -10)
    actives = [queue.active_job(job_id) for job_id in job_ids]
    assert all(active is not None and active._kill is None for active in actives)
    queue.kill_running()  # a slow shutdown asks every job, and makes them then
    assert all(active is not None and active.kill.is_set() for active in actives)


def test_opcodes_are_typed_once_not_per_run(make_queue: Callable[..., JobQueue]) -> None:
    registry = CountingRegistry()
    queue = make_queue(registry=registry, run=True)
    job_id = queue.submit_job([DUMMY, {"OP_ID": "OP_TEST_DELAY", "duration": 0, "repeat": 2}])
    assert wait_finished(queue, job_id) == "success"
    assert (registry.typed_calls, registry.load_calls) == (2, 0)


def restarted_with_a_job(
    make_queue: Callable[..., JobQueue], **options: Any
) -> tuple[JobQueue, int]:
    """A queue started (with ``options``) on what another left: a job of two opcodes."""
    first = make_queue()
    job_id = first.submit_job([DUMMY, DUMMY])
    first.prepare_shutdown()
    first.shutdown()
    return make_queue(**options), job_id


def test_a_loaded_job_is_typed_once_at_start(make_queue: Callable[..., JobQueue]) -> None:
    registry = CountingRegistry()
    second, job_id = restarted_with_a_job(make_queue, registry=registry, run=True)
    assert registry.load_calls == 2
    assert wait_finished(second, job_id) == "success"
    assert (registry.typed_calls, registry.load_calls) == (2, 2)  # typed by load, only


def test_a_loaded_job_and_its_published_copy_share_one_input_per_opcode(
    make_queue: Callable[..., JobQueue],
) -> None:
    second, job_id = restarted_with_a_job(make_queue)
    active, published = second.active_job(job_id), second.live.latest(job_id)
    assert active is not None and published is not None and published is not active.job
    for op, copied in zip(active.job.ops, published.ops, strict=True):
        assert op.opcode is not None and op.input is op.opcode.stored() is copied.input


def test_a_job_rewritten_after_a_restart_keeps_its_inputs_byte_for_byte(
    make_queue: Callable[..., JobQueue],
) -> None:
    second, job_id = restarted_with_a_job(make_queue)
    before = second.store.read_job(job_id)
    second.change_job_priority(job_id, 10)  # rewrites the job
    after = second.store.read_job(job_id)
    assert before is not None and after is not None and after.priority == 10
    assert [json.dumps(op.input) for op in after.ops] == [json.dumps(op.input) for op in before.ops]


def test_a_stored_opcode_no_longer_registered_loads_and_fails_when_run(
    make_queue: Callable[..., JobQueue], tmp_path: Path
) -> None:
    store = FileJobStore(str(tmp_path / "queue"))
    store.replace_job(Job.new(5, [{"OP_ID": "OP_GONE", "size": 1}, DUMMY], [1, 0]))
    queue = make_queue(run=True)
    assert wait_finished(queue, 5) == "error"
    (row,) = queue.query_jobs([5], ["opstatus", "opresult", "summary"])
    assert row[0] == ["error", "error"]
    assert row[1][0] == ["OpCodeUnknown", ["Unknown opcode 'OP_GONE'"]]
    assert row[2] == ["GONE", "TEST_DUMMY"]


def test_load_opcodes_types_only_what_may_still_run() -> None:
    registry = builtin_registry()
    job = Job.new(5, [DUMMY, {"OP_ID": "OP_TEST_DELAY", "repeat": -1}, DUMMY], [1, 0])
    job.ops[0].status = Status.SUCCESS
    load_opcodes(job, registry)
    done, broken, pending = (op.opcode for op in job.ops)
    assert done is None
    assert isinstance(broken, InvalidOpCode) and isinstance(broken.error, OpPrereqError)
    assert pending == registry.typed(DUMMY)


def test_a_job_read_back_keeps_one_form_and_one_trail_per_opcode() -> None:
    """Read back, a job costs what it did when submitted; its stored form is unchanged."""
    registry = builtin_registry()
    trail = [CLIENT_ENTRY, [REASON_SOURCE_DAEMON, "submitted as job 5", 1]]
    op = {**registry.validate(DUMMY), "reason": trail}
    old_form = {"OP_ID": "OP_TEST_DUMMY", "reason": trail}  # keys a later version fills in
    stored = Job.new(5, [op, op, old_form], [1, 0]).to_dict()
    job = Job.from_dict(json.loads(json.dumps(stored)))
    load_opcodes(job, registry)
    first, second, old = job.ops
    assert first.input is first.opcode.stored() and second.input is second.opcode.stored()
    assert second.opcode.reason is first.opcode.reason
    assert second.input["reason"] is first.input["reason"]
    assert first.input["OP_ID"] is second.input["OP_ID"] is type(first.opcode).OP_ID
    assert old.input is not old.opcode.stored() and old.input == old_form
    assert json.dumps(job.to_dict()) == json.dumps(stored), "the same bytes: keys in order"


# -- submit_each: several callers' single jobs as one submission ------------------
def stranger() -> Submitter:
    """A client that is not an admin (neither root nor the daemon's user)."""
    return Submitter.client(uid=54321, gid=54321, groups=[], pid=4321)


def test_submit_each_stores_every_callers_job_in_one_write(
    make_queue: Callable[..., JobQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue()
    writes: list[list[int]] = []
    store = queue.core.store  # type: ignore[attr-defined]
    create_jobs = store.create_jobs

    def counted(jobs: list[Job]) -> Any:
        writes.append([job.id for job in jobs])
        return create_jobs(jobs)

    monkeypatch.setattr(store, "create_jobs", counted)
    callers = [stranger(), None, Submitter.client(uid=777, gid=7, groups=[7], pid=99)]
    results = queue.submit_each(
        [JobSubmission([DUMMY], who, options={"retries": n + 1}) for n, who in enumerate(callers)]
    )
    assert all(isinstance(result, int) for result in results)
    assert writes == [results]
    for job_id, caller, retries in zip(results, callers, (1, 2, 3), strict=True):
        stored = store.read_job(job_id)
        assert stored.submitter == (caller or Submitter.daemon())
        assert stored.retry is not None and stored.retry.retries == retries


def test_submit_each_refuses_a_callers_job_alone(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue()
    results = queue.submit_each(
        [
            JobSubmission([DUMMY], None),
            JobSubmission([DUMMY], stranger(), options={"no such option": 1}),
            JobSubmission([{"OP_ID": "OP_NO_SUCH_THING"}], None),
            JobSubmission([DUMMY], stranger(), drained_ok=True),  # not an admin
            JobSubmission([DUMMY], None),
        ]
    )
    assert isinstance(results[0], int) and isinstance(results[4], int)
    assert isinstance(results[1], OpPrereqError) and "no such option" in str(results[1])
    assert isinstance(results[2], GenericError) and "OP_NO_SUCH_THING" in str(results[2])
    assert isinstance(results[3], AccessDenied)
    assert results[4] == results[0] + 1  # the refused callers took no id


def test_submit_each_on_a_drained_queue_takes_only_admins_past_the_flag(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue()
    queue.set_drain_flag(True)
    results = queue.submit_each(
        [
            JobSubmission([DUMMY], stranger()),
            JobSubmission([DUMMY], None, drained_ok=True),
            JobSubmission([DUMMY], stranger(), drained_ok=True),
        ]
    )
    assert isinstance(results[0], JobQueueDrainError)
    assert isinstance(results[1], int)
    assert isinstance(results[2], AccessDenied)


def test_submit_each_after_shutdown_began_refuses_every_caller(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue()
    queue.prepare_shutdown()
    results = queue.submit_each([JobSubmission([DUMMY], None), JobSubmission([DUMMY], None)])
    assert [type(result) for result in results] == [JobQueueError, JobQueueError]


@pytest.mark.parametrize("stage", ["options", "opcodes"])
def test_submit_each_an_unexpected_error_refuses_that_caller_alone(
    make_queue: Callable[..., JobQueue], monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """A bug met checking one caller's job (not a typed refusal) fails that job only."""
    queue = make_queue()
    poisoned = {"OP_ID": "OP_TEST_DUMMY", "comment": "poison"}
    if stage == "options":
        real = submission.parse_options

        def parse(value: Any, count: int) -> Any:
            if value == {"poison": True}:
                raise RuntimeError("options checker broke")
            return real(value, count)

        monkeypatch.setattr(submission, "parse_options", parse)
        bad = JobSubmission([DUMMY], None, options={"poison": True})
    else:
        validate = submission.validate_job

        def check(ops: Any, registry: Registry, relative_ok: bool) -> list[OpCode]:
            if ops == [poisoned]:
                raise RuntimeError("opcode checker broke")
            return validate(ops, registry, relative_ok)

        monkeypatch.setattr(submission, "validate_job", check)
        bad = JobSubmission([poisoned], None)
    results = queue.submit_each([JobSubmission([DUMMY], None), bad, JobSubmission([DUMMY], None)])
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert isinstance(results[1], GenericError) and "checker broke" in str(results[1])
