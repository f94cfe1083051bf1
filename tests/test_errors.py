"""Errors cross the wire as [ClassName, [args]] through an explicit allow-list."""

from __future__ import annotations

import pytest
import simplejson

import jobqueue
from jobqueue import errors
from jobqueue.paths import StatePaths, default_state_dir


@pytest.mark.parametrize(
    ("exc", "wire"),
    [
        (errors.OpPrereqError("bad", "wrong_input"), ["OpPrereqError", ["bad", "wrong_input"]]),
        (errors.OpExecError("boom"), ["OpExecError", ["boom"]]),
        (errors.JobQueueDrainError("drained"), ["JobQueueDrainError", ["drained"]]),
        (errors.JobQueueFull(), ["JobQueueFull", []]),
        (errors.JobLost("Job 4 lost"), ["JobLost", ["Job 4 lost"]]),
        (errors.AccessDenied("read-only"), ["PermissionError", ["read-only"]]),
    ],
)
def test_round_trip(exc: errors.GenericError, wire: list[object]) -> None:
    encoded = errors.encode_error(exc)
    assert encoded == wire
    decoded = errors.decode_error(simplejson.loads(simplejson.dumps(encoded)))
    assert type(decoded) is type(exc) and decoded.args == exc.args


def test_foreign_exceptions_never_leak_their_class() -> None:
    assert errors.encode_error(KeyError("x")) == ["GenericError", ["KeyError: 'x'"]]
    assert errors.encode_error(PermissionError("no")) == ["GenericError", ["PermissionError: no"]]


def test_subclass_outside_allow_list_encodes_as_nearest_known_parent() -> None:
    class Custom(errors.OpExecError):
        pass

    assert errors.encode_error(Custom("x")) == ["OpExecError", ["x"]]


def test_unserialisable_args_become_text() -> None:
    encoded = errors.encode_error(errors.OpExecError(("a", 1), object))
    assert encoded[1][0] == ["a", 1] and isinstance(encoded[1][1], str)


def test_floats_json_cannot_hold_become_text() -> None:
    encoded = errors.encode_error(errors.OpExecError("x", float("nan"), [float("-inf"), 1.5]))
    assert encoded == ["OpExecError", ["x", "nan", ["-inf", 1.5]]]


@pytest.mark.parametrize(
    "value",
    [None, "text", ["NoSuchClass", []], ["OpExecError"], ["OpExecError", "x"], 5, ["KeyError", []]],
)
def test_decoding_never_fails(value: object) -> None:
    assert isinstance(errors.decode_error(value), errors.GenericError)


def test_decoding_wrong_arity_keeps_the_class() -> None:
    decoded = errors.decode_error(["OpPrereqError", ["a", "b", "c"]])
    assert isinstance(decoded, errors.OpPrereqError) and str(decoded) == "a"


def test_no_builtin_names_shadowed() -> None:
    for name in dir(errors):
        if isinstance(getattr(errors, name), type):
            assert not hasattr(__builtins__, name) or name in {"Any"}, name


def test_public_surface() -> None:
    assert set(jobqueue.__all__) <= set(dir(jobqueue))


def test_state_dir_resolution() -> None:
    env = {"JOBQUEUE_STATE_DIR": "/srv/jq", "HOME": "/home/u"}
    assert default_state_dir(env, euid=1000) == "/srv/jq"
    assert default_state_dir({"HOME": "/home/u"}, euid=0) == "/var/lib/jobqueue"
    assert default_state_dir({"HOME": "/home/u"}, euid=1000) == "/home/u/.local/state/jobqueue"
    assert default_state_dir({"HOME": "/h", "XDG_STATE_HOME": "/x"}, euid=5) == "/x/jobqueue"
    paths = StatePaths("/s")
    assert paths.master_socket == "/s/run/master.sock"
    assert paths.queue_dir == "/s/queue"
