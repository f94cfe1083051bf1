"""Running commands: one command per opcode, or one job per item (fan-out).

``OP_COMMAND_RUN`` runs ``argv`` without a shell, in its own process group,
in the opcode's ``cwd``, with a minimal environment plus what the opcode
asks for, and its ``stdin`` (else ``/dev/null``) as standard input. Its
output is kept whole on disk and every output line becomes a job log entry
as it arrives (capped per opcode), see ``commandio``. A kill request
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
may, and only under a root daemon. A working directory that user cannot
enter fails the opcode, naming the directory, before anything runs.
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
from jobqueue.errors import ECODE_INVAL, AccessDenied, OpExecError, OpPrereqError, StorageError
from jobqueue.locking import CLUSTER_LOCK
from jobqueue.lus.base import LogicalUnit, RawOutput, ResultWithJobs
from jobqueue.lus.commandio import (
    CommandOutput,
    StdinFeeder,
    decode_stdin,
    directory_problem,
    exit_description,
)
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


def _is_stdin(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 4 * (constants.COMMAND_STDIN_MAX // 3 + 1):
        return False
    try:
        data = decode_stdin(value)
    except ValueError:
        return False
    return data is not None and len(data) <= constants.COMMAND_STDIN_MAX


#: A command's standard input: base64, bounded so a job file stays small.
STDIN_DATA = Type(
    _is_stdin,
    f"base64-encoded bytes, at most {constants.COMMAND_STDIN_MAX} bytes decoded",
    nesting=0,
)


#: ``--commands-run-as``: as the job's submitter (under a root daemon), or as the daemon.
RUN_AS_SUBMITTER, RUN_AS_DAEMON = "submitter", "daemon"


class CommandUser(NamedTuple):
    """Who a command runs as when not as the daemon itself."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def base_environment(job_id: int, uid: int | None = None, op_index: int = 0) -> dict[str, str]:
    """The environment every command starts from, before the opcode's ``env``.

    ``HOME``, ``USER`` and ``LOGNAME`` are those of ``uid`` (default: the
    daemon's user); a uid without a password entry gets ``/`` and its number.
    ``JOBQUEUE_JOB_ID`` and ``JOBQUEUE_OPCODE_INDEX`` win over the opcode's
    ``env`` (``command_environment``).
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
        "JOBQUEUE_OPCODE_INDEX": str(op_index),
    }


def command_environment(
    job_id: int, op_index: int, env: Mapping[str, str], uid: int | None = None
) -> dict[str, str]:
    """The base environment, then ``env``, then the job's own ids again."""
    base = base_environment(job_id, uid, op_index)
    ids = {name: base[name] for name in ("JOBQUEUE_JOB_ID", "JOBQUEUE_OPCODE_INDEX")}
    return {**base, **env, **ids}


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
    cwd: str | None = param(
        optional(NON_EMPTY_OS_STRING), default=None, doc="Working directory (none: the daemon's)"
    )
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
    stdin: str | None = param(
        optional(STDIN_DATA), default=None, doc="Standard input, base64 (none: /dev/null)"
    )

    @classmethod
    def summary(cls, values: dict[str, Any]) -> str:
        argv = values.get("argv") or [""]
        return f"COMMAND_RUN({os.path.basename(str(argv[0]))})"


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
        """Run the command; its exit status is in the result, or in the error's details.

        A failure carries ``{"exit_code": N}`` or ``{"signal": N}`` as the
        second argument of its ``OpExecError`` (with ``"timed_out": true``
        after a timeout), so clients need not parse the message.
        """
        self._check_directory()
        output = CommandOutput(self.ctx.callbacks.feedback_many, self._raw_output())
        try:
            proc, outcome, duration = self._run(output)
        finally:
            output.close()  # the output is complete and durable before the opcode ends
        if outcome == "killed":
            self.ctx.callbacks.check_cancel()
            raise JobCanceled()
        how, details = exit_description(proc.returncode)
        tail = "; ".join(output.stderr_tail)
        stderr = f"; stderr: {tail}" if tail else ""
        if outcome == "timeout":
            raise OpExecError(
                f"Command timed out after {self.op.timeout}s{stderr}",
                {**details, "timed_out": True},
            )
        if proc.returncode != 0:
            raise OpExecError(f"Command {self.op.argv[0]!r} {how}{stderr}", details)
        return {"exit_code": proc.returncode, "duration": duration}

    def _check_directory(self) -> None:
        """Fail, naming it, if the user the command runs as cannot enter its directory.

        The daemon changes into it before it takes on that user (as the
        kernel does it), so only a check here can see it for that user.
        """
        if self.op.cwd is None or self.user is None:
            return
        problem = directory_problem(self.op.cwd, self.user.uid, {self.user.gid, *self.user.groups})
        if problem is not None:
            raise OpExecError(f"Cannot use the working directory {self.op.cwd!r}: {problem}")

    def _raw_output(self) -> RawOutput | None:
        """Where the output is kept whole, None if nowhere (said in the job's log)."""
        if self.ctx.output is None:
            return None
        try:
            return self.ctx.output.open(self.ctx.job_id, self.ctx.op_index)
        except StorageError as err:
            self.ctx.log(f"Output not kept on disk: {err}")
            return None

    def _run(self, output: CommandOutput) -> tuple[subprocess.Popen[bytes], str, float]:
        """Start the command and follow it to its end: (process, outcome, seconds)."""
        user = self.user
        uid = None if user is None else user.uid
        env = command_environment(self.ctx.job_id, self.ctx.op_index, self.op.env, uid)
        identity: dict[str, Any] = {}
        if user is not None:
            identity = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        stdin = decode_stdin(self.op.stdin)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self.op.argv,
                env=env,
                cwd=self.op.cwd,
                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                **identity,
            )
        except OSError as err:
            if self.op.cwd is not None and err.filename == self.op.cwd:
                raise OpExecError(
                    f"Cannot use the working directory {self.op.cwd!r}: {err.strerror}"
                ) from err
            raise OpExecError(f"Cannot run {self.op.argv[0]!r}: {err.strerror}") from err
        if self.ctx.processes is not None:
            self.ctx.processes.started(proc.pid, self.ctx.job_id)
        feeder = None
        if stdin is not None and proc.stdin is not None:
            feeder = StdinFeeder(proc.stdin, stdin, self.ctx.job_id)
            feeder.start()
        try:
            outcome = self._follow(proc, output, started)
        finally:
            if feeder is not None:
                feeder.stop()
        return proc, outcome, round(time.monotonic() - started, 6)

    def _follow(self, proc: subprocess.Popen[bytes], output: CommandOutput, started: float) -> str:
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

    def _abandon_output(self, selector: selectors.BaseSelector, output: CommandOutput) -> None:
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
    cwd: str | None = param(
        optional(NON_EMPTY_OS_STRING), default=None, doc="Working directory of every command"
    )
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
                    "cwd": self.op.cwd,
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
