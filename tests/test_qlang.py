"""The query language on its own: operators, value rules, patterns, and hostile filters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue import qlang
from jobqueue.errors import OpPrereqError

ITEMS: list[dict[str, Any]] = [
    {"id": 1, "status": "queued", "summary": ["TEST_DELAY(1)"], "done": False, "ts": 100},
    {"id": 2, "status": "running", "summary": ["COMMAND_RUN(sleep)"], "done": False, "ts": 200},
    {"id": 3, "status": "success", "summary": ["TEST_DUMMY", "X"], "done": True, "ts": 300},
    {"id": 4, "status": "error", "summary": [], "done": True, "ts": None},
]


def resolve(name: str) -> qlang.Getter:
    if name not in ITEMS[0]:
        raise OpPrereqError(f"unknown field {name}")

    def get(item: dict[str, Any]) -> Any:
        value = item[name]
        return qlang.UNAVAILABLE if value is None else value

    return get


def ids(qfilter: Any) -> list[int]:
    predicate = qlang.compile_filter(qfilter, resolve)
    return [item["id"] for item in ITEMS if predicate(item)]


@pytest.mark.parametrize(
    ("qfilter", "expected"),
    [
        (None, [1, 2, 3, 4]),
        (["==", "status", "running"], [2]),
        (["=", "status", "running"], [2]),  # the legacy spelling
        (["!=", "status", "running"], [1, 3, 4]),
        (["<", "id", 3], [1, 2]),
        ([">", "id", 3], [4]),
        (["<=", "id", 3], [1, 2, 3]),
        ([">=", "id", 3], [3, 4]),
        (["<", "status", "r"], [1, 4]),  # strings compare as strings
        (["==", "id", 2.0], [2]),  # an integral number is an integer
        (["|", ["==", "id", 1], ["==", "id", 3]], [1, 3]),
        (["&", ["?", "done"], ["!=", "status", "error"]], [3]),
        (["&"], [1, 2, 3, 4]),
        (["|"], []),
        (["!", ["?", "done"]], [1, 2]),
        (["=~", "status", "^r"], [2]),
        (["=~", "status", "(?i)SUCC"], [3]),
        (["=~", "summary", "DELAY|DUMMY"], [1, 3]),  # any string of a list
        (["=[]", "summary", "X"], [3]),
        (["!", ["=[]", "summary", "X"]], [1, 2, 4]),
        (["=[]", "summary", 1], []),  # a number is no string
        # No data decides nothing: the item passes (Ganeti's rule).
        (["<", "ts", 250], [1, 2, 4]),
        (["|", ["==", "status", "queued"], ["==", "status", "waiting"]], [1]),
    ],
)
def test_operators(qfilter: Any, expected: list[int]) -> None:
    assert ids(qfilter) == expected


@pytest.mark.parametrize(
    ("qfilter", "message"),
    [
        (["==", "id", 1.5], "fractional"),
        (["==", "id", True], "string or an integer"),
        (["==", "id", None], "string or an integer"),
        (["==", "id", [1]], "string or an integer"),
        (["==", "id", {"a": 1}], "string or an integer"),
        (["=[]", "summary", 0.5], "fractional"),
        (["=~", "status", 5], "expecting a string"),
        (["==", 7, 1], "Invalid field name"),
        (["==", "nope", 1], "unknown field nope"),
        (["~~", "id", 1], "Invalid filter operator '~~' with 2 operands"),
        (["==", "id"], "with 1 operands"),
        (["!", ["?", "done"], ["?", "done"]], "'!' with 2 operands"),
        (["?"], "'?' with 0 operands"),
        ("status", "expected [operator, ...]"),
        ([], "expected [operator, ...]"),
        ([1, 2], "expected [operator, ...]"),
        (["&", "x"], "expected [operator, ...]"),
    ],
)
def test_malformed_filters(qfilter: Any, message: str) -> None:
    with pytest.raises(OpPrereqError, match=message.replace("[", r"\[").replace("?", r"\?")):
        qlang.compile_filter(qfilter, resolve)


@pytest.mark.parametrize(
    ("qfilter", "message"),
    [
        (["==", "id", "1"], "Invalid types in comparison: field 'id' is 1, compared with '1'"),
        (["<", "status", 3], "Invalid types in comparison"),
        (["?", "status"], "in boolean context"),
        (["=[]", "status", "q"], "not a list"),
        (["=~", "id", "1"], "for a regular expression"),
    ],
)
def test_wrong_types_fail_when_evaluated(qfilter: Any, message: str) -> None:
    predicate = qlang.compile_filter(qfilter, resolve)
    with pytest.raises(OpPrereqError, match=message):
        predicate(ITEMS[0])


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(OpPrereqError, match="Invalid types"):
        qlang.compile_filter(["==", "done", 1], resolve)(ITEMS[0])


class TestPatterns:
    @pytest.mark.parametrize(
        ("pattern", "reason"),
        [
            (r"(a)\1", "invalid escape sequence"),  # backreferences: not linear, refused
            ("(?=a)", "invalid perl operator"),
            ("[", "missing ]"),
            ("a{1001}", "invalid repetition size"),
        ],
    )
    def test_refused_by_the_engine_names_the_pattern(self, pattern: str, reason: str) -> None:
        with pytest.raises(OpPrereqError) as exc:
            qlang.compile_filter(["=~", "status", pattern], resolve)
        message, ecode = exc.value.args
        assert repr(pattern) in message and reason in message
        assert ecode == "wrong_input"

    def test_too_long(self) -> None:
        pattern = "a" * (qlang.MAX_PATTERN_LENGTH + 1)
        with pytest.raises(OpPrereqError, match="is longer than 1000 characters"):
            qlang.compile_filter(["=~", "status", pattern], resolve)

    def test_too_large_a_program(self) -> None:
        pattern = "a{1000}b{1000}c{1000}d{1000}e{1000}f{1000}"  # 6,000 instructions
        with pytest.raises(OpPrereqError, match=r"too costly to match \(\d+ > 5000"):
            qlang.compile_filter(["=~", "status", pattern], resolve)

    def test_all_patterns_of_a_filter_share_a_budget(self) -> None:
        part = ["=~", "status", "a{1000}b{1000}"]
        qlang.compile_filter(["|", *[part] * 9], resolve)
        with pytest.raises(OpPrereqError, match="regular expressions of this filter"):
            qlang.compile_filter(["|", *[part] * 11], resolve)

    def test_the_issue_s_pattern_is_an_ordinary_one(self) -> None:
        """``(.|.|.|.)*Z`` backtracks for ever in Python's ``re``; RE2 answers."""
        search, size = qlang.compile_pattern("(.|.|.|.)*Z")
        assert size < 100
        assert not search("TEST_DELAY(0.5) " * 1000)
        assert search("TEST_DELAY(0.5) " * 1000 + "Z")


class TestNesting:
    @staticmethod
    def nested(depth: int, op: str = "&") -> Any:
        qfilter: Any = ["==", "id", 1]
        for _ in range(depth - 1):
            qfilter = [op, qfilter]
        return qfilter

    def test_at_the_limit(self) -> None:
        assert ids(self.nested(qlang.MAX_DEPTH)) == [1]
        assert ids(self.nested(qlang.MAX_DEPTH, "!")) == [2, 3, 4]

    @pytest.mark.parametrize("depth", [qlang.MAX_DEPTH + 1, 500, 100_000])
    def test_deeper_is_refused_without_recursion(self, depth: int) -> None:
        with pytest.raises(OpPrereqError, match="nested deeper than 64 levels"):
            qlang.compile_filter(self.nested(depth), resolve)

    def test_deep_values_are_refused_too(self) -> None:
        value: Any = 1
        for _ in range(5000):
            value = [value]
        with pytest.raises(OpPrereqError, match="nested deeper"):
            qlang.compile_filter(["==", "id", value], resolve)
        mapping: Any = {}
        for _ in range(5000):
            mapping = {"a": mapping}
        with pytest.raises(OpPrereqError, match="string or an integer"):
            qlang.compile_filter(["==", "id", mapping], resolve)


@pytest.mark.parametrize(
    ("qfilter", "expected"),
    [
        (["==", "id", 4], [4]),
        (["=", "id", 4], [4]),
        (["|", ["==", "id", 1], ["==", "id", "2"]], [1, "2"]),
        (["|", ["==", "id", 1], ["|", ["==", "id", 2]]], [1, 2]),
        (["|", ["==", "id", 1], ["==", "status", "x"]], None),
        (["&", ["==", "id", 1]], None),
        (["|"], None),
        (None, None),
        (["==", "status", "x"], None),
        (["==", "id", 1.5], None),
        ("junk", None),
    ],
)
def test_requested_values(qfilter: Any, expected: Any) -> None:
    assert qlang.requested_values(qfilter, "id") == expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=20,
)
OPERATORS = st.sampled_from(
    ["&", "|", "!", "?", "==", "=", "!=", "<", ">", "<=", ">=", "=~", "=[]"]
)
FIELDS = st.sampled_from([*ITEMS[0], "nope"])
FILTERS = st.recursive(
    st.tuples(OPERATORS, FIELDS, JSON).map(list) | st.tuples(OPERATORS, FIELDS).map(list),
    lambda children: (
        st.tuples(OPERATORS, children, children).map(list)
        | st.tuples(OPERATORS, children).map(list)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(FILTERS | JSON)
def test_any_filter_is_a_predicate_or_an_opprereqerror(qfilter: Any) -> None:
    """Whatever arrives, compiling and evaluating raise nothing but OpPrereqError."""
    try:
        predicate = qlang.compile_filter(qfilter, resolve)
        for item in ITEMS:
            assert predicate(item) in (True, False)
    except OpPrereqError:
        pass


def test_coerce_converts_comparison_values() -> None:
    def digits_for_id(field: str, value: int | str) -> int | str:
        return int(value) if field == "id" and isinstance(value, str) else value

    predicate = qlang.compile_filter(["==", "id", "3"], resolve, digits_for_id)
    assert [item["id"] for item in ITEMS if predicate(item)] == [3]


def test_a_search_too_costly_is_refused() -> None:
    """Program size times text length above the limit: refused before searching."""
    pattern = "[a-z]{1000}[0-9]{100}"  # RE2's slowest case: some 35 ns per unit
    _, size = qlang.compile_pattern(pattern)
    fits = "ab" * (qlang.SEARCH_COST_LIMIT // size // 2 // 100)  # well within the limit
    too_long = "ab" * (qlang.SEARCH_COST_LIMIT // size // 2 + 1)
    predicate = qlang.compile_filter(["=~", "status", pattern], lambda name: lambda item: item)
    assert predicate(fits) is False
    with pytest.raises(OpPrereqError, match=r"'\[a-z\]\{1000\}.*would take too long to match"):
        predicate(too_long)


def test_a_filter_s_searches_share_a_time_limit() -> None:
    """Once the searches took MATCH_TIME_LIMIT seconds in all, the next one is refused."""
    ticks = iter([0.0, 1.0, 10.0, 11.0 + qlang.MATCH_TIME_LIMIT])
    predicate = qlang.compile_filter(
        ["=~", "status", "^y"], lambda name: lambda item: item, clock=lambda: next(ticks)
    )
    assert predicate("x") is False  # took 1 s
    assert predicate("x") is False  # took MATCH_TIME_LIMIT + 1 s: now over
    with pytest.raises(OpPrereqError, match="'\\^y' would take too long to match"):
        predicate("x")
    fresh = qlang.compile_filter(["=~", "status", "^y"], lambda name: lambda item: item)
    assert fresh("x") is False  # each filter has its own time
