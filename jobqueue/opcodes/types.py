"""Parameter types: a check on the submitted JSON value and its immutable form.

A ``Type`` is a predicate with the words that describe it (for error
messages) and a ``freeze`` function turning an accepted JSON value into the
value a typed opcode record holds: lists become tuples, objects read-only
mappings. ``OpcodeList`` marks parameters that hold whole opcodes; the
registry validates each of those as an opcode of its own.

Every check here is iterative or bounded by the type's own structure, never
by the value's nesting: ``too_deep`` measures nesting without recursion, and
the registry refuses values deeper than ``MAX_NESTING`` before any other check.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jobqueue import constants
from jobqueue.constants import Status
from jobqueue.model import is_json_int

Check = Callable[[Any], bool]
Freeze = Callable[[Any], Any]

#: Containers nested deeper than this anywhere in an opcode (the opcode object
#: itself is level 1) are refused at submission: copies, summaries and JSON
#: encoding of an accepted opcode never come near Python's recursion limit.
MAX_NESTING = 64


def same(value: Any) -> Any:
    """The identity: the frozen form of a value that is immutable already."""
    return value


@dataclasses.dataclass(frozen=True)
class Type:
    """A parameter type: a predicate, the words that describe it, its frozen form.

    ``nesting`` is how deep an accepted value can nest lists and objects (0
    for a scalar) when the check itself looks no deeper than that, so a
    deeper value fails it without recursion; None (any depth, or a check
    not known to stop) makes the registry measure the value before checking.
    """

    check: Check
    description: str
    freeze: Freeze = same
    nesting: int | None = None

    def __call__(self, value: Any) -> bool:
        return self.check(value)


@dataclasses.dataclass(frozen=True)
class OpcodeList(Type):
    """Opcodes inside a parameter: a list of them (``levels=1``) or a list of jobs (2).

    The check looks at the shape only; the registry validates every opcode
    as a full opcode and the record holds them as typed opcodes.
    """

    levels: int = 1


class Dependency(NamedTuple):
    """One entry of ``depends``: a job id (negative: relative) and the statuses wanted."""

    job_id: int
    statuses: tuple[Status, ...]


class ReasonEntry(NamedTuple):
    """One entry of a reason trail: who, why, and when (nanoseconds since the epoch)."""

    source: str
    reason: str
    timestamp_ns: int


def _is_number(value: Any) -> bool:
    """An int (of any size) or a finite float; a huge int is never converted to float."""
    return is_json_int(value) or (isinstance(value, float) and math.isfinite(value))


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(value))


ANY = Type(lambda value: True, "any JSON value")
BOOL = Type(lambda value: isinstance(value, bool), "a boolean", nesting=0)
INT = Type(is_json_int, "an integer", nesting=0)
NON_NEGATIVE_INT = Type(
    lambda value: is_json_int(value) and value >= 0, "an integer >= 0", nesting=0
)
NON_NEGATIVE_NUMBER = Type(
    lambda value: _is_number(value) and value >= 0, "a number >= 0", nesting=0
)
#: Seconds a thread can wait for: beyond ``threading.TIMEOUT_MAX`` a wait raises OverflowError.
SECONDS = Type(
    lambda value: _is_number(value) and 0 <= value <= threading.TIMEOUT_MAX,
    f"a number of seconds from 0 to {threading.TIMEOUT_MAX:.0f}",
    nesting=0,
)
STRING = Type(lambda value: isinstance(value, str), "a string", nesting=0)
NON_EMPTY_STRING = Type(
    lambda value: isinstance(value, str) and value != "", "a non-empty string", nesting=0
)


def int_range(low: int, high: int) -> Type:
    """An integer from ``low`` to ``high``, both included."""
    return Type(
        lambda value: is_json_int(value) and low <= value <= high,
        f"an integer from {low} to {high}",
        nesting=0,
    )


def optional(inner: Type) -> Type:
    """``null`` or ``inner``; the record holds None or ``inner``'s frozen form."""
    freeze = inner.freeze
    return Type(
        lambda value: value is None or inner(value),
        f"null or {inner.description}",
        same if freeze is same else (lambda value: None if value is None else freeze(value)),
        inner.nesting,
    )


def list_of(inner: Type, *, non_empty: bool = False) -> Type:
    """A JSON list whose items are all ``inner``; the record holds a tuple."""
    words = f"a {'non-empty ' if non_empty else ''}list, each item {inner.description}"
    freeze = inner.freeze
    return Type(
        lambda value: (
            isinstance(value, list)
            and (bool(value) or not non_empty)
            and all(inner(item) for item in value)
        ),
        words,
        tuple if freeze is same else (lambda value: tuple(freeze(item) for item in value)),
        None if inner.nesting is None else inner.nesting + 1,
    )


STRING_DICT = Type(
    lambda value: (
        isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ),
    "an object of strings",
    _frozen_mapping,
    nesting=1,
)

#: Shape only, for plugins that hand opcodes on unchecked; built-ins use ``OPCODES``.
OPCODE_OBJECT = Type(
    lambda value: isinstance(value, dict) and isinstance(value.get("OP_ID"), str),
    "an opcode object with an OP_ID",
)

OPCODES = OpcodeList(
    lambda value: isinstance(value, list) and all(isinstance(op, dict) for op in value),
    "a list, each item an opcode object",
    levels=1,
)
JOBS = OpcodeList(
    lambda value: (
        isinstance(value, list)
        and all(
            isinstance(job, list) and job and all(isinstance(op, dict) for op in job)
            for job in value
        )
    ),
    "a list of jobs, each a non-empty list of opcode objects",
    levels=2,
)

#: A job id given as a string: ASCII digits, as many as an int64 has at most.
_DIGITS = re.compile(r"[0-9]{1,20}")


def _is_dependency(value: Any) -> bool:
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
        return False
    job_id, statuses = value
    id_ok = is_json_int(job_id) or (
        isinstance(job_id, str) and _DIGITS.fullmatch(job_id) is not None
    )
    return id_ok and all(
        isinstance(status, str) and status in constants.FINALIZED for status in statuses
    )


def _freeze_dependencies(value: list[Any]) -> tuple[Dependency, ...]:
    return tuple(
        Dependency(int(job_id), tuple(Status(status) for status in statuses))
        for job_id, statuses in value
    )


DEPENDENCIES = Type(
    lambda value: isinstance(value, list) and all(_is_dependency(dep) for dep in value),
    "a list of [job_id, [statuses]] with statuses among canceled, error, success",
    _freeze_dependencies,
    nesting=3,
)


def _is_reason_entry(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], str)
        and is_json_int(value[2])
    )


REASON_TRAIL = Type(
    lambda value: isinstance(value, list) and all(_is_reason_entry(entry) for entry in value),
    "a list of [source, reason, timestamp_ns], two strings and an integer",
    lambda value: tuple(map(ReasonEntry._make, value)),
    nesting=2,
)


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (itself: 1).

    Iterative, so any depth is measured without recursion.
    """
    if not isinstance(value, list | dict):
        return False
    if limit < 1:
        return True
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        container, depth = pending.pop()
        for item in container.values() if isinstance(container, dict) else container:
            if isinstance(item, list | dict):
                if depth >= limit:
                    return True
                pending.append((item, depth + 1))
    return False


def show(value: Any) -> str:
    """A short rendering of a refused value for an error message."""
    if too_deep(value, 8):
        return f"a {type(value).__name__} nested too deep to show"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
