"""LUXI messages and framing as pure functions: no sockets, no threads.

A message on the wire is one JSON document, a newline and the terminator
byte ``constants.LUXI_EOM`` (ETX, which cannot occur in JSON text).

A request is ``{"method": str, "args": list[, "version": int]}``; a
response is ``{"success": bool, "result": any}``. A failed call carries an
encoded error (``[ClassName, [args...]]``, see ``jobqueue.errors``) as its
result. Every parse failure is a ``LuxiError``, whatever the input bytes.

Start-up speed: the wire uses the stdlib ``json`` (C-accelerated like
simplejson, but cheaper to import: simplejson pulls in ``decimal``), so
``jobctl`` starts faster; job files keep simplejson. ``typing`` is imported
for the type checker only.
"""

from __future__ import annotations

import json
import math
from collections import namedtuple
from collections.abc import Callable, Iterator

from jobqueue import constants, errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple, NoReturn

KEY_METHOD = "method"
KEY_ARGS = "args"
KEY_VERSION = "version"
KEY_SUCCESS = "success"
KEY_RESULT = "result"
#: Deepest nesting of lists and objects a request may have: below the depth
#: at which parsing it would reach Python's recursion limit, so every deeper
#: request is the same typed error, and no deeper value reaches any code. The
#: arguments have tighter bounds of their own, with their own errors (64
#: levels for an opcode's values and for a query filter).
MAX_REQUEST_NESTING = 800


# One parsed request; ``version`` is None when the client sent none. A named
# tuple rather than a dataclass: ``dataclasses`` imports ``inspect``, which
# alone would add a third to ``jobctl``'s start-up time.
if TYPE_CHECKING:

    class Request(NamedTuple):
        method: str
        args: list[Any]
        version: int | None

else:
    Request = namedtuple("Request", ("method", "args", "version"))


class NotPlainJSON(ValueError):
    """JSON text Python's parser takes but plain JSON has not: NaN, Infinity, 1e999."""


def _finite_float(text: str) -> float:
    """Parse a JSON number; refuse ones that overflow to infinity (``1e999``)."""
    value = float(text)
    if not math.isfinite(value):
        raise NotPlainJSON(f"Number {text[:40]} is out of range")
    return value


def _refuse_constant(name: str) -> NoReturn:
    """Refuse the ``NaN``, ``Infinity`` and ``-Infinity`` literals."""
    raise NotPlainJSON(f"{name} is not allowed")


def loads_plain(text: str | bytes) -> Any:
    """Decode JSON text; ``NotPlainJSON`` (a ValueError) for NaN, Infinity and numbers
    that overflow, ValueError for the rest that is not JSON."""
    return json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)


#: One encoder for every message and answer row: ``json.dumps`` with an
#: argument builds a new one per call, which was a third of encoding a
#: QueryJobs row.
_ENCODER = json.JSONEncoder(allow_nan=False)


def _json_dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _json_loads(text: str) -> Any:
    """Decode JSON text, refusing NaN/Infinity and numbers that overflow."""
    # Skip one leading byte order mark (or its Latin-1 reading), as simplejson did.
    if text.startswith("\ufeff"):
        text = text[1:]
    elif text.startswith("\xef\xbb\xbf"):
        text = text[3:]
    return loads_plain(text)


def _dumps(value: Any) -> bytes:
    """Serialise ``value`` as a terminated message.

    Raises LuxiError for NaN/Infinity, unserialisable or too deeply nested
    values, so nothing that a strict peer would reject ever leaves.
    """
    try:
        text = _json_dumps(value)
    except (ValueError, TypeError, RecursionError) as err:
        raise errors.LuxiError(f"Cannot serialise message: {err}") from None
    return text.encode("ascii") + b"\n" + constants.LUXI_EOM


def _loads(frame: bytes, what: str) -> Any:
    """Decode one frame (terminator already stripped) into a JSON value.

    Raises LuxiError for invalid UTF-8, invalid JSON (including NaN and
    Infinity literals and numbers out of range) and excessive nesting.
    """
    try:
        text = frame.strip().decode("utf-8")
    except UnicodeDecodeError as err:
        raise errors.LuxiError(f"Invalid {what}: not valid UTF-8 ({err.reason})") from None
    try:
        return _json_loads(text)
    except RecursionError:
        raise errors.LuxiError(f"Invalid {what}: JSON nested too deeply") from None
    except ValueError as err:
        raise errors.LuxiError(f"Invalid {what}: not valid JSON ({err})") from None


def nesting_depth(value: Any, limit: int) -> int:
    """The nesting depth of lists and objects in ``value`` (a scalar is 0), at most ``limit + 1``.

    Iterative, so any depth is measured without recursion; it stops as soon
    as ``limit`` is exceeded.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, list | dict) else []
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, list | dict):
                stack.append((child, depth + 1))
    return deepest


def encode_request(method: str, args: list[Any], version: int | None = None) -> bytes:
    """Build a terminated request message; ``version`` is left out when None.

    Raises LuxiError if the arguments cannot be serialised (NaN, Infinity,
    objects JSON does not know).
    """
    message: dict[str, Any] = {KEY_METHOD: method, KEY_ARGS: args}
    if version is not None:
        message[KEY_VERSION] = version
    return _dumps(message)


def parse_request(frame: bytes) -> Request:
    """Parse one request frame (without its terminator).

    Whether the method exists is the server's business, not checked here.
    Raises LuxiError, and nothing else, for any malformed input, including
    lists and objects nested deeper than ``MAX_REQUEST_NESTING``.
    """
    message = _loads(frame, "request")
    if not isinstance(message, dict):
        raise errors.LuxiError("Invalid request: not a JSON object")
    if nesting_depth(message, MAX_REQUEST_NESTING) > MAX_REQUEST_NESTING:
        raise errors.LuxiError(
            f"Invalid request: lists and objects nested deeper than {MAX_REQUEST_NESTING} levels"
        )
    method = message.get(KEY_METHOD)
    if not isinstance(method, str):
        raise errors.LuxiError("Invalid request: 'method' is missing or not a string")
    args = message.get(KEY_ARGS)
    if not isinstance(args, list):
        raise errors.LuxiError("Invalid request: 'args' is missing or not a list")
    version = message.get(KEY_VERSION)
    if KEY_VERSION in message and (not isinstance(version, int) or isinstance(version, bool)):
        raise errors.LuxiError("Invalid request: 'version' is not an integer")
    return Request(method=method, args=args, version=version)


def encode_response(success: bool, result: Any) -> bytes:
    """Build a terminated response message (never with a version).

    Raises LuxiError if ``result`` cannot be serialised.
    """
    return _dumps({KEY_SUCCESS: success, KEY_RESULT: result})


#: Target size of the pieces a streamed answer is cut into.
ANSWER_CHUNK_SIZE = 256 * 1024


def encode_success(result: Any, limit: int) -> list[bytes]:
    """The terminated success answer carrying ``result``, in pieces, at most ``limit`` bytes.

    A result that is an iterator (a generator of rows), or a dict with
    iterator values (Query's ``data``), is encoded item by item, so the
    items need not all exist at once, and encoding stops as soon as the
    answer passes ``limit``: no answer larger than that is ever built
    whole. Raises ``AnswerTooLarge`` past ``limit``, LuxiError for values
    that cannot be serialised; whatever producing an item raises propagates.
    """
    writer = _CappedWriter(limit)
    writer.add(b'{"' + KEY_SUCCESS.encode() + b'": true, "' + KEY_RESULT.encode() + b'": ')
    _encode_value(result, writer)
    writer.add(b"}\n" + constants.LUXI_EOM)
    return writer.finish()


def _encode_value(value: Any, writer: _CappedWriter) -> None:
    if isinstance(value, Iterator):
        writer.add(b"[")
        last_item, last_part = None, b""
        for number, item in enumerate(value):
            if number == 0 or item is not last_item:  # the same object again: same bytes
                last_item, last_part = item, _dump_part(item)
            writer.add(b", " + last_part if number else last_part)
        writer.add(b"]")
    elif isinstance(value, dict) and any(isinstance(item, Iterator) for item in value.values()):
        writer.add(b"{")
        for number, (key, item) in enumerate(value.items()):
            writer.add((b", " if number else b"") + _dump_part(str(key)) + b": ")
            _encode_value(item, writer)
        writer.add(b"}")
    else:
        writer.add(_dump_part(value))


def _dump_part(value: Any) -> bytes:
    try:
        return _json_dumps(value).encode("ascii")
    except (ValueError, TypeError, RecursionError) as err:
        raise errors.LuxiError(f"Cannot serialise message: {err}") from None


class _CappedWriter:
    """Collects encoded pieces into chunks of about ``ANSWER_CHUNK_SIZE``, up to ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self._pieces: list[bytes] = []
        self._pending = 0

    def add(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._size > self._limit:
            raise errors.AnswerTooLarge(
                f"The answer is larger than the daemon sends ({self._limit} bytes); "
                "ask for fewer jobs or fewer fields"
            )
        self._pieces.append(piece)
        self._pending += len(piece)
        if self._pending >= ANSWER_CHUNK_SIZE:
            self._cut()

    def _cut(self) -> None:
        self._chunks.append(b"".join(self._pieces))
        self._pieces.clear()
        self._pending = 0

    def finish(self) -> list[bytes]:
        if self._pieces:
            self._cut()
        return self._chunks


def parse_response(frame: bytes) -> tuple[bool, Any]:
    """Parse one response frame (without its terminator) into (success, result).

    A ``version`` key, if any, is ignored. Raises LuxiError unless the frame
    is an object with a boolean ``success`` and a ``result``.
    """
    message = _loads(frame, "response")
    if not isinstance(message, dict):
        raise errors.LuxiError("Invalid response from server: not a JSON object")
    for key in (KEY_SUCCESS, KEY_RESULT):
        if key not in message:
            raise errors.LuxiError(f"Invalid response from server: no '{key}' key")
    success = message[KEY_SUCCESS]
    if not isinstance(success, bool):
        raise errors.LuxiError("Invalid response from server: 'success' is not a boolean")
    return success, message[KEY_RESULT]


class FrameBuffer:
    """Split a byte stream into terminator-delimited frames.

    Work is linear in the bytes fed: each chunk is scanned once and the
    partial tail is kept as a list of pieces, joined only when its frame
    completes. After a ``LuxiError`` the stream is out of step and the
    connection should be closed; the buffer is left empty.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise errors.ProgrammerError(f"max_size must be positive, got {max_size}")
        self._max_size = max_size
        self._pieces: list[bytes] = []
        self._pending_size = 0

    @property
    def pending_size(self) -> int:
        """Number of bytes held of a frame whose terminator has not arrived."""
        return self._pending_size

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the frames it completed, terminators stripped.

        Raises LuxiError if a frame, complete or still partial, is longer
        than ``max_size`` bytes.
        """
        frames: list[bytes] = []
        start = 0
        while (end := data.find(constants.LUXI_EOM, start)) >= 0:
            self._append(data[start:end])
            frames.append(b"".join(self._pieces))
            self._pieces.clear()
            self._pending_size = 0
            start = end + len(constants.LUXI_EOM)
        if start < len(data):
            self._append(data[start:])
        return frames

    def _append(self, piece: bytes) -> None:
        """Add ``piece`` to the pending frame, enforcing the size limit."""
        if self._pending_size + len(piece) > self._max_size:
            self._pieces.clear()
            self._pending_size = 0
            raise errors.LuxiError(f"Message exceeds the maximum size of {self._max_size} bytes")
        self._pieces.append(piece)
        self._pending_size += len(piece)


def call(
    send_and_receive: Callable[[bytes], bytes],
    method: str,
    args: list[Any],
    version: int | None = None,
) -> Any:
    """Make one LUXI call over ``send_and_receive`` and return its result.

    ``send_and_receive`` gets a terminated request and returns the response
    frame (a trailing terminator is tolerated), so a plain function can
    stand in for a socket. A failed call raises the decoded error (an
    unknown class name becomes ``GenericError``); a malformed response and
    whatever the transport raises propagate unchanged.
    """
    reply = send_and_receive(encode_request(method, args, version))
    success, result = parse_response(reply.removesuffix(constants.LUXI_EOM))
    if not success:
        raise errors.decode_error(result)
    return result
