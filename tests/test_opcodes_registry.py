"""Opcode registry: registering opcodes with their logical units, lookup and
description, and loading opcodes from plugin modules."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from jobqueue.errors import GenericError, OpCodeUnknown, ProgrammerError
from jobqueue.lus import builtin_registry, load_plugins
from jobqueue.lus.base import LogicalUnit
from jobqueue.lus.test import LUTestDelay, OpTestDelay
from jobqueue.opcodes import INT, NON_EMPTY_STRING, OpCode, Param, Registry, param
from tests.opcode_samples import BUILTIN_IDS, LUPluginThing, rejected
from tests.opcode_samples import registry as registry  # the fixture


class OpPluginThing(OpCode):
    OP_ID = "OP_PLUGIN_THING"
    PARAMS = (Param("size", INT, required=True),)


class TestRegistry:
    def test_duplicate_registration(self, registry: Registry) -> None:
        with pytest.raises(ProgrammerError, match="OP_TEST_DELAY"):
            registry.register(OpTestDelay, LUTestDelay)
        assert registry.lookup("OP_TEST_DELAY") == (OpTestDelay, LUTestDelay)

    def test_op_id_needs_prefix(self) -> None:
        class Bad(OpCode):
            OP_ID = "THING"

        with pytest.raises(ProgrammerError):
            Registry().register(Bad, LUPluginThing)

    def test_parameter_may_not_shadow_a_base_parameter(self) -> None:
        class Shadow(OpCode):
            OP_ID = "OP_SHADOW"
            PARAMS = (Param("priority", INT),)

        registry = Registry()
        with pytest.raises(ProgrammerError):
            registry.register(Shadow, LUPluginThing)
        assert registry.op_ids() == []

    def test_lookup_unknown(self, registry: Registry) -> None:
        with pytest.raises(OpCodeUnknown):
            registry.lookup("OP_PLUGIN_THING")

    def test_describe_lists_every_parameter(self, registry: Registry) -> None:
        described = {entry["OP_ID"]: entry for entry in registry.describe()}
        assert sorted(described) == BUILTIN_IDS
        names = [param["name"] for param in described["OP_TEST_DELAY"]["params"]]
        assert names[:5] == ["priority", "depends", "comment", "debug_level", "dry_run"]
        assert {"duration", "repeat", "on_master", "on_nodes"} <= set(names)
        duration = next(p for p in described["OP_TEST_DELAY"]["params"] if p["name"] == "duration")
        assert duration["required"] is True


class TestRegistration:
    def test_typed_field_may_not_shadow_a_common_parameter(self) -> None:
        class Shadow(OpCode):
            OP_ID = "OP_SHADOW"
            comment: str | None = param(NON_EMPTY_STRING, default=None)

        with pytest.raises(ProgrammerError, match="duplicate"):
            Registry().register(Shadow, LUPluginThing)

    def test_duplicate_names_in_params(self) -> None:
        class Twice(OpCode):
            OP_ID = "OP_TWICE"
            PARAMS = (Param("x", INT), Param("x", INT))

        with pytest.raises(ProgrammerError, match="duplicate"):
            Registry().register(Twice, LUPluginThing)

    def test_every_field_must_be_a_parameter(self) -> None:
        class Plain(OpCode):
            OP_ID = "OP_PLAIN"
            size: int = 3

        with pytest.raises(ProgrammerError, match="size"):
            Registry().register(Plain, LUPluginThing)

    def test_an_lu_runs_only_the_opcode_it_names(self) -> None:
        class LUDelayOnly(LogicalUnit[OpTestDelay]):
            def exec(self) -> Any:
                return self.op.duration

        with pytest.raises(ProgrammerError, match="LUDelayOnly runs OpTestDelay"):
            Registry().register(OpPluginThing, LUDelayOnly)
        Registry().register(OpTestDelay, LUDelayOnly)

    def test_not_an_opcode_class(self) -> None:
        with pytest.raises(ProgrammerError):
            Registry().register(dict, LUPluginThing)  # type: ignore[arg-type]


PLUGIN_SOURCE = """
from typing import Any

from jobqueue.lus.base import LogicalUnit
from jobqueue.opcodes import INT, OpCode, Param


class OpSquare(OpCode):
    OP_ID = "OP_{suffix}_SQUARE"
    PARAMS = (Param("value", INT, required=True),)


class LUSquare(LogicalUnit):
    def exec(self) -> Any:
        return self.op.value ** 2


{export}
"""


class TestPlugins:
    def write_plugin(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str
    ) -> str:
        """Create module ``name`` in tmp_path, importable for this test only."""
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    def test_module_with_pairs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        source = PLUGIN_SOURCE.format(suffix="PAIRS", export="PAIRS = [(OpSquare, LUSquare)]")
        name = self.write_plugin(tmp_path, monkeypatch, "jq_plugin_pairs", source)
        registry = builtin_registry()
        added = load_plugins(registry, modules=[name])
        assert added == ["OP_PAIRS_SQUARE"]
        assert registry.op_ids() == sorted([*BUILTIN_IDS, "OP_PAIRS_SQUARE"])
        checked = registry.validate({"OP_ID": "OP_PAIRS_SQUARE", "value": 3})
        assert checked == {"OP_ID": "OP_PAIRS_SQUARE", "value": 3}
        assert "OP_PAIRS_SQUARE.value" in str(
            rejected(registry, {"OP_ID": "OP_PAIRS_SQUARE", "value": "3"})
        )

    def test_module_with_opcode_pairs_function(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        export = "def opcode_pairs():\n    return [(OpSquare, LUSquare)]\n"
        source = PLUGIN_SOURCE.format(suffix="FUNC", export=export)
        name = self.write_plugin(tmp_path, monkeypatch, "jq_plugin_func", source)
        registry = Registry()
        assert load_plugins(registry, modules=[name]) == ["OP_FUNC_SQUARE"]
        _, lu_class = registry.lookup("OP_FUNC_SQUARE")
        assert lu_class.__name__ == "LUSquare"

    def test_no_modules_adds_nothing(self) -> None:
        registry = builtin_registry()
        assert load_plugins(registry, modules=[]) == []
        assert registry.op_ids() == BUILTIN_IDS

    @pytest.mark.parametrize(
        ("name", "source"),
        [
            ("jq_plugin_raises", "raise RuntimeError('plugin exploded')\n"),
            ("jq_plugin_empty", "X = 1\n"),
            ("jq_plugin_syntax", "def broken(:\n"),
            (
                "jq_plugin_clash",
                "from jobqueue.lus.test import PAIRS as _P\nPAIRS = [_P[0]]\n",
            ),
            ("jq_plugin_not_pairs", "PAIRS = [1, 2]\n"),
        ],
    )
    def test_broken_plugin(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str
    ) -> None:
        self.write_plugin(tmp_path, monkeypatch, name, source)
        with pytest.raises(GenericError, match=name):
            load_plugins(builtin_registry(), modules=[name])

    def test_missing_module(self) -> None:
        with pytest.raises(GenericError, match="jq_plugin_does_not_exist"):
            load_plugins(builtin_registry(), modules=["jq_plugin_does_not_exist"])
