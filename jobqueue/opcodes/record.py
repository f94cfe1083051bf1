"""Typed opcode records: the ``OpCode`` base, its parameters, and the common ones.

An opcode is a frozen dataclass: each parameter is a typed, keyword-only
field made with ``param()``, which carries the parameter's ``Type`` (its check
and its frozen form), its default and its doc. mypy sees the field types, so
an LU reading ``self.op.duration`` gets a ``float``::

    class OpTestDelay(OpCode):
        OP_ID = "OP_TEST_DELAY"
        duration: float = param(SECONDS, doc="Seconds to sleep")
        on_nodes: tuple[str, ...] = param(list_of(NON_EMPTY_STRING), default=())

Subclasses become dataclasses by themselves (``__init_subclass__``). The older
plugin style, a ``PARAMS`` tuple of ``Param``, still works: those fields are
generated from it, typed ``Any``, and hold the values as submitted (JSON
lists and objects) instead of frozen ones, as such LUs expect.

A record made by the registry keeps the JSON form it was validated into
(``stored``, shared with the job that stores it; ``to_dict`` hands out
copies), so writing a job never re-encodes its opcodes.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
from collections.abc import Callable
from typing import Any, ClassVar, Self, dataclass_transform

from jobqueue import constants
from jobqueue.errors import ECODE_INVAL, GenericError, OpPrereqError
from jobqueue.opcodes.types import (
    BOOL,
    DEPENDENCIES,
    INT,
    MAX_NESTING,
    NON_NEGATIVE_INT,
    REASON_TRAIL,
    STRING,
    Dependency,
    ReasonEntry,
    Type,
    optional,
    too_deep,
)

#: Where a job's reason trail says the daemon accepted it.
REASON_SOURCE_DAEMON = "gnt:daemon:jobqueue-masterd"
#: Prefix of the trail entry naming the opcode that submitted a job; the OP_ID follows.
REASON_SOURCE_OPCODE = "gnt:opcode:"

_SPEC = "jobqueue.param"


@dataclasses.dataclass(frozen=True)
class Param:
    """One opcode parameter as validation and ``describe`` see it.

    ``default`` is the JSON value (copied, never shared). ``fill`` says
    whether validation writes the default into the stored opcode when the
    parameter is absent (the common parameters and the Ganeti compatibility
    ones are left out, so stored opcodes keep today's keys).
    """

    name: str
    type: Type
    required: bool = False
    default: Any = None
    doc: str = ""
    fill: bool = True


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What ``param()`` leaves on a field for the registry."""

    type: Type
    required: bool
    default: Any
    doc: str
    fill: bool


def param(
    type_: Type, *, default: Any = dataclasses.MISSING, doc: str = "", fill: bool = True
) -> Any:
    """A typed opcode field; without ``default`` the parameter is required.

    ``default`` may be given as JSON (``[]``, ``{}``) or in its frozen form
    (``()``); the record holds the frozen form, the stored opcode the JSON one.
    """
    if default is dataclasses.MISSING:
        spec = _Spec(type_, True, None, doc, fill)
        return dataclasses.field(metadata={_SPEC: spec})
    frozen = type_.freeze(default)
    spec = _Spec(type_, False, thaw(frozen), doc, fill)
    return _field_with_default(frozen, spec)


def thaw(value: Any) -> Any:
    """The JSON form of a record's value: tuples to lists, mappings and records to dicts."""
    if value is None or isinstance(value, str | int | float):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    if isinstance(value, types.MappingProxyType):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, OpCode):
        return value.to_dict()
    return value


def _field_with_default(value: Any, spec: _Spec) -> Any:
    if type(value).__hash__ is None:  # e.g. a read-only mapping: dataclasses want a factory
        return dataclasses.field(default_factory=lambda: value, metadata={_SPEC: spec})
    return dataclasses.field(default=value, metadata={_SPEC: spec})


def _legacy_field(declared: Param) -> Any:
    """The field a ``PARAMS`` entry becomes: values as submitted, defaults copied."""
    spec = _Spec(declared.type, declared.required, declared.default, declared.doc, declared.fill)
    if declared.required:
        return dataclasses.field(metadata={_SPEC: spec})
    if isinstance(declared.default, list | dict):
        default = declared.default
        return dataclasses.field(default_factory=lambda: fresh(default), metadata={_SPEC: spec})
    return dataclasses.field(default=declared.default, metadata={_SPEC: spec})


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(param,))
@dataclasses.dataclass(frozen=True, kw_only=True)
class OpCode:
    """Base of all opcodes: the common parameters every opcode has.

    Subclasses set ``OP_ID`` and optionally ``SUMMARY_FIELD`` (a parameter
    shown in listings as ``NAME(value)``), and declare their parameters as
    ``param()`` fields (or, older style, in ``PARAMS``). ``check`` holds the
    checks that need more than one parameter's type.
    """

    OP_ID: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    SUMMARY_FIELD: ClassVar[str | None] = None
    #: Whether field values are frozen (typed style) or kept as submitted (``PARAMS``).
    FROZEN: ClassVar[bool] = True
    _declared: ClassVar[tuple[str, ...]] = ()
    _all_params: ClassVar[tuple[Param, ...] | None] = None
    _params_by_name: ClassVar[dict[str, Param] | None] = None
    _factories_cache: ClassVar[list[tuple[str, Callable[[], Any]]] | None] = None

    priority: int | None = param(
        INT, default=None, fill=False, doc="Priority: -10 high, 0 normal, 10 low"
    )
    depends: tuple[Dependency, ...] | None = param(
        optional(DEPENDENCIES), default=None, fill=False, doc="Jobs this opcode waits for"
    )
    comment: str | None = param(optional(STRING), default=None, fill=False, doc="Free-form comment")
    debug_level: int | None = param(
        optional(NON_NEGATIVE_INT), default=None, fill=False, doc="Debug verbosity"
    )
    dry_run: bool | None = param(
        optional(BOOL), default=None, fill=False, doc="Check only, do not run"
    )
    reason: tuple[ReasonEntry, ...] = param(
        REASON_TRAIL,
        default=(),
        fill=False,
        doc="Reason trail: [source, reason, timestamp_ns] entries, oldest first",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        written = list(inspect.get_annotations(cls))
        declared = cls.__dict__.get("PARAMS")
        if declared:
            annotations = inspect.get_annotations(cls)
            for entry in declared:
                annotations[entry.name] = "Any"
                setattr(cls, entry.name, _legacy_field(entry))
            cls.__annotations__ = annotations
            cls.FROZEN = False
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        fields = {field.name for field in dataclasses.fields(cls)}
        legacy = [entry.name for entry in declared or ()]
        cls._declared = (*legacy, *(name for name in written if name in fields))

    # -- parameters ------------------------------------------------------------
    @classmethod
    def all_params(cls) -> tuple[Param, ...]:
        """Every parameter, the common ones first, in declaration order.

        Raises ``TypeError`` for a field not made with ``param()``.
        """
        cached: tuple[Param, ...] | None = cls.__dict__.get("_all_params")
        if cached is None:
            cached = tuple(_param_of(field) for field in dataclasses.fields(cls))
            cls._all_params = cached
        return cached

    @classmethod
    def params_by_name(cls) -> dict[str, Param]:
        """``all_params`` by name (the same dict each time: do not change it)."""
        cached: dict[str, Param] | None = cls.__dict__.get("_params_by_name")
        if cached is None:
            cached = {spec.name: spec for spec in cls.all_params()}
            cls._params_by_name = cached
        return cached

    @classmethod
    def declared_names(cls) -> list[str]:
        """The names each class of the hierarchy declares itself, duplicates kept."""
        return [
            name
            for klass in reversed(cls.__mro__)
            if issubclass(klass, OpCode)
            for name in klass.__dict__.get("_declared", ())
        ]

    @classmethod
    def from_checked(cls, values: dict[str, Any], stored: dict[str, Any]) -> Self:
        """A record of values the registry checked and froze, with its JSON form.

        Parameters left out take their defaults: a plain default is the
        class attribute dataclasses leave, so the instance holds only what was
        given (a queued opcode's record is kept as long as its job lives). The
        dataclass ``__init__`` is skipped (it would set every field, one by
        one); ``__post_init__``, if an opcode defines one, still runs.
        """
        record = object.__new__(cls)
        fields = record.__dict__
        for name, factory in cls._factories():
            if name not in values:
                fields[name] = factory()
        fields.update(values)
        fields["_json"] = stored
        post_init = getattr(record, "__post_init__", None)
        if post_init is not None:
            post_init()
        return record

    @classmethod
    def _factories(cls) -> list[tuple[str, Callable[[], Any]]]:
        """The fields whose default is made by a factory, with it (cached)."""
        cached = cls.__dict__.get("_factories_cache")
        if cached is None:
            cached = cls._factories_cache = [
                (field.name, field.default_factory)
                for field in dataclasses.fields(cls)
                if field.default_factory is not dataclasses.MISSING
            ]
        return cached

    def check(self) -> None:
        """Checks that need more than one parameter's type; raise ``OpPrereqError``.

        Run at submission and when a stored job is loaded. Overrides call
        ``super().check()``.
        """
        if self.priority is not None and self.priority not in constants.PRIO_SUBMIT_VALID:
            raise OpPrereqError(
                f"Opcode {self.OP_ID} has invalid priority {self.priority}, allowed are "
                f"{sorted(constants.PRIO_SUBMIT_VALID)}",
                ECODE_INVAL,
            )

    # -- JSON form ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The opcode as stored and sent: JSON values, ``OP_ID`` first.

        For a record the registry made, the dict it was validated into
        (defaults filled); for one built in Python, derived from its fields.
        Returns a new copy each time (lists and objects at every level), so
        the record never changes through it.
        """
        copy: dict[str, Any] = json_copy(self.stored())
        return copy

    def stored(self) -> dict[str, Any]:
        """The JSON form itself, not a copy: for the job that stores it. Never change it."""
        stored: dict[str, Any] | None = self.__dict__.get("_json")
        if stored is None:
            stored = self._derive_json()
            object.__setattr__(self, "_json", stored)
        return stored

    def _derive_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"OP_ID": self.OP_ID}
        for spec in self.all_params():
            value = getattr(self, spec.name)
            json_value = thaw(value)
            if spec.fill or spec.required or json_value != spec.default:
                result[spec.name] = json_value
        return result

    def replaced(self, **json_values: Any) -> Self:
        """A copy with some parameters set to trusted JSON values (frozen here, not checked).

        In the JSON form a parameter given before keeps its place; a new one goes last.
        """
        return self.replaced_sharing(json_values, {})

    def replaced_sharing(self, json_values: dict[str, Any], frozen: dict[str, Any]) -> Self:
        """``replaced``, where ``frozen`` gives the record's form of some of the
        values (``type.freeze`` of the JSON one, or the JSON one itself where
        ``FROZEN`` is false), made once and shared by many records."""
        params = self.params_by_name()
        values = dict(frozen)
        for name, value in json_values.items():
            if name not in frozen:
                values[name] = params[name].type.freeze(value) if self.FROZEN else value
        return self.with_form({**self.stored(), **json_values}, values)

    def with_form(self, stored: dict[str, Any], values: dict[str, Any]) -> Self:
        """A copy whose JSON form is ``stored`` and whose ``values`` (record forms)
        replace its own; the caller makes the two agree (``replaced_sharing``, or
        its own form read back from a job, keys in the file's order)."""
        copy = object.__new__(type(self))
        object.__setattr__(copy, "__dict__", {**self.__dict__, **values, "_json": stored})
        return copy

    @classmethod
    def summary(cls, values: dict[str, Any]) -> str:
        """Short text for listings from a stored opcode, e.g. ``TEST_DELAY(0.5)``."""
        name = cls.OP_ID.removeprefix("OP_")
        if cls.SUMMARY_FIELD is None or values.get(cls.SUMMARY_FIELD) is None:
            return name
        value = values[cls.SUMMARY_FIELD]
        if isinstance(value, list):
            value = value[0] if value else ""
        text = "..." if too_deep(value, MAX_NESTING) else str(value)
        return f"{name}({text if len(text) <= 40 else text[:37] + '...'})"


def _param_of(field: dataclasses.Field[Any]) -> Param:
    spec: _Spec | None = field.metadata.get(_SPEC)
    if spec is None:
        raise TypeError(f"field {field.name!r} is not an opcode parameter (use param())")
    return Param(field.name, spec.type, spec.required, spec.default, spec.doc, spec.fill)


OpCode._declared = tuple(field.name for field in dataclasses.fields(OpCode))


@dataclasses.dataclass(frozen=True)
class InvalidOpCode:
    """A stored opcode that no longer validates: unknown ``OP_ID`` or refused parameters.

    A job holding one still loads and can be queried; running it raises ``error``.
    """

    op_id: str
    error: GenericError


def json_copy(value: Any) -> Any:
    """A copy of a JSON value: new lists and dicts at every level, other values shared."""
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    return value


def fresh(value: Any) -> Any:
    """A copy of a mutable JSON default, so no two opcodes share one list."""
    if isinstance(value, list | dict):
        return type(value)(value)
    return value
