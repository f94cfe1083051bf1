"""Tests for jobqueue.luxi.protocol: messages, framing and ``call``."""

from __future__ import annotations

from typing import Any

import pytest
import simplejson
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue import constants, errors
from jobqueue.luxi import protocol
from jobqueue.luxi.protocol import FrameBuffer, Request

EOM = constants.LUXI_EOM


def _frame(message: bytes) -> bytes:
    """Strip the terminator, as a FrameBuffer would."""
    assert message.endswith(EOM)
    return message[: -len(EOM)]


class TestRequests:
    def test_round_trip_with_version(self) -> None:
        message = protocol.encode_request("SubmitJob", [[{"OP_ID": "OP_TEST_DELAY"}]], 2060000)
        assert protocol.parse_request(_frame(message)) == Request(
            "SubmitJob", [[{"OP_ID": "OP_TEST_DELAY"}]], 2060000
        )

    def test_round_trip_without_version(self) -> None:
        message = protocol.encode_request("QueryJobs", [None, ["id", "status"]])
        assert b"version" not in message
        assert protocol.parse_request(_frame(message)) == Request(
            "QueryJobs", [None, ["id", "status"]], None
        )

    def test_wire_shape(self) -> None:
        message = protocol.encode_request("ArchiveJob", [7], 1)
        assert message.endswith(b"\n" + EOM)
        assert message.count(EOM) == 1
        assert simplejson.loads(message[:-1]) == {"method": "ArchiveJob", "args": [7], "version": 1}

    def test_control_characters_are_escaped(self) -> None:
        message = protocol.encode_request("X", ["a\x03b\nc", "\u00e9\ud800"])
        assert message.count(EOM) == 1
        assert protocol.parse_request(_frame(message)).args == ["a\x03b\nc", "\u00e9\ud800"]

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
    def test_encode_refuses_non_finite_numbers(self, value: float) -> None:
        with pytest.raises(errors.LuxiError):
            protocol.encode_request("X", [value])

    def test_encode_refuses_unserialisable_objects(self) -> None:
        with pytest.raises(errors.LuxiError):
            protocol.encode_request("X", [object()])

    def test_surrounding_whitespace_is_tolerated(self) -> None:
        frame = b' \r\n\t{"method": "M", "args": []}\n \t'
        assert protocol.parse_request(frame) == Request("M", [], None)

    def test_unknown_method_is_not_checked(self) -> None:
        assert protocol.parse_request(b'{"method": "NoSuchMethod", "args": [1]}').method == (
            "NoSuchMethod"
        )

    @pytest.mark.parametrize(
        ("frame", "fragment"),
        [
            (b'{"method": "\xff", "args": []}', "UTF-8"),
            (b"", "JSON"),
            (b"{", "JSON"),
            (b'{"method": "M", "args": []} trailing', "JSON"),
            (b'{"method": "M", "args": [NaN]}', "JSON"),
            (b'{"method": "M", "args": [Infinity]}', "JSON"),
            (b'{"method": "M", "args": [-Infinity]}', "JSON"),
            (b'{"method": "M", "args": [1e999]}', "JSON"),
            (b"[1, 2]", "object"),
            (b'"method"', "object"),
            (b"null", "object"),
            (b'{"args": []}', "method"),
            (b'{"method": 5, "args": []}', "method"),
            (b'{"method": null, "args": []}', "method"),
            (b'{"method": "M"}', "args"),
            (b'{"method": "M", "args": {"a": 1}}', "args"),
            (b'{"method": "M", "args": "x"}', "args"),
            (b'{"method": "M", "args": [], "version": "1"}', "version"),
            (b'{"method": "M", "args": [], "version": 1.5}', "version"),
            (b'{"method": "M", "args": [], "version": true}', "version"),
            (b'{"method": "M", "args": [], "version": null}', "version"),
        ],
    )
    def test_malformed_requests(self, frame: bytes, fragment: str) -> None:
        with pytest.raises(errors.LuxiError, match=fragment):
            protocol.parse_request(frame)

    def test_deep_nesting_is_a_luxi_error(self) -> None:
        depth = 200_000
        frame = b'{"method": "M", "args": ' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(errors.LuxiError, match="nested"):
            protocol.parse_request(frame)

    def test_nesting_is_limited_to_a_depth_no_later_code_can_trip_over(self) -> None:
        limit = protocol.MAX_REQUEST_NESTING
        # The message object itself and its args list are two levels.
        inner = limit - 2
        ok = b'{"method": "M", "args": ' + b"[" * inner + b"]" * inner + b"}"
        assert protocol.parse_request(ok).method == "M"
        deep = b'{"method": "M", "args": [{"a": ' + b"[" * inner + b"]" * inner + b"}]}"
        with pytest.raises(errors.LuxiError, match=f"nested deeper than {limit} levels"):
            protocol.parse_request(deep)

    @pytest.mark.parametrize(
        ("value", "depth"),
        [(1, 0), ([], 1), ({}, 1), ([1, [2, {"a": [3]}]], 4), ({"a": 1, "b": [[]]}, 3)],
    )
    def test_nesting_depth(self, value: Any, depth: int) -> None:
        assert protocol.nesting_depth(value, 64) == depth

    def test_nesting_depth_stops_past_the_limit(self) -> None:
        value: Any = []
        for _ in range(100_000):
            value = [value]
        assert protocol.nesting_depth(value, 10) == 11

    def test_huge_integer_is_a_luxi_error(self) -> None:
        with pytest.raises(errors.LuxiError):
            protocol.parse_request(b'{"method": "M", "args": [' + b"9" * 5000 + b"]}")


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["method", "args", "version", "x"]) | st.text(), children)
    ),
    max_leaves=20,
)


class TestParseRequestProperties:
    @settings(max_examples=300, deadline=None)
    @given(st.binary())
    def test_arbitrary_bytes(self, frame: bytes) -> None:
        try:
            request = protocol.parse_request(frame)
        except errors.LuxiError:
            return
        assert isinstance(request, Request)

    @settings(max_examples=300, deadline=None)
    @given(_json_values)
    def test_arbitrary_json_values(self, value: Any) -> None:
        try:
            request = protocol.parse_request(simplejson.dumps(value).encode())
        except errors.LuxiError:
            return
        assert isinstance(request.method, str)
        assert isinstance(request.args, list)
        assert request.version is None or type(request.version) is int

    @settings(max_examples=100, deadline=None)
    @given(st.text(), st.lists(_json_values, max_size=4), st.none() | st.integers())
    def test_encode_parse_round_trip(
        self, method: str, args: list[Any], version: int | None
    ) -> None:
        message = protocol.encode_request(method, args, version)
        assert message.count(EOM) == 1
        assert protocol.parse_request(_frame(message)) == Request(method, args, version)


class TestResponses:
    @pytest.mark.parametrize("success", [True, False])
    def test_round_trip(self, success: bool) -> None:
        message = protocol.encode_response(success, {"a": [1, None, "x"]})
        assert message.endswith(b"\n" + EOM)
        assert b"version" not in message
        assert protocol.parse_response(_frame(message)) == (success, {"a": [1, None, "x"]})

    def test_version_is_ignored(self) -> None:
        frame = b'{"success": true, "result": 3, "version": 99}'
        assert protocol.parse_response(frame) == (True, 3)

    @pytest.mark.parametrize(
        "frame",
        [
            b"[true, 1]",
            b'{"success": true}',
            b'{"result": 1}',
            b'{"success": 1, "result": 1}',
            b"{",
            b"\xfe",
        ],
    )
    def test_malformed_responses(self, frame: bytes) -> None:
        with pytest.raises(errors.LuxiError):
            protocol.parse_response(frame)

    def test_encode_refuses_nan(self) -> None:
        with pytest.raises(errors.LuxiError):
            protocol.encode_response(True, [float("nan")])


class TestFrameBuffer:
    def test_frame_split_across_chunks(self) -> None:
        buffer = FrameBuffer(100)
        assert buffer.feed(b'{"a":') == []
        assert buffer.pending_size == 5
        assert buffer.feed(b" 1}\n") == []
        assert buffer.feed(b"\x03{") == [b'{"a": 1}\n']
        assert buffer.pending_size == 1

    def test_one_byte_at_a_time(self) -> None:
        stream = b"".join(protocol.encode_request("M", [i]) for i in range(20))
        buffer = FrameBuffer(1000)
        frames: list[bytes] = []
        for index in range(len(stream)):
            frames.extend(buffer.feed(stream[index : index + 1]))
        assert [protocol.parse_request(frame).args for frame in frames] == [[i] for i in range(20)]
        assert buffer.pending_size == 0

    def test_several_frames_in_one_chunk(self) -> None:
        buffer = FrameBuffer(10)
        assert buffer.feed(b"a\x03bb\x03\x03ccc") == [b"a", b"bb", b""]
        assert buffer.feed(b"\x03") == [b"ccc"]

    def test_frame_of_exactly_max_size(self) -> None:
        assert FrameBuffer(4).feed(b"abcd\x03") == [b"abcd"]

    def test_oversized_complete_frame(self) -> None:
        buffer = FrameBuffer(4)
        with pytest.raises(errors.LuxiError, match="maximum size of 4 bytes"):
            buffer.feed(b"abcde\x03")

    def test_oversized_partial_frame(self) -> None:
        buffer = FrameBuffer(4)
        assert buffer.feed(b"ab") == []
        assert buffer.feed(b"cd") == []
        with pytest.raises(errors.LuxiError, match="maximum size of 4 bytes"):
            buffer.feed(b"e")
        assert buffer.pending_size == 0

    def test_large_frame_one_byte_at_a_time_is_fast(self) -> None:
        size = 100_000
        buffer = FrameBuffer(size)
        payload = b"y" * size
        for index in range(size):
            assert buffer.feed(payload[index : index + 1]) == []
        assert buffer.pending_size == size
        assert buffer.feed(EOM) == [payload]

    def test_large_stream_in_small_chunks_is_fast(self) -> None:
        size = 2_000_000
        buffer = FrameBuffer(size)
        payload = b"x" * size
        for offset in range(0, size, 1000):
            assert buffer.feed(payload[offset : offset + 1000]) == []
        assert buffer.feed(EOM) == [payload]


class TestCall:
    def test_success_returns_result(self) -> None:
        sent: list[bytes] = []

        def transport(message: bytes) -> bytes:
            sent.append(message)
            return protocol.encode_response(True, 42)

        assert protocol.call(transport, "SubmitJob", [[{"OP_ID": "OP_X"}]], 7) == 42
        assert protocol.parse_request(_frame(sent[0])) == Request(
            "SubmitJob", [[{"OP_ID": "OP_X"}]], 7
        )

    def test_frame_without_terminator_is_accepted(self) -> None:
        def transport(message: bytes) -> bytes:
            return _frame(protocol.encode_response(True, "ok"))

        assert protocol.call(transport, "M", []) == "ok"

    def test_encoded_error_is_raised_with_its_args(self) -> None:
        def transport(message: bytes) -> bytes:
            return protocol.encode_response(False, ["OpPrereqError", ["bad input", "wrong_input"]])

        with pytest.raises(errors.OpPrereqError) as info:
            protocol.call(transport, "SubmitJob", [[]])
        assert info.value.args == ("bad input", "wrong_input")

    def test_encoded_access_denied_keeps_ganeti_name(self) -> None:
        def transport(message: bytes) -> bytes:
            return protocol.encode_response(False, errors.encode_error(errors.AccessDenied("no")))

        with pytest.raises(errors.AccessDenied):
            protocol.call(transport, "SetDrainFlag", [True])

    @pytest.mark.parametrize(
        "result", [["NoSuchErrorClass", ["x"]], "Caught exception: boom", None, ["KeyError", ["k"]]]
    )
    def test_unknown_error_becomes_generic_error(self, result: Any) -> None:
        def transport(message: bytes) -> bytes:
            return protocol.encode_response(False, result)

        with pytest.raises(errors.GenericError) as info:
            protocol.call(transport, "M", [])
        assert type(info.value) is errors.GenericError

    def test_malformed_response_is_a_luxi_error(self) -> None:
        with pytest.raises(errors.LuxiError):
            protocol.call(lambda message: b'{"success": true}', "M", [])

    def test_transport_errors_propagate(self) -> None:
        def transport(message: bytes) -> bytes:
            raise errors.ConnectionClosed("gone")

        with pytest.raises(errors.ConnectionClosed):
            protocol.call(transport, "M", [])


class TestEncodeSuccess:
    @pytest.mark.parametrize(
        "result",
        [None, 17, "x", [[1, "a"], [2, "b"]], {"fields": [{"name": "id"}], "data": [[[0, 1]]]}],
    )
    def test_same_bytes_as_encode_response(self, result: Any) -> None:
        expected = protocol.encode_response(True, result)
        assert b"".join(protocol.encode_success(result, 10**6)) == expected

    def test_iterators_are_encoded_as_lists(self) -> None:
        rows = [[1, "queued"], [2, "error"]]
        answer = protocol.encode_success(iter(rows), 10**6)
        assert b"".join(answer) == protocol.encode_response(True, rows)
        query = {"fields": [{"name": "id"}], "data": iter([[[0, 1]], [[0, 2]]])}
        answer = protocol.encode_success(query, 10**6)
        expected = {"fields": [{"name": "id"}], "data": [[[0, 1]], [[0, 2]]]}
        assert b"".join(answer) == protocol.encode_response(True, expected)
        assert b"".join(protocol.encode_success(iter([]), 100)) == protocol.encode_response(
            True, []
        )

    def test_a_large_answer_comes_in_pieces(self) -> None:
        rows = [["x" * 1000] for _ in range(1000)]
        pieces = protocol.encode_success(iter(rows), 10**7)
        assert len(pieces) > 1
        assert max(len(piece) for piece in pieces) < protocol.ANSWER_CHUNK_SIZE + 2000
        assert b"".join(pieces) == protocol.encode_response(True, rows)

    def test_encoding_stops_at_the_limit(self) -> None:
        produced = []

        def rows() -> Any:
            for number in range(10**6):
                produced.append(number)
                yield ["x" * 100]

        with pytest.raises(errors.AnswerTooLarge, match="ask for fewer jobs or fewer fields"):
            protocol.encode_success(rows(), 10_000)
        assert len(produced) < 100  # stopped at the limit, not after building everything
        with pytest.raises(errors.AnswerTooLarge):
            protocol.encode_success(["x" * 20_000], 10_000)

    def test_unserialisable_values_are_a_luxi_error(self) -> None:
        with pytest.raises(errors.LuxiError):
            protocol.encode_success(iter([float("nan")]), 10_000)
