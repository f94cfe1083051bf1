"""Control-flow signals between the processor, the LUs and the job step.

These are not errors (they are outside the ``GenericError`` tree): each one
tells the job step what to do next with the opcode it is running.
"""

from __future__ import annotations


class JobCanceled(Exception):
    """The job was canceled; the step finalizes it as canceled."""


class QueueShutdown(Exception):
    """The queue is shutting down; a not-yet-running opcode goes back to queued."""


class LockAcquireTimeout(Exception):
    """The opcode's locks were not acquired in time; the job is deferred."""
