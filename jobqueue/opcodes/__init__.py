"""Opcode definitions: typed, immutable records, their validation, the registry.

An opcode class declares its ``OP_ID`` and its parameters as typed fields
(``record``); every opcode also has the common parameters ``priority``,
``depends``, ``comment``, ``debug_level``, ``dry_run`` and ``reason``.
Parameter types (``types``) say what a submitted value must be and what
the record holds. ``Registry.typed`` (``registry``) checks a submitted opcode
dict completely before the job is stored and returns its record, which
keeps the dict with defaults filled in: the job file's opcode ``input``.
"""

from __future__ import annotations

from jobqueue.opcodes.record import (
    REASON_SOURCE_DAEMON,
    REASON_SOURCE_OPCODE,
    InvalidOpCode,
    OpCode,
    Param,
    param,
    thaw,
)
from jobqueue.opcodes.registry import Registry
from jobqueue.opcodes.types import (
    ANY,
    BOOL,
    DEPENDENCIES,
    INT,
    JOBS,
    MAX_NESTING,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    OPCODE_OBJECT,
    OPCODES,
    REASON_TRAIL,
    SECONDS,
    STRING,
    STRING_DICT,
    Check,
    Dependency,
    OpcodeList,
    ReasonEntry,
    Type,
    int_range,
    list_of,
    optional,
)

__all__ = [
    "ANY",
    "BOOL",
    "DEPENDENCIES",
    "INT",
    "JOBS",
    "MAX_NESTING",
    "NON_EMPTY_STRING",
    "NON_NEGATIVE_INT",
    "NON_NEGATIVE_NUMBER",
    "OPCODES",
    "OPCODE_OBJECT",
    "REASON_SOURCE_DAEMON",
    "REASON_SOURCE_OPCODE",
    "REASON_TRAIL",
    "SECONDS",
    "STRING",
    "STRING_DICT",
    "Check",
    "Dependency",
    "InvalidOpCode",
    "OpCode",
    "OpcodeList",
    "Param",
    "ReasonEntry",
    "Registry",
    "Type",
    "int_range",
    "list_of",
    "optional",
    "param",
    "thaw",
]
