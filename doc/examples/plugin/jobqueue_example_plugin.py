"""An example third-party opcode for jobqueue: OP_EXAMPLE_GREET.

Install a package containing this module with the entry point::

    entry_points={"jobqueue.opcodes": ["example = jobqueue_example_plugin:opcode_pairs"]}

or load it explicitly: ``jobqueue-masterd --plugin jobqueue_example_plugin``.
"""

from __future__ import annotations

from jobqueue.lus.base import LogicalUnit
from jobqueue.opcodes import NON_EMPTY_STRING, NON_NEGATIVE_INT, OpCode, Param


class OpExampleGreet(OpCode):
    OP_ID = "OP_EXAMPLE_GREET"
    SUMMARY_FIELD = "name"
    PARAMS = (
        Param("name", NON_EMPTY_STRING, required=True, doc="Whom to greet"),
        Param("times", NON_NEGATIVE_INT, default=1, doc="How often"),
    )


class LUExampleGreet(LogicalUnit):
    """Logs a greeting per round under an exclusive lock named after the person."""

    def locks(self) -> tuple[list[str], list[str]]:
        return [f"person:{self.op.name}"], []

    def exec(self) -> str:
        greeting = f"Hello, {self.op.name}!"
        for _ in range(self.op.times):
            self.ctx.log(greeting)
        return greeting


def opcode_pairs() -> list[tuple[type[OpCode], type[LogicalUnit]]]:
    return [(OpExampleGreet, LUExampleGreet)]
