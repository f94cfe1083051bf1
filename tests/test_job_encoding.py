"""How job versions are encoded: orjson, with the standard library for what it refuses."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobqueue.errors import StorageError
from jobqueue.storage import base
from jobqueue.storage.base import decode_job, encode_job, encode_with_orjson, encode_with_stdlib
from tests.store_samples import make_job

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too: orjson refuses those
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),  # lone surrogates too: orjson refuses those
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def test_orjson_encodes_jobs_where_it_is_installed() -> None:
    # setup.py asks for it; without it every write takes the slower encoder.
    assert base.encode_compact is encode_with_orjson


@given(JSON_VALUES)
def test_both_encoders_write_one_line_that_reads_back_the_same(value: Any) -> None:
    for encode in (encode_with_orjson, encode_with_stdlib):
        data = encode({"value": value})
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        assert json.loads(data) == {"value": value}


def test_what_orjson_refuses_is_written_by_the_stdlib() -> None:
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    for value, read_back in [
        (2**64, 2**64),
        (-(2**63) - 1, -(2**63) - 1),
        ("\ud800", "\ud800"),
        ({1: "a"}, {"1": "a"}),
        (deep, deep),
    ]:
        assert json.loads(encode_with_orjson([value])) == [read_back]


def test_what_the_stdlib_refuses_is_still_refused() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    for value in (datetime.datetime(2026, 1, 1), datetime.date(2026, 1, 1), Point(1)):
        with pytest.raises(TypeError):
            encode_with_orjson([value])


def test_a_float_that_is_not_finite_is_written_as_null() -> None:
    assert json.loads(encode_with_orjson([math.nan, math.inf])) == [None, None]


def test_a_job_with_text_beyond_ascii_reads_back_equal() -> None:
    job = make_job(7)
    job.ops[0].result = "déjà vu \u2603 \U0001f600"
    data = encode_job(job)
    assert "\u2603".encode() in data  # UTF-8, not escaped
    assert decode_job(data).to_dict() == job.to_dict()


def test_a_job_json_cannot_hold_is_a_failed_write_not_a_crash() -> None:
    job = make_job(7)
    job.ops[0].result = {"sizes": {1, 2}}
    with pytest.raises(StorageError, match="Job 7 cannot be stored as JSON"):
        encode_job(job)
