"""Job filter rules (Ganeti's ``design-optables``): their form, order and verdict.

A rule says what to do with the jobs it matches::

    uuid          its key, generated when not given
    watermark     the highest job id issued when the rule was added or replaced
    priority      a non-negative integer; rules are evaluated by priority, then
                  watermark, then uuid, lowest first
    predicates    a list of [kind, EXPR], all of which must hold (none: every job)
                    ["jobid", EXPR]   EXPR over the field ``id``
                    ["opcode", EXPR]  over any parameter of an opcode (OP_ID too);
                                      holds if it holds for one opcode of the job
                    ["reason", EXPR]  over ``source``, ``reason`` and ``timestamp``
                                      of a reason-trail entry of any opcode
                  EXPR is a query-language filter; in a ``jobid`` predicate the
                  string "watermark" as a value stands for the rule's watermark
    action        ACCEPT, PAUSE, REJECT, CONTINUE or ["RATE_LIMIT", n]
    reason_trail  why the rule exists: [source, reason, timestamp_ns] entries

The verdict for a job (``decide``) is the first matching rule whose action
is not CONTINUE; no such rule means the job runs normally. What each action
does to a job is the queue's business (``jobqueue.admission``).

Pure: no I/O, no threads, no clock. Predicates are compiled with the query
language compiler given (``CompileFilter``: a filter and a function that
turns a field name into a getter); a predicate that fails while it is
evaluated (a value of the wrong type, say) does not hold.
"""

from __future__ import annotations

import dataclasses
import uuid as uuid_module
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jobqueue.errors import ECODE_INVAL, GenericError, OpPrereqError
from jobqueue.model import is_json_int

ACCEPT = "ACCEPT"
PAUSE = "PAUSE"
REJECT = "REJECT"
CONTINUE = "CONTINUE"
RATE_LIMIT = "RATE_LIMIT"
SIMPLE_ACTIONS = (ACCEPT, PAUSE, REJECT, CONTINUE)
PREDICATE_KINDS = ("jobid", "opcode", "reason")
#: The value that stands for the rule's watermark in a ``jobid`` predicate.
WATERMARK = "watermark"
REASON_FIELDS = {"source": 0, "reason": 1, "timestamp": 2}
#: Sub-filters nested deeper than this are refused before anything recurses.
MAX_PREDICATE_DEPTH = 64

Getter = Callable[[Any], Any]
Resolve = Callable[[str], Getter]
Predicate = Callable[[Any], bool]
#: ``compile(qfilter, resolve)``: a predicate over items; ``OpPrereqError``
#: for a malformed filter or a field ``resolve`` refuses.
CompileFilter = Callable[[Any, Resolve], Predicate]


@dataclasses.dataclass(frozen=True)
class FilterRule:
    """One rule, as stored and as queried (``to_dict``/``from_dict``).

    ``rate`` is the n of ``["RATE_LIMIT", n]`` and None for other actions.
    """

    uuid: str
    watermark: int
    priority: int
    predicates: list[Any]
    action: str
    rate: int | None
    reason_trail: list[Any]

    @property
    def action_value(self) -> Any:
        """The action as on the wire: a name, or ``["RATE_LIMIT", n]``."""
        return [RATE_LIMIT, self.rate] if self.action == RATE_LIMIT else self.action

    def sort_key(self) -> tuple[int, int, str]:
        return (self.priority, self.watermark, self.uuid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "watermark": self.watermark,
            "priority": self.priority,
            "predicates": self.predicates,
            "action": self.action_value,
            "reason_trail": self.reason_trail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FilterRule:
        """Rebuild a stored rule; ``OpPrereqError`` for anything malformed."""
        if not is_json_int(data.get("watermark")):
            raise OpPrereqError("A filter rule's watermark must be an integer", ECODE_INVAL)
        return make_rule(
            data.get("uuid"),
            data.get("priority"),
            data.get("predicates"),
            data.get("action"),
            data.get("reason_trail"),
            watermark=int(data["watermark"]),
        )


def make_rule(
    uuid: Any,
    priority: Any,
    predicates: Any,
    action: Any,
    reason_trail: Any,
    *,
    watermark: int,
) -> FilterRule:
    """A checked rule from wire values; a new uuid when ``uuid`` is None or empty.

    Checks the form of every part (not the predicates' expressions: see
    ``compile_rule``). Raises ``OpPrereqError`` naming what is wrong.
    """
    name, rate = _check_action(action)
    return FilterRule(
        uuid=_check_uuid(uuid),
        watermark=watermark,
        priority=_check_priority(priority),
        predicates=_check_predicates(predicates),
        action=name,
        rate=rate,
        reason_trail=_check_trail(reason_trail),
    )


def _check_uuid(value: Any) -> str:
    if value is None or value == "":
        return str(uuid_module.uuid4())
    return canonical_uuid(value)


def canonical_uuid(value: Any) -> str:
    """``value`` as a canonical lowercase UUID; ``OpPrereqError`` if it is none."""
    if not isinstance(value, str):
        raise OpPrereqError(f"Invalid filter uuid {value!r}: expected a string", ECODE_INVAL)
    try:
        return str(uuid_module.UUID(value))
    except ValueError:
        raise OpPrereqError(f"Invalid filter uuid {value!r}", ECODE_INVAL) from None


def _check_priority(value: Any) -> int:
    if not is_json_int(value) or value < 0:
        raise OpPrereqError(
            f"Invalid filter priority {value!r}: expected a non-negative integer", ECODE_INVAL
        )
    return int(value)


def _check_action(value: Any) -> tuple[str, int | None]:
    if value in SIMPLE_ACTIONS:
        return str(value), None
    if (
        isinstance(value, list)
        and len(value) == 2
        and value[0] == RATE_LIMIT
        and is_json_int(value[1])
        and value[1] >= 0
    ):
        return RATE_LIMIT, int(value[1])
    raise OpPrereqError(
        f"Invalid filter action {value!r}: expected one of {', '.join(SIMPLE_ACTIONS)}"
        f' or ["{RATE_LIMIT}", n] with n >= 0',
        ECODE_INVAL,
    )


def _check_predicates(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OpPrereqError("Filter predicates must be a list", ECODE_INVAL)
    for predicate in value:
        if (
            not isinstance(predicate, list)
            or len(predicate) != 2
            or predicate[0] not in PREDICATE_KINDS
        ):
            raise OpPrereqError(
                f"Invalid filter predicate {predicate!r}: expected [kind, filter] with kind"
                f" one of {', '.join(PREDICATE_KINDS)}",
                ECODE_INVAL,
            )
        _check_depth(predicate[1])
    return value


def _check_depth(expression: Any) -> None:
    stack = [(expression, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_PREDICATE_DEPTH:
            raise OpPrereqError(
                f"Filter predicate nested deeper than {MAX_PREDICATE_DEPTH} levels", ECODE_INVAL
            )
        if isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, list))


def _check_trail(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(_is_trail_entry(entry) for entry in value):
        raise OpPrereqError(
            "A filter's reason must be a list of [source, reason, timestamp] entries",
            ECODE_INVAL,
        )
    return [list(entry) for entry in value]


def _is_trail_entry(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and is_json_int(entry[2])
    )


# -- matching ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class JobView:
    """What predicates look at: the job id and the inputs of its opcodes."""

    id: int
    ops: Sequence[Mapping[str, Any]]

    def reason_entries(self) -> Iterable[Sequence[Any]]:
        for op in self.ops:
            trail = op.get("reason")
            if isinstance(trail, list | tuple):
                yield from (entry for entry in trail if isinstance(entry, list | tuple))


@dataclasses.dataclass(frozen=True)
class CompiledRule:
    """A rule with its predicates compiled; ``matches`` a job or not."""

    rule: FilterRule
    tests: tuple[Callable[[JobView], bool], ...]

    def matches(self, job: JobView) -> bool:
        try:
            for test in self.tests:
                if not test(job):
                    return False
        except GenericError:  # a predicate that cannot be evaluated does not hold
            return False
        return True


def compile_rule(rule: FilterRule, compile_filter: CompileFilter) -> CompiledRule:
    """Compile every predicate of ``rule``; ``OpPrereqError`` for a bad expression."""
    tests = []
    for kind, expression in rule.predicates:
        if kind == "jobid":
            check = compile_filter(_with_watermark(expression, rule.watermark), _job_field)
            tests.append(_on_id(check))
        elif kind == "opcode":
            check = compile_filter(expression, _opcode_field)
            tests.append(_on_any_opcode(check))
        else:
            check = compile_filter(expression, _reason_field)
            tests.append(_on_any_reason(check))
    return CompiledRule(rule, tuple(tests))


def _on_id(check: Predicate) -> Callable[[JobView], bool]:
    return lambda job: check(job.id)


# The tests loop instead of calling any() on a generator: they run before
# every opcode of every job, and the generator costs more than the compare.
def _on_any_opcode(check: Predicate) -> Callable[[JobView], bool]:
    def test(job: JobView) -> bool:
        for op in job.ops:  # noqa: SIM110
            if check(op):
                return True
        return False

    return test


def _on_any_reason(check: Predicate) -> Callable[[JobView], bool]:
    def test(job: JobView) -> bool:
        for entry in job.reason_entries():  # noqa: SIM110
            if check(entry):
                return True
        return False

    return test


def _job_field(name: str) -> Getter:
    if name != "id":
        raise OpPrereqError(
            f"Unknown field {name!r} in a jobid predicate: only 'id' is known", ECODE_INVAL
        )
    return lambda job_id: job_id


def _opcode_field(name: str) -> Getter:
    return lambda op: op.get(name)


def _reason_field(name: str) -> Getter:
    if name not in REASON_FIELDS:
        raise OpPrereqError(
            f"Unknown field {name!r} in a reason predicate: known are {', '.join(REASON_FIELDS)}",
            ECODE_INVAL,
        )
    index = REASON_FIELDS[name]
    return lambda entry: entry[index] if len(entry) > index else None


def _with_watermark(expression: Any, watermark: int) -> Any:
    """``expression`` with every comparison value "watermark" replaced by ``watermark``."""
    if not isinstance(expression, list) or not expression:
        return expression
    op, *args = expression
    if len(args) == 2 and not isinstance(args[0], list) and args[1] == WATERMARK:
        return [op, args[0], watermark]
    return [op, *(_with_watermark(arg, watermark) for arg in args)]


def ordered(rules: Iterable[CompiledRule]) -> list[CompiledRule]:
    """Rules in the order they are evaluated: priority, watermark, uuid."""
    return sorted(rules, key=lambda compiled: compiled.rule.sort_key())


def decide(rules: Sequence[CompiledRule], job: JobView) -> FilterRule | None:
    """The rule that decides about ``job``: the first matching one that is not CONTINUE.

    ``rules`` must be ``ordered``. None: no rule applies, the job runs normally.
    """
    for compiled in rules:
        if compiled.rule.action != CONTINUE and compiled.matches(job):
            return compiled.rule
    return None


# -- queries ------------------------------------------------------------------------
RS_NORMAL, RS_UNKNOWN = 0, 1
#: Ganeti's filter fields: name -> (title, kind, doc, getter).
FIELDS: dict[str, tuple[str, str, str, Callable[[FilterRule], Any]]] = {
    "uuid": ("UUID", "text", "Filter rule UUID", lambda rule: rule.uuid),
    "watermark": (
        "Watermark",
        "number",
        "Highest job id issued when the rule was added",
        lambda rule: rule.watermark,
    ),
    "priority": (
        "Priority",
        "number",
        "Evaluation order (lowest first)",
        lambda rule: rule.priority,
    ),
    "predicates": (
        "Predicates",
        "other",
        "What jobs the rule matches",
        lambda rule: rule.predicates,
    ),
    "action": ("Action", "other", "What happens to matching jobs", lambda rule: rule.action_value),
    "reason_trail": (
        "Reason_trail",
        "other",
        "Why the rule exists",
        lambda rule: rule.reason_trail,
    ),
}


def field_definitions(names: Sequence[str] | None) -> list[dict[str, str]]:
    """QueryFields("filter"): the named fields in order, or all sorted by name."""
    chosen = sorted(FIELDS) if names is None else names
    definitions = []
    for name in chosen:
        if name in FIELDS:
            title, kind, doc, _ = FIELDS[name]
            definitions.append({"name": name, "title": title, "kind": kind, "doc": doc})
        else:
            definitions.append(
                {"name": name, "title": name, "kind": "unknown", "doc": f"Unknown field '{name}'"}
            )
    return definitions


def query(
    rules: Iterable[FilterRule],
    fields: Sequence[str],
    qfilter: Any,
    compile_filter: CompileFilter,
) -> dict[str, Any]:
    """Query("filter"): the rules ``qfilter`` selects, in evaluation order."""

    def resolve(name: str) -> Getter:
        if name not in FIELDS:
            raise OpPrereqError(f"Filter uses unknown field {name!r}", ECODE_INVAL)
        return FIELDS[name][3]

    selected = compile_filter(qfilter, resolve) if qfilter is not None else None
    data = []
    for rule in sorted(rules, key=FilterRule.sort_key):
        if selected is not None and not selected(rule):
            continue
        data.append(
            [
                [RS_NORMAL, FIELDS[name][3](rule)] if name in FIELDS else [RS_UNKNOWN, None]
                for name in fields
            ]
        )
    return {"fields": field_definitions(fields), "data": data}
