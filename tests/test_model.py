"""The job model: exact round-trips and the derived status and priority."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import simplejson
from hypothesis import given
from hypothesis import strategies as st

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.errors import JobFileCorrupted
from jobqueue.lus import builtin_registry
from jobqueue.model import (
    Job,
    QueuedOpCode,
    calc_priority,
    calc_status,
    default_summary,
    merge_time,
    split_time,
)

Q, W, R, C, X = Status.QUEUED, Status.WAITING, Status.RUNNING, Status.CANCELING, Status.CANCELED
S, E = Status.SUCCESS, Status.ERROR


def full_job() -> Job:
    """A job with every field set to a non-default value."""
    op1 = QueuedOpCode(
        input={"OP_ID": "OP_TEST_DELAY", "duration": 0.5, "priority": -10},
        status=S,
        result={"exit_code": 0, "nested": [1, 2.5, None, "x"]},
        log=[[1, [100, 5], "message", "hello"], [2, [100, 999999], "stdout", "out"]],
        priority=-10,
        start_timestamp=[100, 1],
        exec_timestamp=[100, 2],
        end_timestamp=[101, 0],
    )
    op2 = QueuedOpCode(input={"OP_ID": "OP_TEST_DUMMY"}, status=Q, priority=10)
    return Job(id=42, ops=[op1, op2], received_timestamp=[99, 7], start_timestamp=[100, 0])


def test_round_trip_every_field() -> None:
    job = full_job()
    restored = Job.from_dict(simplejson.loads(simplejson.dumps(job.to_dict())))
    assert restored == Job(**{**job.__dict__, "log_serial": 2})
    assert restored.to_dict() == job.to_dict()


def test_stored_keys_are_ganetis() -> None:
    data = full_job().to_dict()
    assert set(data) == {"id", "ops", "received_timestamp", "start_timestamp", "end_timestamp"}
    assert set(data["ops"][0]) == {
        "input",
        "status",
        "result",
        "log",
        "priority",
        "start_timestamp",
        "exec_timestamp",
        "end_timestamp",
    }
    assert "status" not in data and "priority" not in data  # derived, never stored


def test_restore_tolerates_missing_optional_keys() -> None:
    job = Job.from_dict({"id": 3, "ops": [{"input": {"OP_ID": "OP_X"}, "status": "queued"}]})
    assert job.ops[0].priority == constants.PRIO_DEFAULT
    assert job.ops[0].log == [] and job.ops[0].start_timestamp is None
    assert job.received_timestamp is None and job.log_serial == 0


def test_log_serial_recomputed_on_load() -> None:
    assert Job.from_dict(full_job().to_dict()).log_serial == 2


@pytest.mark.parametrize(
    "data",
    [
        [],
        "job",
        {"id": 1},
        {"id": 1, "ops": []},
        {"id": "x", "ops": [{"input": {"OP_ID": "A"}, "status": "queued"}]},
        {"id": 1, "ops": [{"input": {"OP_ID": "A"}, "status": "bogus"}]},
        {"id": 1, "ops": [{"input": "A", "status": "queued"}]},
        {"id": 1, "ops": [{"input": {"OP_ID": "A"}, "status": "queued", "log": [[1]]}]},
        {"id": 1, "ops": [{"input": {"OP_ID": "A"}, "status": "queued", "priority": "x"}]},
        {"id": 1, "ops": [{"input": {"OP_ID": "A"}, "status": "queued"}], "end_timestamp": 5},
    ],
)
def test_malformed_jobs_are_rejected_with_a_typed_error(data: object) -> None:
    with pytest.raises(JobFileCorrupted):
        Job.from_dict(data)


# The reference's status table, plus the boundary cases of the scan order.
STATUS_CASES = [
    ([Q], Q),
    ([Q, Q], Q),
    ([W], W),
    ([W, Q], W),
    ([R], R),
    ([R, Q], R),
    ([S], S),
    ([S, S, S], S),
    ([S, Q], Q),
    ([S, W, Q], W),
    ([S, R, Q], R),
    ([C], C),
    ([C, C], C),
    ([S, C, C], C),
    ([X], X),
    ([S, X, X], X),
    ([E], E),
    ([S, E, E], E),
    ([S, S, E], E),
    ([W, E], E),
    ([R, X], X),
    ([Q, W], W),
    ([W, R], R),
    ([R, W], W),
    ([C, E], C),
    ([E, X], E),
]


@pytest.mark.parametrize(("ops", "expected"), STATUS_CASES)
def test_derived_status(ops: list[Status], expected: Status) -> None:
    assert calc_status(ops) == expected


@given(st.lists(st.sampled_from(list(Status)), min_size=1, max_size=8))
def test_derived_status_properties(ops: list[Status]) -> None:
    status = calc_status(ops)
    assert (status == S) == all(op == S for op in ops)
    if any(op in (C, E, X) for op in ops):
        assert status == next(op for op in ops if op in (C, E, X))


@given(st.lists(st.sampled_from(list(Status)), min_size=1, max_size=4))
def test_a_jobs_status_is_derived_from_its_opcodes(ops: list[Status]) -> None:
    job = Job(id=1, ops=[QueuedOpCode(input={"OP_ID": "OP_X"}, status=op) for op in ops])
    assert job.status == calc_status(ops)
    assert job.is_finalized == (calc_status(ops) in constants.FINALIZED)


@given(st.lists(st.tuples(st.sampled_from(list(Status)), st.integers(-20, 19)), max_size=4))
def test_a_jobs_priority_is_derived_from_its_opcodes(ops: list[tuple[Status, int]]) -> None:
    job = Job(
        id=1, ops=[QueuedOpCode(input={"OP_ID": "OP_X"}, status=s, priority=p) for s, p in ops]
    )
    assert job.priority == calc_priority(job.ops)


def test_priority_is_minimum_over_unfinished_ops() -> None:
    job = full_job()  # op1 success at -10 (ignored), op2 queued at 10
    assert job.priority == 10
    job.ops[1].status = Status.RUNNING
    assert job.priority == 10
    job.ops.append(QueuedOpCode(input={"OP_ID": "OP_X"}, priority=-10))
    assert job.priority == -10
    for op in job.ops:
        op.status = S
    assert job.priority == constants.PRIO_DEFAULT


def test_new_job_takes_priorities_from_inputs() -> None:
    job = Job.new(1, [{"OP_ID": "A", "priority": 10}, {"OP_ID": "B"}], [1, 0])
    assert [op.priority for op in job.ops] == [10, 0]
    assert job.status == Q and job.priority == 0


def test_log_serials_and_filtering() -> None:
    job = Job.new(1, [{"OP_ID": "A"}, {"OP_ID": "B"}], [1, 0])
    job.add_log(0, "message", "a", [1, 0])
    job.add_log(1, "message", "b", [2, 0])
    job.add_log(1, "stdout", "c", [3, 0])
    assert [e[0] for e in job.log_entries_after(None)] == [1, 2, 3]
    assert [e[3] for e in job.log_entries_after(1)] == ["b", "c"]
    assert job.log_entries_after(3) == []


def test_finalize_pending_leaves_finished_ops() -> None:
    job = full_job()
    job.finalize_pending(Status.CANCELED, constants.MSG_CANCELED, [200, 0])
    assert [op.status for op in job.ops] == [S, X]
    assert job.ops[0].result != constants.MSG_CANCELED
    assert job.status == X and job.end_timestamp == [200, 0]


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_split_time_is_valid_and_close(value: float) -> None:
    seconds, micros = split_time(value)
    assert 0 <= micros < 1_000_000
    assert abs(merge_time([seconds, micros]) - value) <= 1e-6 * max(1.0, value / 1e9) + 1e-6


def test_new_job_keeps_typed_opcodes_beside_their_stored_form() -> None:
    registry = builtin_registry()
    delay = registry.typed({"OP_ID": "OP_TEST_DELAY", "duration": 1, "priority": -10})
    dummy = registry.typed({"OP_ID": "OP_TEST_DUMMY", "result": [1]})
    job = Job.new(4, [delay, dummy], [1, 0])
    assert [op.opcode for op in job.ops] == [delay, dummy]
    assert [op.input for op in job.ops] == [delay.to_dict(), dummy.to_dict()]
    assert [op.priority for op in job.ops] == [-10, constants.PRIO_DEFAULT]
    assert job.ops[0].input is delay.stored(), "one stored form, not a copy per job"


def test_jobs_read_back_are_untyped_and_round_trip_exactly() -> None:
    registry = builtin_registry()
    typed = registry.typed({"OP_ID": "OP_TEST_DELAY", "duration": 1, "reason": [["a", "b", 1]]})
    job = Job.new(4, [typed], [1, 0])
    text = json.dumps(job.to_dict())
    again = Job.from_dict(json.loads(text))
    assert again.ops[0].opcode is None
    assert json.dumps(again.to_dict()) == text
    assert again == job  # the record takes no part in comparisons


def test_a_queued_opcode_is_slotted_and_copies_its_log() -> None:
    op = QueuedOpCode(input={"OP_ID": "OP_X"}, log=[[1, [0, 0], "message", "m"]], priority=3)
    assert not hasattr(op, "__dict__"), "millions may wait: no instance dict"
    for field in dataclasses.fields(QueuedOpCode):  # a field copy() forgets fails here
        if field.name != "log":
            setattr(op, field.name, object())
    clone = op.copy()
    assert clone.log == op.log and clone.log is not op.log
    for field in dataclasses.fields(QueuedOpCode):
        if field.name != "log":
            assert getattr(clone, field.name) is getattr(op, field.name), field.name
    op.log.append([2, [0, 0], "message", "n"])
    op.status = Status.RUNNING
    assert len(clone.log) == 1 and clone.status is not Status.RUNNING


def test_restore_keeps_the_typed_opcodes() -> None:
    registry = builtin_registry()
    typed = registry.typed({"OP_ID": "OP_TEST_DUMMY"})
    job = Job.new(4, [typed], [1, 0])
    before = job.snapshot()
    job.ops[0].status = Status.RUNNING
    job.restore(before)
    assert job.ops[0].status == Q and job.ops[0].opcode is typed
    assert job.ops[0].input is typed.stored(), "inputs never change: kept, not copied"


@pytest.mark.parametrize("op_id", [[[["x"]]], {"a": {"b": 1}}])
def test_default_summary_never_shows_a_nested_op_id(op_id: Any) -> None:
    deep: Any = op_id
    for _ in range(100_000):
        deep = [deep]
    assert default_summary({"OP_ID": deep}) == "?"
    assert default_summary({"OP_ID": op_id}) == "?"
