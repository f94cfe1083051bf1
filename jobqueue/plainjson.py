"""What an opcode may put into its job: values a job file holds as plain JSON.

A job is stored as JSON (``storage.base.encode_job``), so what an opcode's
logical unit returns, and the messages it logs, must be plain JSON values:
``None``, booleans, integers, finite floats, strings, lists (a tuple is
stored as a list) and objects whose keys are strings, nested at most
``MAX_DEPTH`` levels. Subclasses count as their base (an ``IntEnum`` is an
integer). A number key is refused too: JSON would store it as a string,
and ``{1: "a", "1": "b"}`` as one key twice, of which a reader keeps one.

Anything else either fails the job's write (a set, bytes, any other object:
the job would be left running) or is stored as something other than what
the opcode gave (a plain ``Enum`` as its value, a ``UUID`` as a string, NaN
as null). ``problem`` names the first such value, for the processor and the
job step to refuse it with an ``OpExecError`` before it reaches the job.

Pure; iterative, so a value of any depth is checked without recursion.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from jobqueue.opcodes import MAX_NESTING

#: Deepest nesting of lists and objects in a result or a log message: that
#: of an opcode's own parameters.
MAX_DEPTH = MAX_NESTING

# A step of the walk: the value, its depth, and the trail that reaches it
# (None for the root, else the parent's trail and the key or index).
_Trail = tuple[Any, Any] | None


def problem(value: Any, name: str) -> str | None:
    """None if ``value`` is plain JSON, else what the first value that is not is.

    ``name`` names ``value`` in the answer, for example ``"result['disks'][1]
    is of type set"`` for ``name`` "result".
    """
    if value is None or isinstance(value, str | bool):  # most results and messages
        return None
    pending: list[tuple[Any, int, _Trail]] = [(value, 0, None)]
    while pending:
        node, depth, trail = pending.pop()
        if isinstance(node, list | tuple):
            children: Any = enumerate(node)
        elif isinstance(node, dict):
            children = dict.items(node)  # what the encoders read, whatever a subclass says
            for key, _ in children:
                if not isinstance(key, str):
                    return f"{_path(name, trail)} has a key of type {type(key).__name__}"
        else:
            what = _scalar_problem(node)
            if what is None:
                continue
            return f"{_path(name, trail)} {what}"
        if depth >= MAX_DEPTH:
            return f"{_path(name, trail)} nests lists and objects deeper than {MAX_DEPTH} levels"
        for key, child in children:
            pending.append((child, depth + 1, (trail, key)))
    return None


def _scalar_problem(value: Any) -> str | None:
    """None for a plain JSON scalar, else what is wrong with ``value``."""
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        bits = value.bit_length()
        if bits <= _ALWAYS_STORABLE_BITS or bits <= max_int_bits():
            return None
        return "is an integer too long to store"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"is {value!r}, which JSON cannot hold"
    return f"is of type {type(value).__name__}"


#: ``max_int_bits`` under the lowest digit limit Python allows: no need to ask.
_ALWAYS_STORABLE_BITS = 3 * sys.int_info.str_digits_check_threshold


def max_int_bits() -> int:
    """The longest integer, in bits, a job may hold.

    One that this interpreter and one with the default limit (4,300 decimal
    digits) both convert to a decimal string, so that any daemon can read the
    job back: 3 bits per digit, a little below log2(10).
    """
    default = sys.int_info.default_max_str_digits
    digits = sys.get_int_max_str_digits() or default  # 0: no limit
    return 3 * min(digits, default)


def _path(name: str, trail: _Trail) -> str:
    """``name`` followed by the keys and indexes of ``trail``, outermost first."""
    steps = []
    while trail is not None:
        trail, key = trail
        steps.append(f"[{key!r}]")
    return name + "".join(reversed(steps))
