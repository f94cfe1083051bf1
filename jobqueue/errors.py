"""One exception root for everything jobqueue raises on purpose.

The tree::

    GenericError
     +-- ProgrammerError          a bug: an invariant of ours was broken
     +-- OpPrereqError(msg, ecode) input or state does not allow the operation
     +-- OpExecError              an opcode failed while running
     |    +-- OpResultUnstorable  it ran to its end, but its result cannot be stored
     +-- OpCodeUnknown            no opcode class for this OP_ID
     +-- JobLost                  the job does not exist (any more)
     +-- JobQueueError            the queue refused or failed an operation
     |    +-- JobQueueDrainError  the drain flag is set
     |    +-- JobQueueFull        too many live jobs
     |    +-- JobRejected         a job filter rule refuses the job
     |    +-- StorageError        a job file could not be made durable
     |    |    +-- NotLeaderError a write refused: this process no longer leads
     |    |    +-- JobNotLive     a write refused: the job is no longer live in the store
     |    +-- JobFileCorrupted    a job file could not be parsed
     |    +-- NotMasterError      this daemon is a standby; names the master
     +-- LockError                a lock was misused (not a timeout)
     +-- NoSuchTask               the worker pool has no queued task by that id
     +-- LuxiError                a protocol-level failure
          +-- AccessDenied        the caller may not do this (socket, method or job)
          +-- AnswerTooLarge      the answer would exceed the daemon's answer size cap
          +-- NoMasterError       no daemon listens on the socket
          +-- ConnectionClosed    the peer closed the connection
          +-- RequestTimeout      no answer in time

On the wire an error is ``[ClassName, [args...]]``. Only classes in the
allow-list below are encoded by name and decoded back into exceptions;
anything else becomes a ``GenericError`` carrying its text. ``AccessDenied``
travels as ``PermissionError`` (Ganeti's name) without shadowing the builtin.

Control-flow signals such as the worker pool's ``DeferTask`` live outside
this tree on purpose.
"""

from __future__ import annotations

import math

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Error codes for OpPrereqError, as Ganeti uses them.
ECODE_INVAL = "wrong_input"
ECODE_STATE = "wrong_state"
ECODE_NOENT = "unknown_entity"
ECODE_EXISTS = "already_exists"
ECODE_ENVIRON = "environment_error"


class GenericError(Exception):
    """Root of every error jobqueue raises on purpose."""


class ProgrammerError(GenericError):
    """An internal invariant was broken; this is a bug."""


class OpPrereqError(GenericError):
    """The operation's input or the current state does not allow it.

    ``args`` are ``(message, ecode)``; ``ecode`` is one of the ``ECODE_*``
    strings (``wrong_input`` for bad parameters).
    """

    def __init__(self, msg: str, ecode: str = ECODE_INVAL) -> None:
        super().__init__(msg, ecode)

    def __str__(self) -> str:
        return str(self.args[0])


class OpExecError(GenericError):
    """An opcode failed during execution.

    ``args`` are ``(message,)``, or ``(message, details)`` where ``details``
    is an object of facts for programs (a command's ``exit_code`` or
    ``signal``); the text is the message alone.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OpResultUnstorable(OpExecError):
    """The opcode ran to its end, but what it returned cannot be stored.

    It travels as ``OpExecError`` (not in the allow-list). A job's retry
    policy does not apply: running the opcode again would repeat what it did
    for a failure that comes back the same.
    """


class OpCodeUnknown(GenericError):
    """No opcode is registered under the given ``OP_ID``."""


class JobLost(GenericError):
    """The job cannot be found in the queue or the archive."""


class JobQueueError(GenericError):
    """The job queue refused or failed an operation."""


class JobQueueDrainError(JobQueueError):
    """The queue is drained and refuses new jobs."""


class JobQueueFull(JobQueueError):
    """The queue holds its maximum number of live jobs."""


class JobRejected(JobQueueError):
    """A job filter rule with the action REJECT refuses the job; ``args`` are
    ``(message, rule uuid)``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageError(JobQueueError):
    """A write could not be made durable; the previous version is intact.

    ``args`` are ``(message, errno)``; the text is the message alone.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotLeaderError(StorageError):
    """A write was refused because this process no longer leads the store (fenced)."""


class JobNotLive(StorageError):
    """A write refused: the job is no longer live in the store (removed by hand, or archived).

    The store does not bring it back; the queue drops the job.
    """


class NotMasterError(JobQueueError):
    """This daemon is a standby and changes nothing; ``args`` are ``(message, master)``.

    ``master`` names the daemon that leads now, or is None when none does.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class JobFileCorrupted(JobQueueError):
    """A job file could not be parsed into a job."""


class LockError(GenericError):
    """A lock was used against its contract (not a timeout)."""


class NoSuchTask(GenericError):
    """The worker pool has no queued (not running) task with that id."""


class LuxiError(GenericError):
    """A failure of the client/server protocol."""


class AccessDenied(LuxiError):
    """The caller may not do this: use the socket, call the method, or change the job.

    Encoded on the wire as ``PermissionError`` for Ganeti compatibility.
    """


class AnswerTooLarge(LuxiError):
    """The answer would be larger than the daemon sends (``--max-answer-size``).

    Ask for fewer jobs or fewer fields.
    """


class NoMasterError(LuxiError):
    """Nothing listens on the daemon's socket."""


class ConnectionClosed(LuxiError):
    """The peer closed the connection before a full message arrived."""


class RequestTimeout(LuxiError):
    """No answer arrived within the client's timeout."""


_WIRE_NAMES: dict[type[GenericError], str] = {AccessDenied: "PermissionError"}

#: The allow-list: wire name -> class. Order matters only for readability.
_ENCODABLE: dict[str, type[GenericError]] = {
    _WIRE_NAMES.get(cls, cls.__name__): cls
    for cls in (
        GenericError,
        ProgrammerError,
        OpPrereqError,
        OpExecError,
        OpCodeUnknown,
        JobLost,
        JobQueueError,
        JobQueueDrainError,
        JobQueueFull,
        JobRejected,
        StorageError,
        NotLeaderError,
        JobFileCorrupted,
        NotMasterError,
        LockError,
        NoSuchTask,
        LuxiError,
        AccessDenied,
        AnswerTooLarge,
        NoMasterError,
        ConnectionClosed,
        RequestTimeout,
    )
}


def _plain(value: Any) -> Any:
    """Make an exception argument JSON-safe (tuples become lists, objects text).

    Also text: a float that is not finite (``"nan"``), which JSON cannot hold.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def encode_error(exc: BaseException) -> list[Any]:
    """Encode ``exc`` as ``[ClassName, [args...]]`` for the wire or a job file.

    Our own errors keep their class name and arguments; anything else becomes
    ``GenericError`` with the exception's text, so no foreign class name or
    unserialisable argument ever leaves the daemon.
    """
    for cls in type(exc).__mro__:
        name = _WIRE_NAMES.get(cls, cls.__name__)
        if _ENCODABLE.get(name) is cls:
            return [name, _plain(list(exc.args))]
    return ["GenericError", [f"{type(exc).__name__}: {exc}"]]


def is_encoded_error(value: Any) -> bool:
    """Tell whether ``value`` has the shape ``[known ClassName, [args]]``."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and value[0] in _ENCODABLE
        and isinstance(value[1], list | tuple)
    )


def decode_error(value: Any) -> GenericError:
    """Turn an encoded error back into an exception instance (not raised).

    Unknown names and malformed values become ``GenericError`` with the raw
    value as text; decoding never fails.
    """
    if not is_encoded_error(value):
        return GenericError(str(value))
    cls = _ENCODABLE[value[0]]
    try:
        return cls(*value[1])
    except TypeError:
        return cls(*[str(arg) for arg in value[1][:1]])
