"""What every logical unit shares: the context it runs in and its base class."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from jobqueue import constants
from jobqueue.model import Submitter
from jobqueue.opcodes import OpCode

if TYPE_CHECKING:
    from jobqueue.children import ProcessGroups


class ExecCallbacks(Protocol):
    """The queue's side of running one opcode (implemented by the job step)."""

    def notify_waiting(self) -> None:
        """A lock is not free: the opcode will wait for it (written to disk now)."""

    def notify_start(self) -> None:
        """Locks are held; the opcode is about to run."""

    def feedback(self, log_type: str, message: Any) -> None:
        """Append one log entry to the opcode and write the job."""

    def feedback_many(self, entries: list[tuple[str, Any]]) -> None:
        """Append several log entries with one write."""

    def check_cancel(self) -> None:
        """Raise ``JobCanceled`` or ``QueueShutdown`` when the opcode must stop."""

    def kill_requested(self) -> bool:
        """Whether a running opcode was asked to stop (``CancelJob(id, kill=True)``)."""

    def wait_kill(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as a kill is requested."""

    def submit_many_jobs(self, jobs: list[list[dict[str, Any]]]) -> list[list[Any]]:
        """Submit jobs as ``SubmitManyJobs`` does."""

    def current_priority(self) -> int:
        """The opcode's current priority (it may change while waiting)."""


class RawOutput(Protocol):
    """One opcode's raw output streams (``outputs.OpcodeOutput``)."""

    def write(self, stream: str, data: bytes) -> None:
        """Append to ``stream`` (``stdout``, ``stderr``); ``StorageError`` on failure."""

    def close(self) -> None:
        """Make the output durable; ``StorageError`` on failure."""


class OutputSink(Protocol):
    """Where commands' raw output is kept (``outputs.OutputRecorder``)."""

    def open(self, job_id: int, op_index: int) -> RawOutput:
        """The output of one opcode; ``StorageError`` if it cannot be kept."""


@dataclasses.dataclass
class ResultWithJobs:
    """Returned by an LU to have the processor submit ``jobs``.

    The opcode's result becomes ``{"jobs": [[true, id] | [false, reason]], **extra}``.
    """

    jobs: list[list[dict[str, Any]]]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LUContext:
    """Everything an LU may use besides its opcode."""

    job_id: int
    callbacks: ExecCallbacks
    kill_grace: float = constants.DEFAULT_KILL_GRACE
    #: Where commands record their process groups; None records nothing.
    processes: ProcessGroups | None = None
    #: Who submitted the job (None: stored before submitters were recorded).
    submitter: Submitter | None = None
    #: ``submitter``: a root daemon runs commands as the submitter; ``daemon``: as itself.
    commands_run_as: str = "submitter"
    #: The opcode's position in its job, from 0.
    op_index: int = 0
    #: Where commands keep their raw output; None keeps none.
    output: OutputSink | None = None

    def log(self, message: Any, log_type: str = constants.ELOG_MESSAGE) -> None:
        self.callbacks.feedback(log_type, message)


Op = TypeVar("Op", bound=OpCode)


class LogicalUnit(Generic[Op]):
    """Base class: subclasses implement ``exec`` and, if needed, the hooks.

    An LU names the opcode it runs, ``class LUTestDelay(LogicalUnit[OpTestDelay])``,
    so ``self.op`` has that record's typed attributes (the registry refuses
    to pair it with another opcode class). Order of calls by the processor:
    ``check_arguments``, ``locks`` (then the locks are acquired), ``exec`` or,
    for ``dry_run``, ``dry_run_result``.
    """

    #: Take the cluster lock exclusively (no other opcode runs meanwhile).
    REQ_CLUSTER_EXCLUSIVE: ClassVar[bool] = False

    def __init__(self, op: Op, ctx: LUContext) -> None:
        self.op = op
        self.ctx = ctx

    def check_arguments(self) -> None:
        """Checks at run time; raise ``OpPrereqError``.

        What the opcode's values alone decide belongs in ``OpCode.check``,
        which runs at submission.
        """

    def locks(self) -> tuple[list[str], list[str]]:
        """Resource locks as (exclusive names, shared names)."""
        return [], []

    def exec(self) -> Any:
        raise NotImplementedError

    def dry_run_result(self) -> Any:
        """What a dry run returns; by default nothing."""
        return None


LUClass = type[LogicalUnit[Any]]
Pairs = list[tuple[type[OpCode], LUClass]]
PluginLoader = Callable[[], Pairs]
