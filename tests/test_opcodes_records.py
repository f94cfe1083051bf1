"""Typed opcode records: frozen typed fields, their JSON form, replaced and load,
__post_init__ of registry-made records, and opcode summaries."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from jobqueue.constants import Status
from jobqueue.errors import OpCodeUnknown, OpPrereqError
from jobqueue.lus.command import OpCommandRun
from jobqueue.lus.test import OpTestDelay
from jobqueue.opcodes import (
    INT,
    NON_EMPTY_STRING,
    Dependency,
    InvalidOpCode,
    OpCode,
    Param,
    ReasonEntry,
    Registry,
    list_of,
    param,
)
from tests.opcode_samples import LUPluginThing, delay
from tests.opcode_samples import registry as registry  # the fixture


class TestTypedRecords:
    def test_fields_hold_frozen_typed_values(self, registry: Registry) -> None:
        op = registry.typed(
            {"OP_ID": "OP_COMMAND_RUN", "argv": ["ls", "-l"], "env": {"A": "1"}, "locks": ["x"]}
        )
        assert isinstance(op, OpCommandRun)
        assert op.argv == ("ls", "-l") and op.locks == ("x",) and op.shared_locks == ()
        assert dict(op.env) == {"A": "1"}
        with pytest.raises(TypeError):
            op.env["B"] = "2"  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            op.argv = ("rm",)  # type: ignore[misc]
        assert op.to_dict() == registry.validate(op.to_dict())

    def test_to_dict_is_a_deep_copy(self, registry: Registry) -> None:
        op = registry.typed({"OP_ID": "OP_TEST_DUMMY", "result": {"a": [1]}})
        op.to_dict()["result"]["a"].append(2)
        assert op.to_dict()["result"] == {"a": [1]}

    def test_common_parameters_are_typed(self, registry: Registry) -> None:
        op = registry.typed(
            delay(
                depends=[["12", ["success"]], [-1, []]],
                reason=[["gnt:client:gnt-debug", "why", 1_700_000_000_000_000_000]],
                priority=-10,
                comment="c",
                debug_level=0,
                dry_run=False,
            )
        )
        assert op.depends == (Dependency(12, (Status.SUCCESS,)), Dependency(-1, ()))
        assert op.reason == (ReasonEntry("gnt:client:gnt-debug", "why", 1_700_000_000_000_000_000),)
        assert (op.priority, op.comment, op.debug_level, op.dry_run) == (-10, "c", 0, False)
        assert op.to_dict()["depends"] == [["12", ["success"]], [-1, []]], "stored as given"

    def test_records_built_in_python_derive_their_json(self, registry: Registry) -> None:
        assert OpTestDelay(duration=1.5) == registry.typed(delay(duration=1.5))
        assert OpTestDelay(duration=1.5).to_dict() == registry.validate(delay(duration=1.5))
        op = OpTestDelay(duration=1, on_nodes=("n",), reason=(ReasonEntry("s", "r", 3),))
        assert op.to_dict() == registry.validate(delay(on_nodes=["n"], reason=[["s", "r", 3]]))

    def test_replaced_freezes_and_keeps_places_in_the_json(self, registry: Registry) -> None:
        op = registry.typed(delay(comment="x", depends=[[2, []]]))
        changed = op.replaced(reason=[["s", "r", 1]], depends=[[3, ["error"]]])
        assert changed.reason == (ReasonEntry("s", "r", 1),)
        assert changed.depends == (Dependency(3, (Status.ERROR,)),)
        assert changed.duration == op.duration and isinstance(changed, OpTestDelay)
        assert list(changed.to_dict()) == [
            "OP_ID", "depends", "comment", "duration", "repeat", "on_master", "on_nodes", "reason"
        ]  # fmt: skip
        assert changed.to_dict()["depends"] == [[3, ["error"]]]
        assert op.reason == () and "reason" not in op.to_dict()
        assert op.to_dict()["depends"] == [[2, []]]

    def test_records_hold_only_what_was_given(self, registry: Registry) -> None:
        """Defaults are the class's, not copied into each record: a waiting
        job keeps one record per opcode."""
        op = registry.typed(delay(duration=2, on_nodes=["a"]))
        assert set(vars(op)) == {"duration", "on_nodes", "_json"}
        assert (op.repeat, op.on_master, op.comment, op.reason) == (0, True, None, ())
        assert op == OpTestDelay(duration=2, on_nodes=("a",))
        changed = op.replaced(comment="c")
        assert set(vars(changed)) == {"duration", "on_nodes", "comment", "_json"}
        assert changed.comment == "c" and op.comment is None

    def test_load_never_raises(self, registry: Registry) -> None:
        gone = registry.load({"OP_ID": "OP_GONE", "x": 1})
        assert isinstance(gone, InvalidOpCode) and isinstance(gone.error, OpCodeUnknown)
        assert gone.op_id == "OP_GONE" and str(gone.error) == "Unknown opcode 'OP_GONE'"
        broken = registry.load(delay(repeat="many"))
        assert isinstance(broken, InvalidOpCode) and isinstance(broken.error, OpPrereqError)
        assert "OP_TEST_DELAY.repeat" in str(broken.error)
        assert registry.load(delay()) == registry.typed(delay())

    def test_plugin_records_keep_submitted_values(self, registry: Registry) -> None:
        class OpListy(OpCode):
            OP_ID = "OP_LISTY"
            PARAMS = (
                Param("names", list_of(NON_EMPTY_STRING), default=[]),
                Param("size", INT, required=True),
            )

        registry.register(OpListy, LUPluginThing)
        first = registry.typed({"OP_ID": "OP_LISTY", "size": 1})
        second = registry.typed({"OP_ID": "OP_LISTY", "size": 2, "names": ["a"]})
        assert isinstance(first, OpListy) and not OpListy.FROZEN
        assert first.names == [] and second.names == ["a"]  # lists, as such LUs expect
        first.names.append("x")  # type: ignore[attr-defined]
        assert registry.typed({"OP_ID": "OP_LISTY", "size": 1}).names == []
        with pytest.raises(dataclasses.FrozenInstanceError):
            first.size = 3  # type: ignore[attr-defined]
        assert [p.name for p in OpListy.all_params()][-2:] == ["names", "size"]


class TestPostInit:
    def test_post_init_runs_for_registry_made_records(self, registry: Registry) -> None:
        class OpDerived(OpCode):
            OP_ID = "OP_DERIVED"
            size: int = param(INT)

            def __post_init__(self) -> None:
                object.__setattr__(self, "double", self.size * 2)

        registry.register(OpDerived, LUPluginThing)
        assert registry.typed({"OP_ID": "OP_DERIVED", "size": 4}).double == 8  # type: ignore[attr-defined]
        assert OpDerived(size=5).double == 10  # type: ignore[attr-defined]


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
