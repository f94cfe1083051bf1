"""Opcode definitions: submit-time validation.

Types, defaults and the common parameters, Ganeti's own parameters, the bound
on nesting, opcodes nested in other opcodes, and each opcode's own checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from jobqueue.errors import OpCodeUnknown, OpPrereqError
from jobqueue.lus.command import OpCommandFanout
from jobqueue.lus.test import MAX_DELAY_REPEAT, OpTestDelay, OpTestDummy
from jobqueue.opcodes import MAX_NESTING, OpCode, Param, ReasonEntry, Registry, Type
from tests.opcode_samples import BUILTIN_IDS, LUPluginThing, delay, rejected
from tests.opcode_samples import registry as registry  # the fixture


def nested(levels: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``levels`` lists."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def fanout(**params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["echo", "{item}"], "items": ["a"], **params}


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
            (delay(depends=[[1, [["success"]]]]), "OP_TEST_DELAY.depends"),
            (delay(depends=[[1, [{"a": 1}]]]), "OP_TEST_DELAY.depends"),
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
            "user": None,
            "stdin": None,
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


GANETI_DELAY = {
    # as Ganeti's gnt-debug delay sends it (Python 3 client, every parameter set)
    "OP_ID": "OP_TEST_DELAY",
    "duration": 2.5,
    "on_master": True,
    "on_nodes": [],
    "on_node_uuids": None,
    "repeat": 0,
    "interruptible": False,
    "no_locks": True,
    "dry_run": False,
    "debug_level": 0,
    "priority": 0,
    "depends": None,
    "comment": None,
    "reason": [["gnt:client:gnt-debug", "delay", 1_700_000_000_000_000_000]],
}


class TestGanetiParameters:
    def test_gnt_debug_delay_is_accepted_as_sent(self, registry: Registry) -> None:
        assert registry.validate(GANETI_DELAY) == GANETI_DELAY
        op = registry.typed(GANETI_DELAY)
        assert isinstance(op, OpTestDelay)
        assert (op.on_node_uuids, op.interruptible, op.no_locks) == (None, False, True)

    def test_ganeti_only_parameters_are_not_filled_in(self, registry: Registry) -> None:
        stored = registry.validate(delay())
        assert not {"on_node_uuids", "interruptible", "no_locks", "reason"} & set(stored)
        op = registry.typed(delay(on_node_uuids=["uuid-1"], interruptible=True, no_locks=False))
        assert (op.on_node_uuids, op.interruptible, op.no_locks) == (("uuid-1",), True, False)

    @pytest.mark.parametrize(
        ("data", "name"),
        [
            (delay(reason="gnt-debug"), "OP_TEST_DELAY.reason"),
            (delay(reason=[["src", "why"]]), "OP_TEST_DELAY.reason"),
            (delay(reason=[["src", "why", "now"]]), "OP_TEST_DELAY.reason"),
            (delay(reason=[["src", "why", True]]), "OP_TEST_DELAY.reason"),
            (delay(reason=[["src", 5, 1]]), "OP_TEST_DELAY.reason"),
            (delay(reason=None), "OP_TEST_DELAY.reason"),
            (delay(on_node_uuids="uuid"), "OP_TEST_DELAY.on_node_uuids"),
            (delay(on_node_uuids=[""]), "OP_TEST_DELAY.on_node_uuids"),
            (delay(interruptible=1), "OP_TEST_DELAY.interruptible"),
            (delay(no_locks=None), "OP_TEST_DELAY.no_locks"),
        ],
    )
    def test_wrong_types_are_refused(
        self, registry: Registry, data: dict[str, Any], name: str
    ) -> None:
        assert name in str(rejected(registry, data))

    def test_reason_is_accepted_on_every_opcode(self, registry: Registry) -> None:
        trail = [["gnt:client:x", "y", 1], ["gnt:opcode:OP_Z", "", 2]]
        for op_id in BUILTIN_IDS:
            assert registry.typed({**SMALLEST[op_id], "reason": trail}).reason == (
                ReasonEntry("gnt:client:x", "y", 1),
                ReasonEntry("gnt:opcode:OP_Z", "", 2),
            )

    def test_describe_shows_the_new_parameters(self, registry: Registry) -> None:
        described = {entry["OP_ID"]: entry for entry in registry.describe()}
        params = {p["name"]: p for p in described["OP_TEST_DELAY"]["params"]}
        assert params["reason"]["default"] == [] and params["on_nodes"]["default"] == []
        assert params["no_locks"]["default"] is True
        assert "1000" in params["repeat"]["type"]
        json.dumps(registry.describe())  # every default is plain JSON


SMALLEST = {
    "OP_COMMAND_FANOUT": fanout(),
    "OP_COMMAND_RUN": {"OP_ID": "OP_COMMAND_RUN", "argv": ["true"]},
    "OP_TEST_DELAY": delay(),
    "OP_TEST_DUMMY": {"OP_ID": "OP_TEST_DUMMY"},
    "OP_TEST_JQUEUE": {"OP_ID": "OP_TEST_JQUEUE"},
}


class TestNesting:
    def test_the_bound_counts_the_opcode_itself(self, registry: Registry) -> None:
        at_limit = {"OP_ID": "OP_TEST_DUMMY", "result": nested(MAX_NESTING - 1)}
        assert registry.typed(at_limit).result == nested(MAX_NESTING - 1)
        err = rejected(registry, {"OP_ID": "OP_TEST_DUMMY", "result": nested(MAX_NESTING)})
        assert str(err) == "Parameter 'OP_TEST_DUMMY.result' is nested deeper than 64 levels"

    @pytest.mark.parametrize(
        "data",
        [
            {"OP_ID": "OP_TEST_DUMMY", "result": nested(200_000)},
            {"OP_ID": "OP_TEST_DUMMY", "result": {"a": nested(200_000, {})}},
            fanout(then=[{"OP_ID": "OP_TEST_DUMMY", "result": nested(200_000)}]),
            {"OP_ID": "OP_TEST_DUMMY", "submit_jobs": [[{"OP_ID": "OP_TEST_DUMMY", "x": 1}]] * 2}
            | {"messages": nested(200_000, "m")},
            delay(duration=nested(200_000)),
            nested(200_000),
            {"OP_ID": nested(200_000)},
        ],
    )
    def test_any_depth_is_refused_without_recursion(
        self, registry: Registry, data: dict[str, Any]
    ) -> None:
        with pytest.raises((OpPrereqError, OpCodeUnknown)) as info:
            registry.typed(data)
        assert len(str(info.value)) < 200

    def test_a_plugin_check_never_sees_a_value_too_deep(self) -> None:
        def recursive(value: Any) -> bool:
            return not isinstance(value, list) or all(recursive(item) for item in value)

        class OpTree(OpCode):
            OP_ID = "OP_TREE"
            PARAMS = (Param("tree", Type(recursive, "nested lists")),)

        registry = Registry()
        registry.register(OpTree, LUPluginThing)
        assert registry.typed({"OP_ID": "OP_TREE", "tree": nested(10)}).tree == nested(10)
        err = rejected(registry, {"OP_ID": "OP_TREE", "tree": nested(200_000)})
        assert "'OP_TREE.tree' is nested deeper than 64 levels" in str(err)

    def test_nested_opcodes_count_from_the_outer_one(self, registry: Registry) -> None:
        # fanout(1) -> then list(2) -> opcode(3) -> result: 61 more levels are allowed
        ok = fanout(then=[{"OP_ID": "OP_TEST_DUMMY", "result": nested(MAX_NESTING - 3)}])
        registry.typed(ok)
        deep = fanout(then=[{"OP_ID": "OP_TEST_DUMMY", "result": nested(MAX_NESTING - 2)}])
        assert "'OP_COMMAND_FANOUT.then' is nested deeper" in str(rejected(registry, deep))

    def test_summaries_of_deep_stored_values(self, registry: Registry) -> None:
        assert OpTestDelay.summary({"duration": nested(200_000)}) == "TEST_DELAY(...)"
        assert registry.summarize({"OP_ID": "OP_TEST_DELAY", "duration": [nested(3)]}) == (
            "TEST_DELAY([[[0]]])"
        )


class TestNestedOpcodes:
    @pytest.mark.parametrize(
        ("then", "where", "detail"),
        [
            ([{"OP_ID": "OP_NOPE"}], "then[0]", "Unknown opcode 'OP_NOPE'"),
            (
                [{"OP_ID": "OP_TEST_DUMMY"}, {"OP_ID": "OP_TEST_DELAY"}],
                "then[1]",
                "Required parameter 'OP_TEST_DELAY.duration' is missing",
            ),
            ([{"OP_ID": "OP_TEST_DUMMY", "fail": "yes"}], "then[0]", "'OP_TEST_DUMMY.fail'"),
            ([{"OP_ID": "OP_TEST_DUMMY", "bogus": 1}], "then[0]", "'OP_TEST_DUMMY.bogus'"),
            ([{"OP_ID": "OP_TEST_DUMMY", "priority": 5}], "then[0]", "invalid priority 5"),
            ([fanout(locks=["{item}"], items=[""])], "then[0]", "OP_COMMAND_FANOUT.locks"),
            (["OP_TEST_DUMMY"], "then", "must be a list, each item an opcode object"),
        ],
    )
    def test_then_opcodes_are_validated_as_opcodes(
        self, registry: Registry, then: list[Any], where: str, detail: str
    ) -> None:
        err = rejected(registry, fanout(then=then))
        assert f"'OP_COMMAND_FANOUT.{where}'" in str(err) and detail in str(err)

    @pytest.mark.parametrize(
        ("jobs", "where", "detail"),
        [
            ([[{"OP_ID": "OP_TEST_DUMMY"}], [{"OP_ID": "OP_X"}]], "[1][0]", "'OP_X'"),
            ([[{"OP_ID": "OP_TEST_DUMMY"}, {"OP_ID": "OP_TEST_DELAY"}]], "[0][1]", "duration"),
            ([[{"OP_ID": "OP_TEST_DUMMY"}], []], "", "each a non-empty list of opcode objects"),
            ([{"OP_ID": "OP_TEST_DUMMY"}], "", "must be a list of jobs"),
        ],
    )
    def test_submit_jobs_are_validated_as_jobs(
        self, registry: Registry, jobs: list[Any], where: str, detail: str
    ) -> None:
        err = rejected(registry, {"OP_ID": "OP_TEST_DUMMY", "submit_jobs": jobs})
        assert f"'OP_TEST_DUMMY.submit_jobs{where}'" in str(err) and detail in str(err)

    def test_nested_opcodes_are_records_stored_as_given(self, registry: Registry) -> None:
        given = {"comment": "last", "OP_ID": "OP_TEST_DUMMY"}
        op = registry.typed(fanout(then=[given]))
        assert isinstance(op, OpCommandFanout)
        (then,) = op.then
        assert isinstance(then, OpTestDummy) and then.comment == "last" and then.fail is False
        assert op.to_dict()["then"] == [given] and list(then.to_dict()) == ["comment", "OP_ID"]
        jobs = registry.typed({"OP_ID": "OP_TEST_DUMMY", "submit_jobs": [[given], [given]]})
        assert isinstance(jobs, OpTestDummy)
        assert [[op.comment for op in job] for job in jobs.submit_jobs] == [["last"], ["last"]]


class TestSubmissionChecks:
    def test_repeat_is_capped(self, registry: Registry) -> None:
        assert registry.typed(delay(repeat=MAX_DELAY_REPEAT)).repeat == MAX_DELAY_REPEAT
        err = rejected(registry, delay(repeat=MAX_DELAY_REPEAT + 1))
        assert "'OP_TEST_DELAY.repeat' must be an integer from 0 to 1000" in str(err)

    @pytest.mark.parametrize("name", ["locks", "shared_locks"])
    def test_the_cluster_lock_may_not_be_named(self, registry: Registry, name: str) -> None:
        run = {"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], name: ["a", "cluster"]}
        assert f"'OP_COMMAND_RUN.{name}'" in str(rejected(registry, run))

    @pytest.mark.parametrize(
        ("params", "named", "lock"),
        [
            ({"locks": ["{item}"], "items": ["a", ""]}, "locks", "''"),
            ({"shared_locks": ["{item}"], "items": ["cluster"]}, "shared_locks", "'cluster'"),
            ({"locks": ["x", "clu{item}"], "items": ["b", "ster"]}, "locks", "'cluster'"),
        ],
    )
    def test_fanout_lock_templates_are_checked_per_item(
        self, registry: Registry, params: dict[str, Any], named: str, lock: str
    ) -> None:
        err = rejected(registry, fanout(**params))
        assert f"'OP_COMMAND_FANOUT.{named}'" in str(err) and f"lock name {lock}" in str(err)
        assert registry.typed(fanout(locks=["host:{item}"], items=["a", "b"])).locks == (
            "host:{item}",
        )

    def test_fanout_item_limit(self, registry: Registry) -> None:
        limit = OpCommandFanout.FANOUT_LIMIT
        assert len(registry.typed(fanout(items=["x"] * limit)).items) == limit
        err = rejected(registry, fanout(items=["x"] * (limit + 1)))
        assert str(err) == f"OP_COMMAND_FANOUT.items: at most {limit} items"

    @pytest.mark.parametrize("priority", [-20, -11, 1, 19])
    def test_priority_outside_the_submit_set(self, registry: Registry, priority: int) -> None:
        err = rejected(registry, delay(priority=priority))
        assert str(err) == (
            f"Opcode OP_TEST_DELAY has invalid priority {priority}, allowed are [-10, 0, 10]"
        )
