"""Hostile input the fuzzer (``tests/soak/test_hostile_storm.py``) and its probes found.

Each message once made the daemon fail with an unexpected exception (a
``GenericError`` answer and a logged traceback) or accept a job that could
only fail later. Each must now get a typed error at once, create no job and
log no error.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest

from tests.daemon_helper import Daemon, raw_exchange, read_response, request
from tests.luxi_samples import VALID_CALLS, WRONG_VALUES
from tests.queue_files import job_paths

BIG = "1" + "0" * 400  # parses as an int, too large for a float or a file name
DIGITS = "1" * 5000  # more digits than int() converts


def _submit(op: str) -> str:
    return '{"method": "SubmitJob", "args": [[' + op + "]]}"


CASES: list[tuple[str, str, Any]] = [
    (
        "a timeout too large for a float",
        '{"method": "AutoArchiveJobs", "args": [3600, ' + BIG + "]}",
        ("LuxiError", "argument 2 (timeout) must be a number"),
    ),
    (
        "a job id too long for a file name (WaitForJobChange)",
        '{"method": "WaitForJobChange", "args": [' + BIG + ', ["status"], null, null, 0]}',
        ("JobLost", "not found"),
    ),
    (
        "a job id too long for a file name (QueryJobs)",
        '{"method": "QueryJobs", "args": [[' + BIG + '], ["id", "status", "oplog"]]}',
        [[int(BIG), None, None]],  # no such job: its id, and nulls
    ),
    (
        "a job id too long for a file name (Query)",
        '{"method": "Query", "args": ["job", ["id"], ["=", "id", ' + BIG + "]]}",
        {
            "fields": [{"name": "id", "title": "ID", "kind": "number", "doc": "Job ID"}],
            "data": [[[0, int(BIG)]]],  # no such job: only its id is known
        },
    ),
    (
        "a delay no thread can wait for",
        _submit('{"OP_ID": "OP_TEST_DELAY", "duration": 1e308}'),
        ("OpPrereqError", "must be a number of seconds"),
    ),
    (
        "a delay too large for a float",
        _submit('{"OP_ID": "OP_TEST_DELAY", "duration": ' + BIG + "}"),
        ("OpPrereqError", "must be a number of seconds"),
    ),
    (
        "a dependency id of non-ASCII digits",
        _submit('{"OP_ID": "OP_TEST_DELAY", "duration": 0, "depends": [["\\u00b2", []]]}'),
        ("OpPrereqError", "depends"),
    ),
    (
        "a dependency id of 5000 digits",
        _submit(
            '{"OP_ID": "OP_TEST_DELAY", "duration": 0, "depends": [["' + "1" * 5000 + '", []]]}'
        ),
        ("OpPrereqError", "depends"),
    ),
    (
        "a NUL in a command argument",
        _submit('{"OP_ID": "OP_COMMAND_RUN", "argv": ["tr\\u0000ue"]}'),
        ("OpPrereqError", "OP_COMMAND_RUN.argv"),
    ),
    (
        "a lone surrogate in a command argument",
        _submit('{"OP_ID": "OP_COMMAND_RUN", "argv": ["true", "\\ud800"]}'),
        ("OpPrereqError", "OP_COMMAND_RUN.argv"),
    ),
    (
        "a NUL in an environment name",
        _submit('{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "env": {"A\\u0000": "b"}}'),
        ("OpPrereqError", "OP_COMMAND_RUN.env"),
    ),
    (
        "an '=' in an environment name",
        _submit('{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "env": {"A=B": "b"}}'),
        ("OpPrereqError", "OP_COMMAND_RUN.env"),
    ),
    (
        "a NUL in the working directory",
        _submit('{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "cwd": "work\\u0000dir"}'),
        ("OpPrereqError", "OP_COMMAND_RUN.cwd"),
    ),
    (
        "a NUL in a fan-out item",
        _submit('{"OP_ID": "OP_COMMAND_FANOUT", "argv": ["echo", "{item}"], "items": ["\\u0000"]}'),
        ("OpPrereqError", "OP_COMMAND_FANOUT.items"),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_found_by_the_fuzzer(daemon: Daemon, text: str, expected: Any) -> None:
    log_start = len(daemon.log())
    answer = raw_exchange(daemon.paths.master_socket, text.encode() + b"\x03")
    if isinstance(expected, tuple):
        error_class, words = expected
        assert answer["success"] is False, answer
        assert answer["result"][0] == error_class, answer
        assert words in str(answer["result"][1][0]), answer
    else:
        assert answer == {"success": True, "result": expected}
    assert job_paths(daemon.state_dir / "queue") == {}
    assert daemon.client().query_config_values(["drain_flag"]) == [False]
    assert _errors_logged(daemon, log_start) == []


def _errors_logged(daemon: Daemon, start: int) -> list[str]:
    """ERROR and CRITICAL lines of the daemon's log since offset ``start``."""
    lines = daemon.log()[start:].splitlines()
    return [line for line in lines if re.search(r" (ERROR|CRITICAL) ", line)]


def test_wrong_types_in_every_argument_position(daemon: Daemon) -> None:
    """Each argument of each method, and one too many, replaced by values of every type.

    All on one connection: each frame gets one well-formed answer, never the
    catch-all of an unexpected exception, and the connection stays usable.
    """
    log_start = len(daemon.log())
    sent = 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(daemon.paths.master_socket)
        for method, valid in VALID_CALLS.items():
            for position in range(len(valid) + 1):
                for value in WRONG_VALUES:
                    args = [*valid, value] if position == len(valid) else list(valid)
                    args[position] = value
                    sock.sendall(request(method, *args))
                    answer = read_response(sock)
                    sent += 1
                    assert set(answer) == {"success", "result"}, (method, args, answer)
                    if not answer["success"]:
                        assert answer["result"][0] != "GenericError", (method, args, answer)
        sock.sendall(request("QueryConfigValues", ["version"]))
        assert read_response(sock)["success"] is True
    assert sent > 300
    assert _errors_logged(daemon, log_start) == []
