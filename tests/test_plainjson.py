"""What an opcode may put into its job: plain JSON values (``jobqueue.plainjson``)."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import json
import math
import sys
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobqueue.plainjson import MAX_DEPTH, max_int_bits, problem
from jobqueue.storage.base import encode_with_orjson, encode_with_stdlib
from tests.test_job_encoding import JSON_VALUES


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int


def nested(depth: int) -> Any:
    """Lists nested ``depth`` levels deep (``[]`` is one)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@given(JSON_VALUES)
def test_json_values_are_plain(value: Any) -> None:
    assert problem(value, "result") is None


@pytest.mark.parametrize(
    "value",
    [
        (1, "two", [3.5]),  # a tuple is stored as a list
        Level.HIGH,  # an int, stored as 3
        collections.OrderedDict(a=1),
        collections.namedtuple("Pair", "a b")(1, 2),
        2 ** max_int_bits() - 1,
        nested(MAX_DEPTH),
    ],
    ids=["tuple", "IntEnum", "OrderedDict", "namedtuple", "longest int", "deepest"],
)
def test_what_json_stores_without_surprise_is_plain(value: Any) -> None:
    assert problem(value, "result") is None


@pytest.mark.parametrize(
    ("value", "answer"),
    [
        ({1, 2}, "result is of type set"),
        (b"raw", "result is of type bytes"),
        (object(), "result is of type object"),
        (uuid.UUID(int=1), "result is of type UUID"),
        (Color.RED, "result is of type Color"),
        (datetime.date(2026, 1, 1), "result is of type date"),
        (Point(1), "result is of type Point"),
        (math.nan, "result is nan, which JSON cannot hold"),
        ([1, {"a": -math.inf}], "result[1]['a'] is -inf, which JSON cannot hold"),
        ({"a": [0, {"b": (1, frozenset())}]}, "result['a'][1]['b'][1] is of type frozenset"),
        ({"ok": 1, b"k": 2}, "result has a key of type bytes"),
        ({"a": {(1, 2): 3}}, "result['a'] has a key of type tuple"),
        ({1: "a", "1": "b"}, "result has a key of type int"),  # stored twice as "1"
        ({"a": [{True: 1}]}, "result['a'][0] has a key of type bool"),
        ({None: 1}, "result has a key of type NoneType"),
        pytest.param(2 ** max_int_bits(), "result is an integer too long to store", id="long int"),
        (nested(MAX_DEPTH + 1), "result" + "[0]" * MAX_DEPTH + " nests lists and objects"),
    ],
)
def test_anything_else_is_named_with_where_it_is(value: Any, answer: str) -> None:
    found = problem(value, "result")
    assert found is not None and found.startswith(answer)


class Disguised(dict):  # type: ignore[type-arg]
    """A dict whose ``items`` hides what it holds; the encoders read the dict itself."""

    def items(self) -> Any:
        return [("fine", 1)]


def test_a_dict_is_checked_for_what_it_holds_not_for_what_its_methods_say() -> None:
    assert problem(Disguised({"x": {1, 2}}), "result") == "result['x'] is of type set"


def test_a_lower_digit_limit_of_the_interpreter_lowers_the_integer_limit() -> None:
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    try:
        assert problem(10**899, "result") is None
        assert problem(10**1100, "result") == "result is an integer too long to store"
        lowest = sys.int_info.str_digits_check_threshold  # no limit may be lower
        sys.set_int_max_str_digits(lowest)
        assert problem(2 ** (3 * lowest) - 1, "result") is None
        assert problem(-(2 ** (3 * lowest)), "result") == "result is an integer too long to store"
    finally:
        sys.set_int_max_str_digits(old)


def test_a_value_that_holds_itself_is_refused_not_walked_forever() -> None:
    loop: list[Any] = []
    loop.append(loop)
    found = problem(loop, "result")
    assert found is not None and found.endswith(f"deeper than {MAX_DEPTH} levels")


def test_any_depth_is_checked_without_recursion() -> None:
    found = problem(nested(100_000), "result")
    assert found is not None and "deeper than" in found


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()  # NaN and infinities too
        | st.text(max_size=4)
        | st.binary(max_size=2)
        | st.sets(st.integers(), max_size=2)
        | st.sampled_from([Color.RED, Level.HIGH, uuid.UUID(int=5)]),
        lambda children: (
            st.lists(children, max_size=3)
            | st.tuples(children, children)
            | st.dictionaries(
                st.text(max_size=3) | st.integers() | st.binary(max_size=2), children, max_size=3
            )
        ),
        max_leaves=12,
    )
)
def test_what_is_plain_both_encoders_store_alike_and_read_back(value: Any) -> None:
    """Plain: the job encoders agree with ``json`` about it; else ``json`` refuses
    it, or would store something else (a key that is not a string)."""
    if problem(value, "result") is None:
        expected = json.loads(json.dumps(value, allow_nan=False))
        for encode in (encode_with_orjson, encode_with_stdlib):
            assert json.loads(encode([value])) == [expected]
    elif not has_a_key_that_is_not_text(value):
        with pytest.raises((TypeError, ValueError)):
            json.dumps(value, allow_nan=False)


def has_a_key_that_is_not_text(value: Any) -> bool:
    if isinstance(value, dict):
        return any(
            not isinstance(key, str) or has_a_key_that_is_not_text(item)
            for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return any(has_a_key_that_is_not_text(item) for item in value)
    return False
