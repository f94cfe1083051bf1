"""Opcode definitions: submit-time validation, defaults, summaries, the registry, plugins."""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from jobqueue.errors import (
    ECODE_INVAL,
    GenericError,
    OpCodeUnknown,
    OpPrereqError,
    ProgrammerError,
)
from jobqueue.lus import builtin_registry, load_plugins
from jobqueue.lus.base import LogicalUnit
from jobqueue.lus.test import LUTestDelay, OpTestDelay
from jobqueue.opcodes import INT, OpCode, Param, Registry

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


class TestValidate:
    def test_builtin_opcodes_are_registered(self, registry: Registry) -> None:
        assert registry.op_ids() == BUILTIN_IDS

    @pytest.mark.parametrize("op_id", ["OP_NO_SUCH_THING", None, 42, ""])
    def test_unknown_op_id(self, registry: Registry, op_id: Any) -> None:
        with pytest.raises(OpCodeUnknown):
            registry.validate({"OP_ID": op_id})

    def test_missing_op_id_is_unknown(self, registry: Registry) -> None:
        with pytest.raises(OpCodeUnknown):
            registry.validate({"duration": 1})

    @pytest.mark.parametrize("data", [[], "OP_TEST_DELAY", None, 3])
    def test_non_object_is_rejected(self, registry: Registry, data: Any) -> None:
        rejected(registry, data)

    def test_unknown_parameter(self, registry: Registry) -> None:
        err = rejected(registry, delay(bogus=1))
        assert "OP_TEST_DELAY.bogus" in str(err)
        err = rejected(registry, delay(zeta=1, alpha=2, OP_ID="OP_TEST_DELAY"))
        assert "OP_TEST_DELAY.alpha" in str(err) and "OP_TEST_DELAY.zeta" in str(err)

    def test_missing_required_parameter(self, registry: Registry) -> None:
        err = rejected(registry, {"OP_ID": "OP_TEST_DELAY"})
        assert "OP_TEST_DELAY.duration" in str(err)
        err = rejected(registry, {"OP_ID": "OP_COMMAND_RUN"})
        assert "OP_COMMAND_RUN.argv" in str(err)

    @pytest.mark.parametrize(
        ("data", "name"),
        [
            (delay(duration="1"), "OP_TEST_DELAY.duration"),
            (delay(duration=-0.5), "OP_TEST_DELAY.duration"),
            (delay(repeat=1.5), "OP_TEST_DELAY.repeat"),
            (delay(repeat=-1), "OP_TEST_DELAY.repeat"),
            (delay(on_master="yes"), "OP_TEST_DELAY.on_master"),
            (delay(on_nodes=[""]), "OP_TEST_DELAY.on_nodes"),
            (delay(on_nodes="node1"), "OP_TEST_DELAY.on_nodes"),
            ({"OP_ID": "OP_COMMAND_RUN", "argv": []}, "OP_COMMAND_RUN.argv"),
            ({"OP_ID": "OP_COMMAND_RUN", "argv": ["ls", 1]}, "OP_COMMAND_RUN.argv"),
            ({"OP_ID": "OP_COMMAND_RUN", "argv": ["ls"], "env": {"A": 1}}, "OP_COMMAND_RUN.env"),
            ({"OP_ID": "OP_COMMAND_RUN", "argv": ["ls"], "cwd": ""}, "OP_COMMAND_RUN.cwd"),
            (delay(comment=5), "OP_TEST_DELAY.comment"),
            (delay(debug_level=-1), "OP_TEST_DELAY.debug_level"),
            (delay(dry_run="no"), "OP_TEST_DELAY.dry_run"),
            (delay(priority="high"), "OP_TEST_DELAY.priority"),
            (delay(depends=[[1, ["running"]]]), "OP_TEST_DELAY.depends"),
            (delay(depends=[[1]]), "OP_TEST_DELAY.depends"),
            (delay(depends=[["x1", []]]), "OP_TEST_DELAY.depends"),
            (delay(depends=[1, 2]), "OP_TEST_DELAY.depends"),
        ],
    )
    def test_wrong_type(self, registry: Registry, data: dict[str, Any], name: str) -> None:
        err = rejected(registry, data)
        assert name in str(err)

    @pytest.mark.parametrize(
        ("data", "name"),
        [
            (delay(repeat=True), "OP_TEST_DELAY.repeat"),
            (delay(duration=True), "OP_TEST_DELAY.duration"),
            (delay(priority=False), "OP_TEST_DELAY.priority"),
            (delay(debug_level=True), "OP_TEST_DELAY.debug_level"),
            (delay(depends=[[True, []]]), "OP_TEST_DELAY.depends"),
        ],
    )
    def test_bools_are_not_ints(self, registry: Registry, data: dict[str, Any], name: str) -> None:
        err = rejected(registry, data)
        assert name in str(err)

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_numbers_are_rejected(self, registry: Registry, value: float) -> None:
        assert "OP_TEST_DELAY.duration" in str(rejected(registry, delay(duration=value)))
        run = {"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "timeout": value}
        assert "OP_COMMAND_RUN.timeout" in str(rejected(registry, run))

    def test_defaults_are_filled(self, registry: Registry) -> None:
        checked = registry.validate({"OP_ID": "OP_TEST_DELAY", "duration": 0.5})
        assert checked == {
            "OP_ID": "OP_TEST_DELAY",
            "duration": 0.5,
            "repeat": 0,
            "on_master": True,
            "on_nodes": [],
        }
        run = registry.validate({"OP_ID": "OP_COMMAND_RUN", "argv": ["true"]})
        assert run == {
            "OP_ID": "OP_COMMAND_RUN",
            "argv": ["true"],
            "env": {},
            "cwd": None,
            "timeout": None,
            "locks": [],
            "shared_locks": [],
        }

    def test_mutable_defaults_are_never_shared(self, registry: Registry) -> None:
        first = registry.validate(delay())
        second = registry.validate(delay())
        first["on_nodes"].append("node1")
        assert second["on_nodes"] == []
        assert registry.validate(delay())["on_nodes"] == []
        typed = registry.typed(delay())
        typed.to_dict()["on_nodes"].append("node2")
        assert typed.to_dict()["on_nodes"] == [] and typed.on_nodes == ()
        assert registry.typed(delay()).to_dict()["on_nodes"] == []
        with pytest.raises(dataclasses.FrozenInstanceError):
            typed.on_nodes = ("node3",)  # type: ignore[misc]

    def test_given_values_are_kept(self, registry: Registry) -> None:
        checked = registry.validate(delay(duration=2, repeat=3, on_nodes=["n1", "n2"]))
        assert (checked["duration"], checked["repeat"], checked["on_nodes"]) == (2, 3, ["n1", "n2"])

    def test_base_params_are_accepted(self, registry: Registry) -> None:
        base = {
            "priority": -10,
            "depends": [[1, ["success"]], ["2", []], [-1, ["error", "canceled"]]],
            "comment": "hello",
            "debug_level": 2,
            "dry_run": True,
        }
        for op in (delay(**base), {"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], **base}):
            checked = registry.validate(op)
            assert {name: checked[name] for name in base} == base

    def test_base_params_are_optional_and_not_filled(self, registry: Registry) -> None:
        checked = registry.validate(delay(depends=None, comment=None, dry_run=None))
        assert checked["depends"] is None and checked["comment"] is None
        assert "priority" not in checked and "debug_level" not in checked

    def test_typed_gives_attribute_access_with_defaults(self, registry: Registry) -> None:
        op = registry.typed(delay(duration=0.25))
        assert isinstance(op, OpTestDelay)
        assert (op.duration, op.repeat, op.on_master) == (0.25, 0, True)
        assert op.priority is None and op.dry_run is None and op.depends is None
        with pytest.raises(AttributeError):
            _ = op.no_such_param
        assert op.to_dict()["duration"] == 0.25


class TestSummaries:
    @pytest.mark.parametrize(
        ("data", "summary"),
        [
            ({"OP_ID": "OP_TEST_DELAY", "duration": 0.5}, "TEST_DELAY(0.5)"),
            ({"OP_ID": "OP_TEST_DELAY", "duration": 3}, "TEST_DELAY(3)"),
            (
                {"OP_ID": "OP_COMMAND_RUN", "argv": ["/usr/bin/rsync", "-a", "src", "dst"]},
                "COMMAND_RUN(rsync)",
            ),
            ({"OP_ID": "OP_COMMAND_RUN", "argv": ["ls"]}, "COMMAND_RUN(ls)"),
            (
                {
                    "OP_ID": "OP_COMMAND_FANOUT",
                    "argv": ["/bin/ping", "{item}"],
                    "items": ["a", "b"],
                },
                "COMMAND_FANOUT(ping x2)",
            ),
            ({"OP_ID": "OP_TEST_DUMMY"}, "TEST_DUMMY"),
            ({"OP_ID": "OP_TEST_JQUEUE"}, "TEST_JQUEUE"),
            ({"OP_ID": "OP_NOT_REGISTERED"}, "NOT_REGISTERED"),
        ],
    )
    def test_summary(self, registry: Registry, data: dict[str, Any], summary: str) -> None:
        assert registry.summarize(data) == summary

    def test_long_values_are_shortened(self) -> None:
        summary = OpTestDelay.summary({"duration": "x" * 100})
        assert summary == f"TEST_DELAY({'x' * 37}...)"


class OpPluginThing(OpCode):
    OP_ID = "OP_PLUGIN_THING"
    PARAMS = (Param("size", INT, required=True),)


class LUPluginThing(LogicalUnit):
    def exec(self) -> Any:
        return self.op.size


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
