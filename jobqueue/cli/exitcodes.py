"""The exit codes of ``jobctl``, and the one-line message for each failure.

The table here is the only place the numbers live; the man page
(``doc/jobctl.rst``) repeats it for users. One rule adds to it: following
a job of a single command, ``jobctl`` exits as a shell would with that
command's status (``command_exit_code``).
"""

from __future__ import annotations

import enum

from jobqueue import errors
from jobqueue.luxi.client import STALE_SOCKET

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ExitCode(enum.IntEnum):
    """What the process exit status of ``jobctl`` means."""

    OK = 0
    #: Anything else went wrong: a job failed, a request was refused, ...
    FAILURE = 1
    #: Bad command line (argparse's own code).
    USAGE = 2
    #: Nothing listens on the daemon's socket.
    NO_DAEMON = 3
    #: The socket or the method is not open to this user.
    PERMISSION = 4
    #: The queue is drained and refuses new jobs.
    DRAINED = 5
    #: The queue holds its maximum number of jobs.
    QUEUE_FULL = 6
    #: A job named on the command line does not exist.
    NOT_FOUND = 7
    #: The daemon is a standby: changes go to the master it names.
    NOT_MASTER = 8
    #: The user declined a confirmation prompt.
    DECLINED = 13
    #: A query asked for a field the daemon does not know.
    UNKNOWN_FIELD = 14
    #: Interrupted with Ctrl-C.
    INTERRUPTED = 130


#: A command killed by signal N makes the exit status SIGNAL_BASE + N, as in shells.
SIGNAL_BASE = 128


def command_exit_code(status: Any, opresult: Any) -> int | None:
    """The exit status for a job of one command that did not succeed; None for other jobs.

    The command's exit code, or ``SIGNAL_BASE + N`` when signal N killed
    it, from the details its failure carries (``OP_COMMAND_RUN``'s
    ``{"exit_code": N}`` or ``{"signal": N}``). A job of one opcode whose
    failure carries neither (it never ran, or it was canceled) gets None.
    A command that exited 0 but failed all the same (a timeout it
    survived) gets ``FAILURE``.
    """
    if not (isinstance(opresult, list) and len(opresult) == 1) or status == "success":
        return None
    result = opresult[0]
    if not errors.is_encoded_error(result) or len(result[1]) < 2:
        return None
    details = result[1][1]
    if not isinstance(details, dict):
        return None
    signum, code = details.get("signal"), details.get("exit_code")
    if type(signum) is int and 0 < signum < SIGNAL_BASE:
        return SIGNAL_BASE + signum
    if type(code) is int and 0 < code < 256:
        return code
    if type(code) is int:
        return ExitCode.FAILURE
    return None


#: One line per code, for ``jobctl --help``; the man page explains them at length.
MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "failure",
    ExitCode.USAGE: "bad usage",
    ExitCode.NO_DAEMON: "daemon not running",
    ExitCode.PERMISSION: "permission denied",
    ExitCode.DRAINED: "queue drained",
    ExitCode.QUEUE_FULL: "queue full",
    ExitCode.NOT_FOUND: "job not found",
    ExitCode.NOT_MASTER: "daemon is a standby",
    ExitCode.DECLINED: "confirmation declined",
    ExitCode.UNKNOWN_FIELD: "unknown field",
    ExitCode.INTERRUPTED: "interrupted",
}


class CommandFailed(Exception):
    """A command gives up with ``message`` on stderr and exit ``code``.

    A control-flow signal of the CLI, raised by command functions and caught
    only by ``main``; it never leaves the process.
    """

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _one_line(text: str) -> str:
    """Squeeze a possibly multi-line message onto one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def describe_error(err: errors.GenericError, socket_path: str) -> tuple[ExitCode, str]:
    """Return the exit code and the stderr line for an error from the daemon."""
    text = _one_line(str(err))
    if isinstance(err, errors.NoMasterError):
        if text.endswith(STALE_SOCKET):
            return ExitCode.NO_DAEMON, text
        return ExitCode.NO_DAEMON, (
            f"Cannot reach the job queue daemon at {socket_path}; is it running?"
        )
    if isinstance(err, errors.AccessDenied):
        if not text.lower().startswith("permission denied"):
            text = f"Permission denied: {text}"
        return ExitCode.PERMISSION, text
    if isinstance(err, errors.JobQueueDrainError):
        return ExitCode.DRAINED, "The job queue is drained and refuses new jobs"
    if isinstance(err, errors.JobQueueFull):
        return ExitCode.QUEUE_FULL, f"The job queue is full: {text}"
    if isinstance(err, errors.NotMasterError):
        return ExitCode.NOT_MASTER, text
    if isinstance(err, errors.JobRejected):
        rule = err.args[1] if len(err.args) > 1 else "?"
        return ExitCode.FAILURE, f"{text}; 'jobctl filter info {rule}' shows the rule"
    if isinstance(err, errors.JobLost):
        return ExitCode.NOT_FOUND, text
    if isinstance(err, errors.RequestTimeout):
        return ExitCode.FAILURE, f"The job queue daemon did not answer in time: {text}"
    if isinstance(err, errors.LuxiError):
        return ExitCode.FAILURE, f"Communication with the job queue daemon failed: {text}"
    if isinstance(err, errors.OpPrereqError):
        return ExitCode.FAILURE, f"Request refused: {text}"
    return ExitCode.FAILURE, f"Error: {text}"
