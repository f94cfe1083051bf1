"""The query language of Ganeti's query2: a filter as JSON lists, compiled to a predicate.

Pure and independent of what is queried: ``compile_filter`` takes a filter
and a ``resolve`` function that turns a field name into a getter (a value
from an item), and returns a predicate over items. Job queries use it with
job fields; job filters use it over opcodes and reason-trail entries.

The language (Ganeti's ``Query/Language.hs``)::

    ["&", f, ...]        every sub-filter holds (none given: true)
    ["|", f, ...]        some sub-filter holds (none given: false)
    ["!", f]             f does not hold
    ["?", field]         the field is true (a boolean field)
    ["==", field, v]     equal; "=" is the legacy spelling of the same
    ["!=", field, v]     not equal
    ["<", field, v]      also ">", "<=", ">="
    ["=~", field, re]    a regular expression matches somewhere in the value
    ["=[]", field, v]    a list-valued field contains v

Values are strings or integers (an integral JSON number such as ``2.0``
counts as 2; a fractional one is an error); a regular expression is a
string. Comparing a string with a number is an error, raised when an item
is evaluated, as Ganeti does. A field whose value is ``UNAVAILABLE`` (a job
that does not exist, a timestamp not set yet) passes every comparison: the
filter has no data to decide on (Ganeti's rule).

``=~`` searches a string value, or each string of a list of strings (the
job ``summary``, say: a jobqueue extension; Ganeti allows strings only).
Patterns are matched by RE2 (the ``google-re2`` binding), whose time is
linear in the text and which releases the interpreter lock while it
matches, so one pattern can neither stall the daemon nor backtrack for
ever. RE2's syntax is Perl's without backreferences and look-around; a
pattern it refuses, longer than ``MAX_PATTERN_LENGTH``, or whose compiled
program is too large (``MAX_PROGRAM_SIZE``, ``MAX_TOTAL_PROGRAM_SIZE`` for
all patterns of one filter) is an ``OpPrereqError`` naming the pattern.
Linear is not free: a search costs up to its program size times the text's
length. A search that would cost more than ``SEARCH_COST_LIMIT``, or one
made after a filter's searches have taken ``MATCH_TIME_LIMIT`` seconds in
all, raises an ``OpPrereqError`` naming its pattern instead.

A filter nested deeper than ``MAX_DEPTH`` levels is refused with an
``OpPrereqError`` before anything recurses, so no filter can reach Python's
recursion limit.
"""

from __future__ import annotations

import math
import reprlib
import time
from collections.abc import Callable
from typing import Any

import re2

from jobqueue.errors import ECODE_INVAL, OpPrereqError

#: Deepest nesting of sub-filters accepted (Ganeti's own tools send 3 levels).
MAX_DEPTH = 64
#: Longest regular expression accepted, in characters.
MAX_PATTERN_LENGTH = 1000
#: Largest compiled RE2 program of one pattern, and of all patterns of one filter.
MAX_PROGRAM_SIZE = 5000
MAX_TOTAL_PROGRAM_SIZE = 20_000
#: Memory one compiled pattern may use (RE2 falls back to a slower, still
#: linear matcher rather than exceed it).
PATTERN_MAX_MEMORY = 1 << 20
#: The most one search may cost: program size times text length. RE2's
#: slowest matcher took up to 35 ns per unit here, so about 3.5 s at most.
SEARCH_COST_LIMIT = 100_000_000
#: Seconds all searches of one filter may take together.
MATCH_TIME_LIMIT = 5.0

AND, OR, NOT, TRUE = "&", "|", "!", "?"
EQUAL, EQUAL_LEGACY, NOT_EQUAL = "==", "=", "!="
LT, GT, LE, GE = "<", ">", "<=", ">="
REGEXP, CONTAINS = "=~", "=[]"
BINARY_OPERATORS = frozenset({EQUAL, EQUAL_LEGACY, NOT_EQUAL, LT, GT, LE, GE, REGEXP, CONTAINS})


class _Unavailable:
    """The type of ``UNAVAILABLE``."""

    def __repr__(self) -> str:
        return "UNAVAILABLE"


#: What a getter returns when an item has no value for a field.
UNAVAILABLE: Any = _Unavailable()

Getter = Callable[[Any], Any]
#: Turns a field name into a getter; raises OpPrereqError for an unknown field.
Resolve = Callable[[str], Getter]
#: Adjusts the value a field is compared with: ``coerce(field, value)``.
Coerce = Callable[[str, int | str], int | str]
Predicate = Callable[[Any], bool]


def compile_filter(
    qfilter: Any,
    resolve: Resolve,
    coerce: Coerce | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Predicate:
    """A predicate over items for ``qfilter`` (None: every item).

    ``coerce``, if given, may convert each comparison value of a field
    (e.g. a job id sent as a string of digits). Raises ``OpPrereqError`` for
    a malformed filter, an unknown field (from ``resolve``), a bad value or
    pattern, or nesting deeper than ``MAX_DEPTH``. The predicate raises
    ``OpPrereqError`` when a value has the wrong type for its comparison or
    a search would cost too much (``clock`` times the searches).
    """
    if qfilter is None:
        return lambda item: True
    check_depth(qfilter)
    return _Compiler(resolve, coerce or _as_given, _Budget(clock)).build(qfilter)


def _as_given(field: str, value: int | str) -> int | str:
    return value


def check_depth(qfilter: Any, limit: int = MAX_DEPTH) -> None:
    """Raise ``OpPrereqError`` if lists nest deeper than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(qfilter, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise OpPrereqError(
                f"Filter nested deeper than {limit} levels; refusing it", ECODE_INVAL
            )
        if isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, list))


def requested_values(qfilter: Any, field: str) -> list[int | str] | None:
    """The values a filter asks ``field`` to equal, if that is all it asks; else None.

    ``["==", field, v]`` or an ``|`` of such filters (nested ``|`` too), as
    ``MakeSimpleFilter`` builds them (Ganeti's ``requestedNames``). None for
    any other filter, and for a filter naming no value at all.
    """
    found: list[int | str] = []
    stack = [qfilter]
    while stack:
        node = stack.pop()
        if not isinstance(node, list) or not node:
            return None
        if node[0] == OR:
            stack.extend(reversed(node[1:]))
        elif node[0] in (EQUAL, EQUAL_LEGACY) and len(node) == 3 and node[1] == field:
            try:
                found.append(filter_value(node[2]))
            except OpPrereqError:
                return None
        else:
            return None
    return found or None


def filter_value(value: Any) -> int | str:
    """A comparison value: a string or an integer; OpPrereqError for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        if value.is_integer():
            return int(value)
        raise OpPrereqError(
            f"Invalid filter value {value!r}: expecting an integer, got a fractional number",
            ECODE_INVAL,
        )
    raise OpPrereqError(
        f"Invalid filter value {_shown(value)}: expecting a string or an integer", ECODE_INVAL
    )


class _Compiler:
    """Builds the predicate of one filter; counts the size of its patterns."""

    def __init__(self, resolve: Resolve, coerce: Coerce, budget: _Budget) -> None:
        self._resolve = resolve
        self._coerce = coerce
        self._program_size = 0
        self._budget = budget

    def build(self, node: Any) -> Predicate:
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise OpPrereqError(
                f"Invalid filter {_shown(node)}: expected [operator, ...]", ECODE_INVAL
            )
        op, *args = node
        if op in (AND, OR):
            return _logic(op, [self.build(arg) for arg in args])
        if op == NOT and len(args) == 1:
            inner = self.build(args[0])
            return lambda item: not inner(item)
        if op == TRUE and len(args) == 1:
            return _is_true(args[0], self._field(args[0]))
        if op in BINARY_OPERATORS and len(args) == 2:
            return self._binary(op, args[0], args[1])
        raise OpPrereqError(
            f"Invalid filter operator {_shown(op)} with {len(args)} operands", ECODE_INVAL
        )

    def _field(self, name: Any) -> Getter:
        if not isinstance(name, str):
            raise OpPrereqError(
                f"Invalid field name {_shown(name)} in filter: expecting a string", ECODE_INVAL
            )
        return self._resolve(name)

    def _binary(self, op: str, name: Any, value: Any) -> Predicate:
        get = self._field(name)
        if op == REGEXP:
            return _matches(name, get, self._pattern(value))
        wanted = self._coerce(name, filter_value(value))
        if op == CONTAINS:
            return _contains(name, get, wanted)
        compare = _COMPARISONS[op]
        return _comparison(name, get, wanted, compare)

    def _pattern(self, pattern: Any) -> Callable[[str], bool]:
        """A search function that charges each search to the filter's budget."""
        if not isinstance(pattern, str):
            raise OpPrereqError(
                f"Invalid regular expression {_shown(pattern)}: expecting a string", ECODE_INVAL
            )
        search, size = compile_pattern(pattern)
        self._program_size += size
        if self._program_size > MAX_TOTAL_PROGRAM_SIZE:
            raise OpPrereqError(
                f"The regular expressions of this filter are too costly to match (up to"
                f" {_shown(pattern)}: {self._program_size} > {MAX_TOTAL_PROGRAM_SIZE}"
                " instructions); use fewer or simpler ones",
                ECODE_INVAL,
            )
        budget = self._budget
        return lambda text: budget.search(search, size, pattern, text)


class _Budget:
    """What one filter's searches may cost; see ``SEARCH_COST_LIMIT``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._spent = 0.0

    def search(self, search: Callable[[str], bool], size: int, pattern: str, text: str) -> bool:
        """``search(text)`` if affordable; else ``OpPrereqError`` naming ``pattern``."""
        if size * len(text) > SEARCH_COST_LIMIT or self._spent > MATCH_TIME_LIMIT:
            raise OpPrereqError(
                f"Regular expression {_shown(pattern)} would take too long to match"
                " over these values; use a simpler pattern or select fewer jobs",
                ECODE_INVAL,
            )
        start = self._clock()
        try:
            return search(text)
        finally:
            self._spent += self._clock() - start


def compile_pattern(pattern: str) -> tuple[Callable[[str], bool], int]:
    """A search function for ``pattern`` and the size of its program.

    Raises ``OpPrereqError`` naming the pattern if it is too long, refused
    by RE2, or too large once compiled.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise OpPrereqError(
            f"Regular expression {_shown(pattern)} is longer than {MAX_PATTERN_LENGTH} characters",
            ECODE_INVAL,
        )
    try:
        compiled = re2.compile(pattern, _PATTERN_OPTIONS)
    except re2.error as err:
        reason = err.args[0] if err.args else err
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise OpPrereqError(
            f"Invalid regular expression {_shown(pattern)}: {reason}", ECODE_INVAL
        ) from None
    size = int(compiled.programsize)
    if size > MAX_PROGRAM_SIZE:
        raise OpPrereqError(
            f"Regular expression {_shown(pattern)} is too costly to match"
            f" ({size} > {MAX_PROGRAM_SIZE} instructions)",
            ECODE_INVAL,
        )
    return (lambda text: compiled.search(text) is not None), size


def _pattern_options() -> Any:
    options = re2.Options()
    options.max_mem = PATTERN_MAX_MEMORY
    options.log_errors = False  # errors come back as exceptions; keep stderr clean
    options.never_capture = True  # we only ask whether it matches
    return options


_PATTERN_OPTIONS = _pattern_options()


# -- evaluation ----------------------------------------------------------------------
def _logic(op: str, parts: list[Predicate]) -> Predicate:
    if op == AND:
        return lambda item: all(part(item) for part in parts)
    return lambda item: any(part(item) for part in parts)


def _is_true(name: str, get: Getter) -> Predicate:
    def predicate(item: Any) -> bool:
        value = get(item)
        if value is UNAVAILABLE:
            return True
        if not isinstance(value, bool):
            raise OpPrereqError(
                f"Unexpected value {_shown(value)} of field {name!r} in boolean context",
                ECODE_INVAL,
            )
        return value

    return predicate


def _same_kind(actual: Any, wanted: int | str) -> bool:
    """Whether ``actual`` can be compared with ``wanted``: both strings, or both numbers."""
    if isinstance(wanted, str):
        return isinstance(actual, str)
    return isinstance(actual, (int, float)) and not isinstance(actual, bool)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    EQUAL: lambda a, b: bool(a == b),
    EQUAL_LEGACY: lambda a, b: bool(a == b),
    NOT_EQUAL: lambda a, b: bool(a != b),
    LT: lambda a, b: bool(a < b),
    GT: lambda a, b: bool(a > b),
    LE: lambda a, b: bool(a <= b),
    GE: lambda a, b: bool(a >= b),
}


def _comparison(
    name: str, get: Getter, wanted: int | str, compare: Callable[[Any, Any], bool]
) -> Predicate:
    def predicate(item: Any) -> bool:
        value = get(item)
        if value is UNAVAILABLE:
            return True
        if not _same_kind(value, wanted):
            raise OpPrereqError(
                f"Invalid types in comparison: field {name!r} is {_shown(value)},"
                f" compared with {_shown(wanted)}",
                ECODE_INVAL,
            )
        return compare(value, wanted)

    return predicate


def _contains(name: str, get: Getter, wanted: int | str) -> Predicate:
    def predicate(item: Any) -> bool:
        value = get(item)
        if value is UNAVAILABLE:
            return True
        if not isinstance(value, list):
            raise OpPrereqError(
                f"Field {name!r} is {_shown(value)}, not a list: it cannot contain anything",
                ECODE_INVAL,
            )
        return any(_same_kind(member, wanted) and member == wanted for member in value)

    return predicate


def _matches(name: str, get: Getter, search: Callable[[str], bool]) -> Predicate:
    def predicate(item: Any) -> bool:
        value = get(item)
        if value is UNAVAILABLE:
            return True
        if isinstance(value, str):
            return search(value)
        if isinstance(value, list) and all(isinstance(member, str) for member in value):
            return any(search(member) for member in value)
        raise OpPrereqError(
            f"Invalid value {_shown(value)} of field {name!r} for a regular expression:"
            " expecting a string",
            ECODE_INVAL,
        )

    return predicate


def _shown(value: Any) -> str:
    """A short ``repr`` of a value for an error message; never recurses deeply."""
    return _SHORT_REPR.repr(value)


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxstring = short.maxother = 80
    short.maxlist = short.maxdict = 6
    return short


_SHORT_REPR = _short_repr()
