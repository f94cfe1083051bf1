"""Test opcodes: delays, queue exercises and a dummy that can submit jobs.

``OP_TEST_JQUEUE`` speaks the notification protocol Ganeti's
``gnt-debug test-jobqueue`` drives: at each test point the LU listens on a
new Unix socket in a private temporary directory, logs an entry of type
``jqueue-test`` whose message is ``[socket path, test, argument]``, waits for
the client to connect (``NOTIFY_CONNECT_TIMEOUT``) and then for it to send a
byte or close (``NOTIFY_CONFIRM_TIMEOUT``); the client meanwhile checks the
job's status. Missing either deadline fails the opcode. Test points:
``expandnames`` before any lock is taken (the job shows ``waiting``;
``notify_waitlock``), and with ``notify_exec`` ``exec`` once the locks are
held (``running``), then ``startmsg`` with the number of ``log_messages``
and, after each message logged as ``TESTMSG=<message>``, ``logmsg`` with its
number. Only a client running as the daemon's user (or root) can connect.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from jobqueue.errors import ECODE_INVAL, OpExecError, OpPrereqError
from jobqueue.lus.base import LogicalUnit, ResultWithJobs
from jobqueue.opcodes import (
    ANY,
    BOOL,
    JOBS,
    NON_EMPTY_STRING,
    SECONDS,
    STRING,
    OpCode,
    int_range,
    list_of,
    optional,
    param,
)
from jobqueue.signals import JobCanceled

#: Rounds of one ``OP_TEST_DELAY`` at most: each round logs a line, and a job
#: is rewritten whole at every line, so its log may not grow without bound.
MAX_DELAY_REPEAT = 1000

#: Log type of a test notification; its message is ``[socket path, test, argument]``.
ELOG_JQUEUE_TEST = "jqueue-test"
#: Seconds a notification waits for the test client to connect, then to confirm.
NOTIFY_CONNECT_TIMEOUT = 20.0
NOTIFY_CONFIRM_TIMEOUT = 60.0
#: The test points, and the prefix of the messages a notifying opcode logs.
JQT_EXPANDNAMES = "expandnames"
JQT_EXEC = "exec"
JQT_STARTMSG = "startmsg"
JQT_LOGMSG = "logmsg"
JQT_MSGPREFIX = "TESTMSG="
#: How often a notification wait looks at cancel and kill requests.
_TICK = 0.1

T = TypeVar("T")


class OpTestDelay(OpCode):
    OP_ID = "OP_TEST_DELAY"
    SUMMARY_FIELD = "duration"

    duration: float = param(SECONDS, doc="Seconds to sleep per round")
    repeat: int = param(
        int_range(0, MAX_DELAY_REPEAT), default=0, doc="Rounds; 0 means one silent delay"
    )
    on_master: bool = param(BOOL, default=True, doc="Sleep in the daemon")
    on_nodes: tuple[str, ...] = param(
        list_of(NON_EMPTY_STRING), default=(), doc="Remote nodes (none here)"
    )
    on_node_uuids: tuple[str, ...] | None = param(
        optional(list_of(NON_EMPTY_STRING)),
        default=None,
        fill=False,
        doc="Remote nodes by UUID, as Ganeti sends them (none here)",
    )
    interruptible: bool = param(
        BOOL,
        default=False,
        fill=False,
        doc="Accepted from Ganeti's tools; every delay here wakes at once on a kill",
    )
    no_locks: bool = param(
        BOOL,
        default=True,
        fill=False,
        doc="Accepted from Ganeti's tools; a delay here never takes resource locks",
    )


class LUTestDelay(LogicalUnit[OpTestDelay]):
    """Sleeps, waking at once when a kill is requested."""

    def check_arguments(self) -> None:
        nodes = {"on_nodes": self.op.on_nodes, "on_node_uuids": self.op.on_node_uuids}
        for name, names in nodes.items():
            if names:
                raise OpPrereqError(
                    f"OP_TEST_DELAY.{name}: this queue has no remote nodes", ECODE_INVAL
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

    notify_waitlock: bool = param(
        BOOL, default=False, doc="Notify a test client before any lock is taken"
    )
    notify_exec: bool = param(
        BOOL, default=False, doc="Notify a test client at execution and at each log message"
    )
    log_messages: tuple[str, ...] = param(
        list_of(STRING), default=(), doc="Each logged as feedback"
    )
    fail: bool = param(BOOL, default=False, doc="Fail with OpExecError")


class LUTestJqueue(LogicalUnit[OpTestJqueue]):
    """Logs messages, optionally notifying a test client; see the module docstring."""

    def check_arguments(self) -> None:
        if self.op.notify_waitlock:
            self._notify(JQT_EXPANDNAMES, None)

    def exec(self) -> bool:
        if self.op.notify_exec:
            self._notify(JQT_EXEC, None)
            if self.op.log_messages:
                self._notify(JQT_STARTMSG, len(self.op.log_messages))
            for number, message in enumerate(self.op.log_messages, start=1):
                self.ctx.log(JQT_MSGPREFIX + message)
                self._notify(JQT_LOGMSG, number)
        else:
            for message in self.op.log_messages:
                self.ctx.log(message)
        if self.op.fail:
            raise OpExecError("Opcode failure was requested")
        return True

    def _notify(self, test: str, argument: Any) -> None:
        """Log where a test client may connect; return once it has confirmed."""
        with tempfile.TemporaryDirectory(prefix="jobqueue-jqt-") as directory:
            path = os.path.join(directory, "socket")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(path)
                listener.listen(1)
                self.ctx.log([path, test, argument], ELOG_JQUEUE_TEST)
                listener.settimeout(_TICK)
                conn = self._wait(lambda: listener.accept()[0], NOTIFY_CONNECT_TIMEOUT, test)
                with conn:
                    conn.settimeout(_TICK)
                    self._wait(lambda: conn.recv(1), NOTIFY_CONFIRM_TIMEOUT, test)

    def _wait(self, attempt: Callable[[], T], limit: float, test: str) -> T:
        """Retry ``attempt`` (a socket call timing out each tick) for ``limit`` seconds.

        Raises ``JobCanceled`` on a cancel or kill request, ``OpExecError`` when
        the time is up.
        """
        deadline = time.monotonic() + limit
        while True:
            try:
                return attempt()
            except TimeoutError:
                pass
            self.ctx.callbacks.check_cancel()
            if self.ctx.callbacks.kill_requested():
                raise JobCanceled()
            if time.monotonic() > deadline:
                raise OpExecError(f"Test notification {test!r}: no answer within {limit:g}s")


class OpTestDummy(OpCode):
    OP_ID = "OP_TEST_DUMMY"

    result: Any = param(ANY, default=None, doc="Returned as the opcode's result")
    messages: tuple[str, ...] = param(list_of(STRING), default=(), doc="Each logged as feedback")
    fail: bool = param(BOOL, default=False, doc="Fail with OpExecError")
    submit_jobs: tuple[tuple[OpCode, ...], ...] = param(
        JOBS, default=(), doc="Jobs to submit (LU-generated jobs), checked at submission"
    )


class LUTestDummy(LogicalUnit[OpTestDummy]):
    def exec(self) -> Any:
        if self.op.messages:
            self.ctx.callbacks.feedback_many([("message", msg) for msg in self.op.messages])
        if self.op.fail:
            raise OpExecError("Opcode failure was requested")
        if self.op.submit_jobs:
            return ResultWithJobs([[op.to_dict() for op in job] for job in self.op.submit_jobs])
        return self.op.result


PAIRS = [(OpTestDelay, LUTestDelay), (OpTestJqueue, LUTestJqueue), (OpTestDummy, LUTestDummy)]
