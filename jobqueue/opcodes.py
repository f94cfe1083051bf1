"""Opcode definitions: typed parameters, submit-time validation, the registry.

An opcode class declares its ``OP_ID`` and its parameters; every opcode also
has the base parameters ``priority``, ``depends``, ``comment``,
``debug_level`` and ``dry_run``. ``Registry.validate`` checks a submitted
opcode dict completely (unknown ``OP_ID``, unknown, missing or mistyped
parameters) before the job is stored, and returns the dict with defaults
filled in, which is what the job file keeps as the opcode's ``input``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from jobqueue import constants
from jobqueue.errors import ECODE_INVAL, OpCodeUnknown, OpPrereqError, ProgrammerError
from jobqueue.model import default_summary, is_json_int

Check = Callable[[Any], bool]


# -- type checks: each a predicate with a description for error messages ---------
@dataclasses.dataclass(frozen=True)
class Type:
    """A parameter type: a predicate and the words that describe it."""

    check: Check
    description: str

    def __call__(self, value: Any) -> bool:
        return self.check(value)


def _is_number(value: Any) -> bool:
    """An int (of any size) or a finite float; a huge int is never converted to float."""
    return is_json_int(value) or (isinstance(value, float) and math.isfinite(value))


ANY = Type(lambda value: True, "any JSON value")
BOOL = Type(lambda value: isinstance(value, bool), "a boolean")
INT = Type(is_json_int, "an integer")
NON_NEGATIVE_INT = Type(lambda value: is_json_int(value) and value >= 0, "an integer >= 0")
NON_NEGATIVE_NUMBER = Type(lambda value: _is_number(value) and value >= 0, "a number >= 0")
#: Seconds a thread can wait for: beyond ``threading.TIMEOUT_MAX`` a wait raises OverflowError.
SECONDS = Type(
    lambda value: _is_number(value) and 0 <= value <= threading.TIMEOUT_MAX,
    f"a number of seconds from 0 to {threading.TIMEOUT_MAX:.0f}",
)
STRING = Type(lambda value: isinstance(value, str), "a string")
NON_EMPTY_STRING = Type(lambda value: isinstance(value, str) and value != "", "a non-empty string")


def optional(inner: Type) -> Type:
    return Type(lambda value: value is None or inner(value), f"null or {inner.description}")


def list_of(inner: Type, *, non_empty: bool = False) -> Type:
    words = f"a {'non-empty ' if non_empty else ''}list, each item {inner.description}"
    return Type(
        lambda value: (
            isinstance(value, list)
            and (bool(value) or not non_empty)
            and all(inner(item) for item in value)
        ),
        words,
    )


STRING_DICT = Type(
    lambda value: (
        isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ),
    "an object of strings",
)

OPCODE_OBJECT = Type(
    lambda value: isinstance(value, dict) and isinstance(value.get("OP_ID"), str),
    "an opcode object with an OP_ID",
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
    return id_ok and all(status in constants.FINALIZED for status in statuses)


DEPENDENCIES = Type(
    lambda value: isinstance(value, list) and all(_is_dependency(dep) for dep in value),
    "a list of [job_id, [statuses]] with statuses among canceled, error, success",
)


@dataclasses.dataclass(frozen=True)
class Param:
    """One opcode parameter; ``default`` is copied, never shared."""

    name: str
    type: Type
    required: bool = False
    default: Any = None
    doc: str = ""


BASE_PARAMS: tuple[Param, ...] = (
    Param("priority", INT, doc="Priority: -10 high, 0 normal, 10 low"),
    Param("depends", optional(DEPENDENCIES), doc="Jobs this opcode waits for"),
    Param("comment", optional(STRING), doc="Free-form comment"),
    Param("debug_level", optional(NON_NEGATIVE_INT), doc="Debug verbosity"),
    Param("dry_run", optional(BOOL), doc="Check only, do not run"),
)
BASE_NAMES = frozenset(param.name for param in BASE_PARAMS)


class OpCode:
    """Base of all opcodes: attribute access to the (validated) parameters.

    Subclasses set ``OP_ID``, ``PARAMS`` and optionally ``SUMMARY_FIELD`` (a
    parameter shown in listings as ``NAME(value)``).
    """

    OP_ID: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    SUMMARY_FIELD: ClassVar[str | None] = None

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @classmethod
    def all_params(cls) -> tuple[Param, ...]:
        return BASE_PARAMS + cls.PARAMS

    @classmethod
    def summary(cls, values: dict[str, Any]) -> str:
        """Short text for listings, e.g. ``TEST_DELAY(0.5)``."""
        name = cls.OP_ID.removeprefix("OP_")
        if cls.SUMMARY_FIELD is None or values.get(cls.SUMMARY_FIELD) is None:
            return name
        value = values[cls.SUMMARY_FIELD]
        if isinstance(value, list):
            value = value[0] if value else ""
        text = str(value)
        return f"{name}({text if len(text) <= 40 else text[:37] + '...'})"


class Registry:
    """Maps ``OP_ID`` to an opcode class and the class of its logical unit."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[type[OpCode], type[Any]]] = {}

    def register(self, opcode: type[OpCode], lu_class: type[Any]) -> None:
        """Add one opcode; ``ProgrammerError`` for a duplicate or malformed class."""
        if not opcode.OP_ID.startswith("OP_"):
            raise ProgrammerError(f"{opcode.__name__}: OP_ID must start with OP_")
        if opcode.OP_ID in self._entries:
            raise ProgrammerError(f"Opcode {opcode.OP_ID} is registered twice")
        names = [param.name for param in opcode.all_params()]
        if len(names) != len(set(names)):
            raise ProgrammerError(f"{opcode.OP_ID}: duplicate parameter names")
        self._entries[opcode.OP_ID] = (opcode, lu_class)

    def register_all(self, pairs: Iterable[tuple[type[OpCode], type[Any]]]) -> None:
        for opcode, lu_class in pairs:
            self.register(opcode, lu_class)

    def op_ids(self) -> list[str]:
        return sorted(self._entries)

    def lookup(self, op_id: Any) -> tuple[type[OpCode], type[Any]]:
        """The opcode and LU classes; ``OpCodeUnknown`` if none is registered."""
        if not isinstance(op_id, str) or op_id not in self._entries:
            raise OpCodeUnknown(f"Unknown opcode {op_id!r}")
        return self._entries[op_id]

    def validate(self, data: Any) -> dict[str, Any]:
        """Check a submitted opcode; return it with defaults filled in.

        Raises ``OpCodeUnknown`` or ``OpPrereqError(..., "wrong_input")``
        naming the opcode and the parameter.
        """
        if not isinstance(data, dict):
            raise OpPrereqError(f"An opcode must be an object, got {_show(data)}", ECODE_INVAL)
        opcode, _ = self.lookup(data.get("OP_ID"))
        params = {param.name: param for param in opcode.all_params()}
        unknown = sorted(set(data) - set(params) - {"OP_ID"})
        if unknown:
            raise OpPrereqError(
                "Unknown parameter " + ", ".join(f"'{opcode.OP_ID}.{name}'" for name in unknown),
                ECODE_INVAL,
            )
        result: dict[str, Any] = {"OP_ID": opcode.OP_ID}
        for name, param in params.items():
            if name not in data:
                if param.required:
                    raise OpPrereqError(
                        f"Required parameter '{opcode.OP_ID}.{name}' is missing", ECODE_INVAL
                    )
                if name not in BASE_NAMES:
                    result[name] = _fresh(param.default)
                continue
            if not param.type(data[name]):
                raise OpPrereqError(
                    f"Parameter '{opcode.OP_ID}.{name}' must be {param.type.description}, "
                    f"got {_show(data[name])}",
                    ECODE_INVAL,
                )
            result[name] = data[name]
        return result

    def build(self, data: dict[str, Any]) -> OpCode:
        """An opcode object from an already validated dict."""
        opcode, _ = self.lookup(data.get("OP_ID"))
        values = {param.name: _fresh(param.default) for param in opcode.all_params()}
        values.update(data)
        return opcode(values)

    def summarize(self, data: dict[str, Any]) -> str:
        """Listing summary for an opcode dict; unknown opcodes show their OP_ID."""
        try:
            opcode, _ = self.lookup(data.get("OP_ID"))
        except OpCodeUnknown:
            return default_summary(data)
        return opcode.summary(data)

    def describe(self) -> list[dict[str, Any]]:
        """Every opcode with its parameters, for documentation and ``--help``."""
        return [
            {
                "OP_ID": op_id,
                "params": [
                    {
                        "name": p.name,
                        "type": p.type.description,
                        "required": p.required,
                        "default": p.default,
                        "doc": p.doc,
                    }
                    for p in self._entries[op_id][0].all_params()
                ],
            }
            for op_id in self.op_ids()
        ]


def _fresh(value: Any) -> Any:
    """A copy of a mutable default, so no two opcodes share one list."""
    if isinstance(value, list | dict):
        return type(value)(value)
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
