"""Job filter rules: their form, their order, what they match and decide (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue import filters, qlang
from jobqueue.errors import OpPrereqError
from jobqueue.filters import FilterRule, JobView

UUIDS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(10)]
RUN = {"OP_ID": "OP_COMMAND_RUN", "argv": ["make"], "reason": [["gnt:client:jobctl", "x", 5]]}
DELAY = {"OP_ID": "OP_TEST_DELAY", "duration": 1, "reason": [["cron", "nightly", 7]]}


def rule(
    action: Any = "PAUSE",
    predicates: list[Any] | None = None,
    *,
    uuid: str = UUIDS[0],
    priority: int = 0,
    watermark: int = 10,
) -> filters.CompiledRule:
    made = filters.make_rule(uuid, priority, predicates or [], action, [], watermark=watermark)
    return filters.compile_rule(made, qlang.compile_filter)


def job(job_id: int, *ops: dict[str, Any]) -> JobView:
    return JobView(job_id, list(ops))


def test_an_empty_uuid_gets_a_fresh_one_and_a_given_one_is_made_canonical() -> None:
    first = filters.make_rule(None, 0, [], "ACCEPT", [], watermark=0)
    second = filters.make_rule("", 0, [], "ACCEPT", [], watermark=0)
    assert first.uuid != second.uuid and len(first.uuid) == 36
    given = filters.make_rule(UUIDS[1].upper(), 0, [], "ACCEPT", [], watermark=0)
    assert given.uuid == UUIDS[1]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uuid", "not-a-uuid"),
        ("uuid", 5),
        ("priority", -1),
        ("priority", "1"),
        ("priority", True),
        ("predicates", "all"),
        ("predicates", [["owner", ["=", "id", 1]]]),
        ("predicates", [["jobid"]]),
        ("action", "DROP"),
        ("action", ["RATE_LIMIT"]),
        ("action", ["RATE_LIMIT", -1]),
        ("action", ["RATE_LIMIT", "2"]),
        ("reason", "because"),
        ("reason", [["src", "why"]]),
    ],
)
def test_malformed_rules_are_refused(field: str, value: Any) -> None:
    parts: dict[str, Any] = {
        "uuid": None,
        "priority": 0,
        "predicates": [],
        "action": "PAUSE",
        "reason": [],
    }
    parts[field] = value
    with pytest.raises(OpPrereqError):
        filters.make_rule(
            parts["uuid"],
            parts["priority"],
            parts["predicates"],
            parts["action"],
            parts["reason"],
            watermark=0,
        )


def test_deeply_nested_predicates_are_refused_without_recursing() -> None:
    expression: Any = ["=", "id", 1]
    for _ in range(10_000):
        expression = ["!", expression]
    with pytest.raises(OpPrereqError, match="nested deeper"):
        filters.make_rule(None, 0, [["jobid", expression]], "PAUSE", [], watermark=0)


def test_round_trip_keeps_every_field() -> None:
    made = filters.make_rule(
        UUIDS[2],
        3,
        [["opcode", ["=", "OP_ID", "X"]]],
        ["RATE_LIMIT", 4],
        [["a", "b", 1]],
        watermark=17,
    )
    assert FilterRule.from_dict(made.to_dict()) == made
    assert made.to_dict()["action"] == ["RATE_LIMIT", 4]


def test_rules_are_ordered_by_priority_then_watermark_then_uuid() -> None:
    rules = [
        rule(uuid=UUIDS[3], priority=1, watermark=1),
        rule(uuid=UUIDS[2], priority=0, watermark=9),
        rule(uuid=UUIDS[1], priority=0, watermark=5),
        rule(uuid=UUIDS[0], priority=0, watermark=9),
    ]
    order = [compiled.rule.uuid for compiled in filters.ordered(rules)]
    assert order == [UUIDS[1], UUIDS[0], UUIDS[2], UUIDS[3]]


def test_no_predicates_match_every_job() -> None:
    assert rule().matches(job(1, RUN)) and rule().matches(job(99, DELAY))


def test_opcode_predicates_hold_if_one_opcode_matches() -> None:
    runs = rule(predicates=[["opcode", ["=", "OP_ID", "OP_COMMAND_RUN"]]])
    assert runs.matches(job(1, DELAY, RUN))
    assert not runs.matches(job(2, DELAY, DELAY))
    by_param = rule(predicates=[["opcode", ["=", "duration", 1]]])
    assert by_param.matches(job(3, DELAY)) and not by_param.matches(job(4, RUN))


def test_reason_predicates_look_at_every_trail_entry() -> None:
    cron = rule(predicates=[["reason", ["=", "source", "cron"]]])
    assert cron.matches(job(1, RUN, DELAY)) and not cron.matches(job(2, RUN))
    late = rule(predicates=[["reason", [">", "timestamp", 6]]])
    assert late.matches(job(3, DELAY)) and not late.matches(job(4, RUN))


def test_jobid_predicates_know_the_watermark() -> None:
    newer = rule(predicates=[["jobid", [">", "id", "watermark"]]], watermark=10)
    assert newer.matches(job(11, RUN)) and not newer.matches(job(10, RUN))
    nested = rule(
        predicates=[["jobid", ["&", ["<=", "id", "watermark"], [">", "id", 3]]]], watermark=10
    )
    assert nested.matches(job(4, RUN)) and not nested.matches(job(3, RUN))


def test_ganeti_s_operators_work_on_opcodes() -> None:
    locked = {"OP_ID": "OP_COMMAND_RUN", "argv": ["backup", "db"], "locks": ["host:db1"]}
    assert rule(predicates=[["opcode", ["==", "OP_ID", "OP_COMMAND_RUN"]]]).matches(job(1, locked))
    assert rule(predicates=[["opcode", ["=[]", "locks", "host:db1"]]]).matches(job(1, locked))
    assert rule(predicates=[["opcode", ["=~", "argv", "^back"]]]).matches(job(1, locked))
    assert not rule(predicates=[["opcode", ["=[]", "locks", "host:db1"]]]).matches(job(2, RUN))


def test_all_predicates_must_hold() -> None:
    both = rule(
        predicates=[["opcode", ["=", "OP_ID", "OP_COMMAND_RUN"]], ["jobid", [">", "id", 5]]]
    )
    assert both.matches(job(6, RUN))
    assert not both.matches(job(5, RUN)) and not both.matches(job(6, DELAY))


def test_unknown_fields_are_refused_where_the_fields_are_known() -> None:
    with pytest.raises(OpPrereqError):
        rule(predicates=[["jobid", ["=", "status", "queued"]]])
    with pytest.raises(OpPrereqError):
        rule(predicates=[["reason", ["=", "who", "me"]]])
    rule(predicates=[["opcode", ["=", "anything", 1]]])  # opcodes have any parameters


def test_a_predicate_that_fails_to_evaluate_does_not_hold() -> None:
    def failing(qfilter: Any, resolve: filters.Resolve) -> filters.Predicate:
        def check(item: Any) -> bool:
            raise OpPrereqError("cannot compare", "wrong_input")

        return check

    made = filters.make_rule(None, 0, [["jobid", ["=", "id", 1]]], "PAUSE", [], watermark=0)
    assert not filters.compile_rule(made, failing).matches(job(1, RUN))


def test_the_first_matching_rule_that_is_not_continue_decides() -> None:
    rules = filters.ordered(
        [
            rule("CONTINUE", uuid=UUIDS[0], priority=0),
            rule("REJECT", [["jobid", ["=", "id", 2]]], uuid=UUIDS[1], priority=1),
            rule(
                ["RATE_LIMIT", 2],
                [["opcode", ["=", "OP_ID", "OP_COMMAND_RUN"]]],
                uuid=UUIDS[2],
                priority=2,
            ),
            rule("ACCEPT", uuid=UUIDS[3], priority=3),
            rule("PAUSE", uuid=UUIDS[4], priority=4),
        ]
    )
    decided = {i: filters.decide(rules, job(i, RUN if i % 2 else DELAY)) for i in (1, 2, 4)}
    assert {i: r.action if r else None for i, r in decided.items()} == {
        1: "RATE_LIMIT",
        2: "REJECT",
        4: "ACCEPT",  # never reaches the PAUSE rule behind it
    }
    assert filters.decide(filters.ordered([rule("CONTINUE")]), job(1, RUN)) is None


def test_query_selects_and_orders_rules() -> None:
    rules = [
        rule("PAUSE", uuid=UUIDS[1], priority=5).rule,
        rule(["RATE_LIMIT", 3], uuid=UUIDS[0], priority=1).rule,
    ]
    fields = ["uuid", "priority", "action", "nonsense"]
    answer = filters.query(rules, fields, None, qlang.compile_filter)
    assert [d["name"] for d in answer["fields"]] == fields
    assert answer["fields"][3]["kind"] == "unknown"
    assert answer["data"] == [
        [[0, UUIDS[0]], [0, 1], [0, ["RATE_LIMIT", 3]], [1, None]],
        [[0, UUIDS[1]], [0, 5], [0, "PAUSE"], [1, None]],
    ]
    picked = filters.query(rules, ["uuid"], ["=", "uuid", UUIDS[1]], qlang.compile_filter)
    assert picked["data"] == [[[0, UUIDS[1]]]]
    with pytest.raises(OpPrereqError):
        filters.query(rules, ["uuid"], ["=", "owner", "x"], qlang.compile_filter)


def test_field_definitions_are_ganeti_s() -> None:
    names = [d["name"] for d in filters.field_definitions(None)]
    assert names == sorted(
        ["uuid", "watermark", "priority", "predicates", "action", "reason_trail"]
    )
