"""The opcode registry fixture and sample opcodes for the opcode tests
(``test_opcodes``, ``test_opcodes_registry``, ``test_opcodes_records``): the
built-in opcode ids, a ``registry`` of them, ``rejected`` for inputs validation
must refuse, the ``delay`` opcode builder and ``LUPluginThing``, a logical unit
for the opcodes the tests register.
"""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.errors import ECODE_INVAL, OpPrereqError
from jobqueue.lus import builtin_registry
from jobqueue.lus.base import LogicalUnit
from jobqueue.opcodes import Registry

BUILTIN_IDS = [
    "OP_COMMAND_FANOUT",
    "OP_COMMAND_RUN",
    "OP_TEST_DELAY",
    "OP_TEST_DUMMY",
    "OP_TEST_JQUEUE",
]


@pytest.fixture
def registry() -> Registry:
    return builtin_registry()


def rejected(registry: Registry, data: Any) -> OpPrereqError:
    """Validate ``data``, expecting an input error; return it for further checks."""
    with pytest.raises(OpPrereqError) as info:
        registry.validate(data)
    assert info.value.args[1] == ECODE_INVAL
    return info.value


def delay(**params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DELAY", "duration": 1, **params}


class LUPluginThing(LogicalUnit):
    def exec(self) -> Any:
        return self.op.size
