"""The opcode registry: ``OP_ID`` to (opcode class, LU class), and validation.

``Registry.typed`` turns a submitted opcode dict into its typed record in one
pass: unknown ``OP_ID`` (``OpCodeUnknown``), unknown, missing, too deeply
nested or mistyped parameters, opcodes nested in parameters (each validated
as a full opcode), then the record's own ``check`` (``OpPrereqError`` with
``wrong_input`` naming ``'OP_X.param'``). The record keeps the dict with
defaults filled in, which is what the job file stores as the opcode's
``input``. ``Registry.load`` does the same for an opcode read back from
storage, but never raises: what no longer validates becomes an
``InvalidOpCode`` that fails when it runs.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterable
from typing import Any

from jobqueue.errors import ECODE_INVAL, GenericError, OpCodeUnknown, OpPrereqError, ProgrammerError
from jobqueue.model import default_summary
from jobqueue.opcodes.record import InvalidOpCode, OpCode, Param, fresh
from jobqueue.opcodes.types import MAX_NESTING, Freeze, OpcodeList, same, show, too_deep


class Registry:
    """Maps ``OP_ID`` to an opcode class and the class of its logical unit."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[type[OpCode], type[Any]]] = {}
        self._plans: dict[str, dict[str, tuple[Param, Freeze | None]]] = {}

    def register(self, opcode: type[OpCode], lu_class: type[Any]) -> None:
        """Add one opcode; ``ProgrammerError`` for a duplicate or malformed class."""
        if not (isinstance(opcode, type) and issubclass(opcode, OpCode)):
            raise ProgrammerError(f"{opcode!r} is not an OpCode class")
        if not opcode.OP_ID.startswith("OP_"):
            raise ProgrammerError(f"{opcode.__name__}: OP_ID must start with OP_")
        if opcode.OP_ID in self._entries:
            raise ProgrammerError(f"Opcode {opcode.OP_ID} is registered twice")
        names = opcode.declared_names()
        if len(names) != len(set(names)):
            raise ProgrammerError(f"{opcode.OP_ID}: duplicate parameter names")
        try:
            opcode.all_params()
        except TypeError as err:
            raise ProgrammerError(f"{opcode.OP_ID}: {err}") from None
        _check_lu_matches(opcode, lu_class)
        self._entries[opcode.OP_ID] = (opcode, lu_class)
        self._plans[opcode.OP_ID] = self._plan(opcode)

    def register_all(self, pairs: Iterable[tuple[type[OpCode], type[Any]]]) -> None:
        for opcode, lu_class in pairs:
            self.register(opcode, lu_class)

    def op_ids(self) -> list[str]:
        return sorted(self._entries)

    def lookup(self, op_id: Any) -> tuple[type[OpCode], type[Any]]:
        """The opcode and LU classes; ``OpCodeUnknown`` if none is registered."""
        if not isinstance(op_id, str) or op_id not in self._entries:
            name = show(op_id) if isinstance(op_id, list | dict) else repr(op_id)
            raise OpCodeUnknown(f"Unknown opcode {name}")
        return self._entries[op_id]

    # -- validation ------------------------------------------------------------
    def typed(self, data: Any) -> OpCode:
        """The typed record of a submitted opcode; see the module docstring.

        Raises ``OpCodeUnknown`` or ``OpPrereqError(..., "wrong_input")``.
        """
        return self._typed(data, nested=False)

    def validate(self, data: Any) -> dict[str, Any]:
        """Check a submitted opcode; return it with defaults filled in (as stored)."""
        return self.typed(data).to_dict()

    def load(self, data: dict[str, Any]) -> OpCode | InvalidOpCode:
        """The record of a stored opcode, or an ``InvalidOpCode`` holding why not."""
        try:
            return self.typed(data)
        except GenericError as err:
            return InvalidOpCode(str(data.get("OP_ID")), err)

    def _typed(self, data: Any, *, nested: bool) -> OpCode:
        """Validate and freeze; a ``nested`` opcode keeps the form it was given in."""
        if not isinstance(data, dict):
            raise OpPrereqError(f"An opcode must be an object, got {show(data)}", ECODE_INVAL)
        opcode, _ = self.lookup(data.get("OP_ID"))
        op_id = opcode.OP_ID
        plan = self._plans[op_id]
        if len(data) > len(plan) + 1 or not plan.keys() >= data.keys() - {"OP_ID"}:
            unknown = sorted(data.keys() - plan.keys() - {"OP_ID"})
            raise OpPrereqError(
                "Unknown parameter " + ", ".join(f"'{op_id}.{name}'" for name in unknown),
                ECODE_INVAL,
            )
        stored: dict[str, Any] = {"OP_ID": op_id}
        values: dict[str, Any] = {}
        for name, (spec, freeze) in plan.items():
            if name not in data:
                if spec.required:
                    raise OpPrereqError(
                        f"Required parameter '{op_id}.{name}' is missing", ECODE_INVAL
                    )
                if spec.fill:
                    stored[name] = fresh(spec.default)
                continue
            value = data[name]
            if (
                not nested
                and isinstance(value, list | dict)
                and (spec.type.nesting is None or spec.type.nesting >= MAX_NESTING)
                and too_deep(value, MAX_NESTING - 1)
            ):
                raise OpPrereqError(
                    f"Parameter '{op_id}.{name}' is nested deeper than {MAX_NESTING} levels",
                    ECODE_INVAL,
                )
            if not spec.type.check(value):
                raise OpPrereqError(
                    f"Parameter '{op_id}.{name}' must be {spec.type.description}, "
                    f"got {show(value)}",
                    ECODE_INVAL,
                )
            values[name] = value if freeze is None else freeze(value)
            stored[name] = value
        record = opcode.from_checked(values, data if nested else stored)
        record.check()
        return record

    def _plan(self, opcode: type[OpCode]) -> dict[str, tuple[Param, Freeze | None]]:
        """Each parameter with what turns an accepted value into the record's (None: as is)."""
        plan: dict[str, tuple[Param, Freeze | None]] = {}
        for spec in opcode.all_params():
            kind = spec.type
            freeze: Freeze | None = None
            if isinstance(kind, OpcodeList):
                freeze = functools.partial(self._opcodes, f"{opcode.OP_ID}.{spec.name}", kind)
            elif opcode.FROZEN and kind.freeze is not same:
                freeze = kind.freeze
            plan[spec.name] = (spec, freeze)
        return plan

    def _opcodes(self, where: str, kind: OpcodeList, value: list[Any]) -> tuple[Any, ...]:
        """The records of the opcodes in a parameter (a list, or a list of jobs)."""
        if kind.levels == 1:
            return tuple(self._inner(op, f"{where}[{i}]") for i, op in enumerate(value))
        return tuple(
            tuple(self._inner(op, f"{where}[{j}][{i}]") for i, op in enumerate(job))
            for j, job in enumerate(value)
        )

    def _inner(self, data: Any, where: str) -> OpCode:
        """One opcode inside a parameter; its errors name where it sits."""
        try:
            return self._typed(data, nested=True)
        except (OpCodeUnknown, OpPrereqError) as err:
            raise OpPrereqError(f"Parameter '{where}': {err}", ECODE_INVAL) from None

    # -- descriptions ------------------------------------------------------------
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


def _check_lu_matches(opcode: type[OpCode], lu_class: type[Any]) -> None:
    """An LU declared for one opcode class (``LogicalUnit[OpX]``) gets no other."""
    for base in getattr(lu_class, "__orig_bases__", ()):
        for arg in typing.get_args(base):
            if isinstance(arg, type) and issubclass(arg, OpCode) and not issubclass(opcode, arg):
                raise ProgrammerError(
                    f"{lu_class.__name__} runs {arg.__name__}, not {opcode.__name__}"
                )
