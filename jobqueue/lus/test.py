"""Test opcodes: delays, queue exercises and a dummy that can submit jobs."""

from __future__ import annotations

from typing import Any

from jobqueue.errors import ECODE_INVAL, OpExecError, OpPrereqError
from jobqueue.lus.base import LogicalUnit, ResultWithJobs
from jobqueue.opcodes import (
    ANY,
    BOOL,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    SECONDS,
    STRING,
    OpCode,
    Param,
    Type,
    list_of,
)
from jobqueue.signals import JobCanceled

FALSE_ONLY = Type(lambda value: value is False, "false (test notifications are not supported)")
JOB_LIST = Type(
    lambda value: (
        isinstance(value, list)
        and all(isinstance(job, list) and all(isinstance(op, dict) for op in job) for job in value)
    ),
    "a list of jobs, each a list of opcode objects",
)


class OpTestDelay(OpCode):
    OP_ID = "OP_TEST_DELAY"
    SUMMARY_FIELD = "duration"
    PARAMS = (
        Param("duration", SECONDS, required=True, doc="Seconds to sleep per round"),
        Param("repeat", NON_NEGATIVE_INT, default=0, doc="Rounds; 0 means one silent delay"),
        Param("on_master", BOOL, default=True, doc="Sleep in the daemon"),
        Param("on_nodes", list_of(NON_EMPTY_STRING), default=[], doc="Remote nodes (none here)"),
    )


class LUTestDelay(LogicalUnit):
    """Sleeps, waking at once when a kill is requested."""

    def check_arguments(self) -> None:
        if self.op.on_nodes:
            raise OpPrereqError(
                "OP_TEST_DELAY.on_nodes: this queue has no remote nodes", ECODE_INVAL
            )

    def exec(self) -> None:
        rounds = max(1, self.op.repeat)
        for number in range(rounds):
            if self.op.repeat:
                self.ctx.log(f"Test delay iteration {number + 1}/{rounds}")
            if self.op.on_master and self.ctx.callbacks.wait_kill(self.op.duration):
                self.ctx.callbacks.check_cancel()
                raise JobCanceled()


class OpTestJqueue(OpCode):
    OP_ID = "OP_TEST_JQUEUE"
    PARAMS = (
        Param("notify_waitlock", FALSE_ONLY, default=False),
        Param("notify_exec", FALSE_ONLY, default=False),
        Param("log_messages", list_of(STRING), default=[], doc="Each logged as feedback"),
        Param("fail", BOOL, default=False, doc="Fail with OpExecError"),
    )


class LUTestJqueue(LogicalUnit):
    def exec(self) -> bool:
        for message in self.op.log_messages:
            self.ctx.log(message)
        if self.op.fail:
            raise OpExecError("Opcode failure was requested")
        return True


class OpTestDummy(OpCode):
    OP_ID = "OP_TEST_DUMMY"
    PARAMS = (
        Param("result", ANY, doc="Returned as the opcode's result"),
        Param("messages", list_of(STRING), default=[], doc="Each logged as feedback"),
        Param("fail", BOOL, default=False, doc="Fail with OpExecError"),
        Param("submit_jobs", JOB_LIST, default=[], doc="Jobs to submit (LU-generated jobs)"),
    )


class LUTestDummy(LogicalUnit):
    def exec(self) -> Any:
        if self.op.messages:
            self.ctx.callbacks.feedback_many([("message", msg) for msg in self.op.messages])
        if self.op.fail:
            raise OpExecError("Opcode failure was requested")
        if self.op.submit_jobs:
            return ResultWithJobs(self.op.submit_jobs)
        return self.op.result


PAIRS = [(OpTestDelay, LUTestDelay), (OpTestJqueue, LUTestJqueue), (OpTestDummy, LUTestDummy)]
