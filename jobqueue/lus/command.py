"""Running commands: one command per opcode, or one job per item (fan-out).

``OP_COMMAND_RUN`` runs ``argv`` without a shell, in its own process group,
with a minimal environment plus what the opcode asks for. Every output line
becomes a job log entry as it arrives (capped per opcode). A kill request
sends SIGTERM to the whole group, then SIGKILL after the grace period; when
the command exits, whatever it left running in its group is killed too. While
it runs, its group is recorded in ``ctx.processes`` (when given), so that a
daemon started after this one was killed can stop it.

A command is over when its own process has exited: its output is read for
``_OUTPUT_GRACE`` seconds more at most, so a process that left the group
(``setsid cmd &``) and holds on to the output pipes cannot keep the job
running, nor make a kill wait for it.

As which user (``command_user``): a daemon running as root runs a command as
the job's submitter (uid, primary gid, supplementary groups as recorded,
``HOME``/``USER``/``LOGNAME`` from its password entry), unless the daemon
was told ``--commands-run-as daemon``, the submitter is root, or the job was
stored before submitters were recorded; then as root. Any other daemon runs
commands as itself. ``user`` names another user; only a job root submitted
may, and only under a root daemon.
"""

from __future__ import annotations

import os
import pwd
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from jobqueue import constants
from jobqueue.errors import ECODE_INVAL, AccessDenied, OpExecError, OpPrereqError
from jobqueue.locking import CLUSTER_LOCK
from jobqueue.lus.base import LogicalUnit, ResultWithJobs
from jobqueue.model import Submitter
from jobqueue.opcodes import (
    NON_EMPTY_STRING,
    OPCODES,
    SECONDS,
    OpCode,
    Type,
    list_of,
    optional,
    param,
)
from jobqueue.opcodes.types import STRING_DICT
from jobqueue.signals import JobCanceled

#: How often the output loop looks at kill requests and the timeout.
_TICK = 0.1
#: Seconds the output is still read after the command's own process has exited.
_OUTPUT_GRACE = 0.5
#: Bytes of each of the last stderr lines quoted in a failed command's error.
_TAIL_LINE_BYTES = 1000
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _is_os_string(value: Any) -> bool:
    """A string the OS takes in an argument, a variable or a path: no NUL, no lone surrogate."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return True


def _is_environment(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _is_os_string(name) and "=" not in name and _is_os_string(text)
        for name, text in value.items()
    )


#: Checked at submission, so a job never fails later in ``exec`` on what the OS refuses.
OS_STRING = Type(_is_os_string, "a string without NUL characters or lone surrogates", nesting=0)
NON_EMPTY_OS_STRING = Type(
    lambda value: _is_os_string(value) and value != "",
    "a non-empty string without NUL characters or lone surrogates",
    nesting=0,
)
ENVIRONMENT = Type(
    _is_environment,
    "an object of strings without NUL characters or lone surrogates, names without '='",
    STRING_DICT.freeze,
    nesting=1,
)


def _is_lock_name(value: Any) -> bool:
    return isinstance(value, str) and value != "" and value != CLUSTER_LOCK


#: A resource lock: the cluster lock is taken by every opcode and may not be named.
LOCK_NAME = Type(_is_lock_name, f"a non-empty lock name other than {CLUSTER_LOCK!r}", nesting=0)


#: ``--commands-run-as``: as the job's submitter (under a root daemon), or as the daemon.
RUN_AS_SUBMITTER, RUN_AS_DAEMON = "submitter", "daemon"


class CommandUser(NamedTuple):
    """Who a command runs as when not as the daemon itself."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def base_environment(job_id: int, uid: int | None = None) -> dict[str, str]:
    """The environment every command starts from, before the opcode's ``env``.

    ``HOME``, ``USER`` and ``LOGNAME`` are those of ``uid`` (default: the
    daemon's user); a uid without a password entry gets ``/`` and its number.
    """
    try:
        entry = pwd.getpwuid(os.geteuid() if uid is None else uid)
        home, name = entry.pw_dir, entry.pw_name
    except KeyError:
        home, name = "/", str(uid)
    return {
        "PATH": _SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": home,
        "USER": name,
        "LOGNAME": name,
        "JOBQUEUE_JOB_ID": str(job_id),
    }


def command_user(
    submitter: Submitter | None, run_as: str, named: str | None, daemon_uid: int
) -> CommandUser | None:
    """As whom a command runs; None: as the daemon itself. See the module docstring.

    Raises ``AccessDenied`` when ``named`` (the opcode's ``user``) is not
    allowed, ``OpPrereqError`` for an unknown user.
    """
    if named is not None:
        if daemon_uid != 0 or submitter is None or submitter.uid != 0:
            raise AccessDenied(
                "Permission denied: only a job root submitted to a root daemon may run a "
                "command as another user"
            )
        try:
            entry = pwd.getpwnam(named) if not named.isdigit() else pwd.getpwuid(int(named))
        except (KeyError, OverflowError):
            raise OpPrereqError(
                f"OP_COMMAND_RUN.user: no such user {named!r}", ECODE_INVAL
            ) from None
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
        return CommandUser(entry.pw_uid, entry.pw_gid, tuple(groups))
    if daemon_uid != 0 or run_as == RUN_AS_DAEMON or submitter is None:
        return None
    if submitter.uid is None or submitter.gid is None or submitter.uid == 0:
        return None  # made by the daemon itself, or submitted by root
    return CommandUser(submitter.uid, submitter.gid, submitter.groups)


class OpCommandRun(OpCode):
    OP_ID = "OP_COMMAND_RUN"
    SUMMARY_FIELD = "argv"

    argv: tuple[str, ...] = param(list_of(OS_STRING, non_empty=True), doc="Command and args")
    env: Mapping[str, str] = param(
        ENVIRONMENT, default={}, doc="Added to the minimal base environment"
    )
    cwd: str | None = param(optional(NON_EMPTY_OS_STRING), default=None, doc="Working directory")
    timeout: float | None = param(
        optional(SECONDS), default=None, doc="Seconds before it is killed"
    )
    locks: tuple[str, ...] = param(list_of(LOCK_NAME), default=(), doc="Exclusive resource locks")
    shared_locks: tuple[str, ...] = param(list_of(LOCK_NAME), default=(), doc="Shared locks")
    user: str | None = param(
        optional(NON_EMPTY_OS_STRING),
        default=None,
        doc="Run as this user (name or uid); only for jobs root submitted",
    )

    @classmethod
    def summary(cls, values: dict[str, Any]) -> str:
        argv = values.get("argv") or [""]
        return f"COMMAND_RUN({os.path.basename(str(argv[0]))})"


class _OutputLog:
    """Turns pipe output into log entries, capped in lines and in bytes.

    Bytes are counted as the command wrote them, before decoding. A line
    longer than ``COMMAND_LOG_MAX_LINE_BYTES`` is logged in pieces of that
    size, so output without newlines never piles up in the daemon. Once the
    cap is reached the rest is read and dropped, except that the last lines
    of stderr are still kept for the error message.
    """

    def __init__(self, ctx_feedback: Any) -> None:
        self._feedback_many = ctx_feedback
        self._partial: dict[str, bytes] = {constants.ELOG_STDOUT: b"", constants.ELOG_STDERR: b""}
        self.lines = 0
        self.bytes = 0
        self.truncated = False
        self.stderr_tail: list[str] = []

    def add(self, log_type: str, data: bytes, *, final: bool = False) -> None:
        *complete, rest = (self._partial[log_type] + data).split(b"\n")
        limit = constants.COMMAND_LOG_MAX_LINE_BYTES
        while len(rest) > limit:
            complete.append(rest[:limit])
            rest = rest[limit:]
        if final and rest:
            complete, rest = [*complete, rest], b""
        self._partial[log_type] = rest
        if log_type == constants.ELOG_STDERR:
            tail = [raw[:_TAIL_LINE_BYTES].decode("utf-8", "replace") for raw in complete[-5:]]
            self.stderr_tail = (self.stderr_tail + tail)[-5:]
        if not self.truncated:
            self._emit(log_type, complete)

    def _emit(self, log_type: str, lines: list[bytes]) -> None:
        kept: list[tuple[str, Any]] = []
        for raw in lines:
            self.lines += 1
            self.bytes += len(raw)
            if (
                self.lines > constants.COMMAND_LOG_MAX_LINES
                or self.bytes > constants.COMMAND_LOG_MAX_BYTES
            ):
                self.truncated = True
                kept.append((constants.ELOG_MESSAGE, "output truncated"))
                break
            kept.append((log_type, raw.decode("utf-8", "replace")))
        if kept:
            self._feedback_many(kept)


class LUCommandRun(LogicalUnit[OpCommandRun]):
    """Runs one command; see the module docstring."""

    def locks(self) -> tuple[list[str], list[str]]:
        return list(self.op.locks), list(self.op.shared_locks)

    def check_arguments(self) -> None:
        self.user = command_user(
            self.ctx.submitter, self.ctx.commands_run_as, self.op.user, os.geteuid()
        )

    def dry_run_result(self) -> Any:
        return {"argv": list(self.op.argv)}

    def exec(self) -> dict[str, Any]:
        user = self.user
        uid = None if user is None else user.uid
        env = {**base_environment(self.ctx.job_id, uid), **self.op.env}
        identity: dict[str, Any] = {}
        if user is not None:
            identity = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self.op.argv,
                env=env,
                cwd=self.op.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                **identity,
            )
        except OSError as err:
            raise OpExecError(f"Cannot run {self.op.argv[0]!r}: {err.strerror}") from err
        if self.ctx.processes is not None:
            self.ctx.processes.started(proc.pid, self.ctx.job_id)
        output = _OutputLog(self.ctx.callbacks.feedback_many)
        outcome = self._follow(proc, output, started)
        duration = round(time.monotonic() - started, 6)
        if outcome == "killed":
            self.ctx.callbacks.check_cancel()
            raise JobCanceled()
        tail = "; ".join(output.stderr_tail)
        stderr = f"; stderr: {tail}" if tail else ""
        if outcome == "timeout":
            raise OpExecError(f"Command timed out after {self.op.timeout}s{stderr}")
        if proc.returncode != 0:
            raise OpExecError(
                f"Command {self.op.argv[0]!r} exited with code {proc.returncode}{stderr}"
            )
        return {"exit_code": proc.returncode, "duration": duration}

    def _follow(self, proc: subprocess.Popen[bytes], output: _OutputLog, started: float) -> str:
        """Relay output until the command ends; return "exited", "timeout" or "killed"."""
        assert proc.stdout is not None and proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ, constants.ELOG_STDOUT)
        selector.register(proc.stderr, selectors.EVENT_READ, constants.ELOG_STDERR)
        outcome = "exited"
        exited_at: float | None = None
        try:
            while selector.get_map() or proc.poll() is None:
                for key, _ in selector.select(_TICK):
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                        output.add(key.data, b"", final=True)
                    else:
                        output.add(key.data, data)
                if exited_at is None and proc.poll() is not None:
                    exited_at = time.monotonic()
                    _kill_group(proc.pid, signal.SIGKILL)  # leftovers holding our pipes
                if exited_at is not None:
                    if selector.get_map() and time.monotonic() - exited_at > _OUTPUT_GRACE:
                        self._abandon_output(selector, output)
                elif outcome == "exited" and self.ctx.callbacks.kill_requested():
                    outcome = "killed"
                    self._stop(proc)
                elif outcome == "exited" and self._timed_out(started):
                    outcome = "timeout"
                    self._stop(proc)
        finally:
            selector.close()
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()
            _kill_group(proc.pid, signal.SIGKILL)
            if self.ctx.processes is not None:
                self.ctx.processes.ended(proc.pid)
        return outcome

    def _abandon_output(self, selector: selectors.BaseSelector, output: _OutputLog) -> None:
        """Stop reading pipes that a process outside the command's group still holds."""
        for key in list(selector.get_map().values()):
            selector.unregister(key.fileobj)
            output.add(key.data, b"", final=True)
        self.ctx.callbacks.feedback(
            constants.ELOG_MESSAGE,
            "The command exited, but a process it left outside its process group still "
            "holds its output; that process is not stopped and its output is not logged",
        )

    def _timed_out(self, started: float) -> bool:
        return self.op.timeout is not None and time.monotonic() - started > self.op.timeout

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the group, SIGKILL it after the grace period."""
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.ctx.kill_grace)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class OpCommandFanout(OpCode):
    OP_ID = "OP_COMMAND_FANOUT"
    SUMMARY_FIELD = "argv"
    FANOUT_LIMIT: ClassVar[int] = 10_000

    argv: tuple[str, ...] = param(
        list_of(OS_STRING, non_empty=True), doc="Command; {item} is replaced by each item"
    )
    items: tuple[str, ...] = param(
        list_of(OS_STRING, non_empty=True), doc=f"One job per item (at most {FANOUT_LIMIT})"
    )
    locks: tuple[str, ...] = param(
        list_of(NON_EMPTY_STRING), default=(), doc="Exclusive lock templates, e.g. host:{item}"
    )
    shared_locks: tuple[str, ...] = param(
        list_of(NON_EMPTY_STRING), default=(), doc="Shared lock templates"
    )
    env: Mapping[str, str] = param(ENVIRONMENT, default={}, doc="Environment for every command")
    timeout: float | None = param(optional(SECONDS), default=None, doc="Per-command timeout")
    then: tuple[OpCode, ...] = param(
        OPCODES, default=(), doc="Opcodes of a last job that waits for all item jobs"
    )

    def check(self) -> None:
        """At most ``FANOUT_LIMIT`` items; every lock template gives valid names for each."""
        super().check()
        if len(self.items) > self.FANOUT_LIMIT:
            raise OpPrereqError(
                f"OP_COMMAND_FANOUT.items: at most {self.FANOUT_LIMIT} items", ECODE_INVAL
            )
        for name, templates in (("locks", self.locks), ("shared_locks", self.shared_locks)):
            for template in templates:
                bad = next((i for i in self.items if not _is_lock_name(_fill(template, i))), None)
                if bad is not None:
                    raise OpPrereqError(
                        f"Parameter 'OP_COMMAND_FANOUT.{name}': {template!r} gives the lock "
                        f"name {_fill(template, bad)!r} for item {bad!r}, which must be "
                        f"{LOCK_NAME.description}",
                        ECODE_INVAL,
                    )

    @classmethod
    def summary(cls, values: dict[str, Any]) -> str:
        argv = values.get("argv") or [""]
        count = len(values.get("items") or [])
        return f"COMMAND_FANOUT({os.path.basename(str(argv[0]))} x{count})"


def _fill(template: str, item: str) -> str:
    return template.replace("{item}", item)


class LUCommandFanout(LogicalUnit[OpCommandFanout]):
    """Returns one ``OP_COMMAND_RUN`` job per item, plus the ``then`` job."""

    def _jobs(self) -> list[list[dict[str, Any]]]:
        jobs: list[list[dict[str, Any]]] = [
            [
                {
                    "OP_ID": OpCommandRun.OP_ID,
                    "argv": [_fill(arg, item) for arg in self.op.argv],
                    "locks": [_fill(name, item) for name in self.op.locks],
                    "shared_locks": [_fill(name, item) for name in self.op.shared_locks],
                    "env": dict(self.op.env),
                    "timeout": self.op.timeout,
                }
            ]
            for item in self.op.items
        ]
        if self.op.then:
            everything = [status.value for status in sorted(constants.FINALIZED)]
            depends = [[-offset, everything] for offset in range(1, len(jobs) + 1)]
            first, *rest = self.op.then
            jobs.append([{**first.to_dict(), "depends": depends}, *(op.to_dict() for op in rest)])
        return jobs

    def dry_run_result(self) -> Any:
        return {"jobs": self._jobs()}

    def exec(self) -> ResultWithJobs:
        return ResultWithJobs(self._jobs())


PAIRS = [(OpCommandRun, LUCommandRun), (OpCommandFanout, LUCommandFanout)]
