"""An example third-party opcode for jobqueue: OP_EXAMPLE_GREET.

Install a package containing this module with the entry point::

    entry_points={"jobqueue.opcodes": ["example = jobqueue_example_plugin:opcode_pairs"]}

or load it explicitly: ``jobqueue-masterd --plugin jobqueue_example_plugin``.

The opcode is a typed record: each parameter is a field made with
``param()`` (its type check, default and doc), so ``self.op.times`` is an
``int`` to mypy in the LU, which names its opcode class in
``LogicalUnit[...]``. What the LU returns and logs is stored in its job, so
it must be plain JSON (strings, numbers, booleans, None, lists, dicts with
string keys); anything else fails the opcode.
"""

from __future__ import annotations

from jobqueue.lus.base import LogicalUnit
from jobqueue.opcodes import NON_EMPTY_STRING, OpCode, int_range, param


class OpExampleGreet(OpCode):
    OP_ID = "OP_EXAMPLE_GREET"
    SUMMARY_FIELD = "name"

    name: str = param(NON_EMPTY_STRING, doc="Whom to greet")
    times: int = param(int_range(0, 100), default=1, doc="How often")


class LUExampleGreet(LogicalUnit[OpExampleGreet]):
    """Logs a greeting per round under an exclusive lock named after the person."""

    def locks(self) -> tuple[list[str], list[str]]:
        return [f"person:{self.op.name}"], []

    def exec(self) -> str:
        greeting = f"Hello, {self.op.name}!"
        for _ in range(self.op.times):
            self.ctx.log(greeting)
        return greeting


def opcode_pairs() -> list[tuple[type[OpCode], type[LogicalUnit[OpExampleGreet]]]]:
    return [(OpExampleGreet, LUExampleGreet)]
