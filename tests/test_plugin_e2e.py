"""Third-party opcodes: the example plugin loaded by the real daemon."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from jobqueue import constants, errors
from tests.daemon_helper import Daemon
from tests.queue_files import read_job

EXAMPLES = Path(__file__).resolve().parent.parent / "doc" / "examples" / "plugin"


def start_with_plugin(
    daemon_factory: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
    directory: Path,
    module: str,
) -> Daemon:
    """A started daemon that loads the opcode plugin ``module`` from ``directory``."""
    monkeypatch.setenv("PYTHONPATH", f"{directory}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return daemon_factory("--plugin", module).start()


def test_example_plugin_runs(
    daemon_factory: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = start_with_plugin(daemon_factory, monkeypatch, EXAMPLES, "jobqueue_example_plugin")
    client = daemon.client()
    job_id = client.submit_job([{"OP_ID": "OP_EXAMPLE_GREET", "name": "ops", "times": 2}])
    assert daemon.wait_job(job_id) == "success"
    (row,) = client.query_jobs([job_id], ["opresult", "oplog", "summary"])
    assert row[0] == ["Hello, ops!"]
    assert [entry[3] for entry in row[1][0]] == ["Hello, ops!"] * 2
    assert row[2] == ["EXAMPLE_GREET(ops)"]
    with pytest.raises(errors.OpPrereqError, match=r"OP_EXAMPLE_GREET\.name"):
        client.submit_job([{"OP_ID": "OP_EXAMPLE_GREET"}])
    assert "Plugin opcodes: OP_EXAMPLE_GREET" in daemon.log()


#: The plugin style documented before opcodes were typed records: a ``PARAMS``
#: tuple of ``Param`` and an LU reading ``self.op`` untyped. It must keep working.
PARAMS_STYLE_PLUGIN = """
from jobqueue.lus.base import LogicalUnit
from jobqueue.opcodes import NON_EMPTY_STRING, NON_NEGATIVE_INT, OpCode, Param, list_of


class OpOldGreet(OpCode):
    OP_ID = "OP_OLD_GREET"
    SUMMARY_FIELD = "name"
    PARAMS = (
        Param("name", NON_EMPTY_STRING, required=True, doc="Whom to greet"),
        Param("times", NON_NEGATIVE_INT, default=1, doc="How often"),
        Param("also", list_of(NON_EMPTY_STRING), default=[], doc="Others greeted"),
    )


class LUOldGreet(LogicalUnit):
    def locks(self):
        return [f"person:{self.op.name}"], []

    def exec(self):
        everyone = [self.op.name] + self.op.also  # a list, as before
        greeting = "Hello, " + " and ".join(everyone) + "!"
        for _ in range(self.op.times):
            self.ctx.log(greeting)
        return greeting


def opcode_pairs():
    return [(OpOldGreet, LUOldGreet)]
"""


def test_params_style_plugin_still_runs(
    daemon_factory: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "jq_old_style_plugin.py").write_text(PARAMS_STYLE_PLUGIN)
    daemon = start_with_plugin(daemon_factory, monkeypatch, tmp_path, "jq_old_style_plugin")
    client = daemon.client()
    op = {"OP_ID": "OP_OLD_GREET", "name": "ops", "times": 2, "also": ["devs"]}
    job_id = client.submit_job([op])
    assert daemon.wait_job(job_id) == "success"
    (row,) = client.query_jobs([job_id], ["opresult", "oplog", "summary", "ops"])
    assert row[0] == ["Hello, ops and devs!"]
    assert [entry[3] for entry in row[1][0]] == ["Hello, ops and devs!"] * 2
    assert row[2] == ["OLD_GREET(ops)"]
    assert {key: row[3][0][key] for key in op} == op
    with pytest.raises(errors.OpPrereqError, match=r"OP_OLD_GREET\.times"):
        client.submit_job([{"OP_ID": "OP_OLD_GREET", "name": "x", "times": -1}])


def test_broken_plugin_stops_the_daemon_with_a_clear_message(
    daemon_factory: Callable[..., Daemon],
) -> None:
    import subprocess

    daemon = daemon_factory("--plugin", "no_such_module_xyz")
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Cannot load opcode plugin (module no_such_module_xyz)" in result.stderr


#: A plugin whose LU returns, or logs, what a job file cannot hold as JSON.
UNSTORABLE_PLUGIN = """
import uuid
from jobqueue.lus.base import LogicalUnit
from jobqueue.opcodes import NON_EMPTY_STRING, OpCode, Param

VALUES = {"set": {1, 2}, "bytes": b"raw", "object": object(), "uuid": uuid.UUID(int=1)}


class OpOdd(OpCode):
    OP_ID = "OP_ODD"
    PARAMS = (
        Param("kind", NON_EMPTY_STRING, required=True, doc="What to return"),
        Param("logged", NON_EMPTY_STRING, default="result", doc="result or log"),
    )


class LUOdd(LogicalUnit):
    def locks(self):
        return [], []

    def exec(self):
        if self.op.logged == "log":
            self.ctx.log(["fine", VALUES[self.op.kind]])
        return VALUES[self.op.kind]


def opcode_pairs():
    return [(OpOdd, LUOdd)]
"""


def test_results_and_logs_a_job_cannot_store_end_the_job_in_error(
    daemon_factory: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Before: the job's write raised TypeError in its worker, and the job stayed
    # "running" until the daemon restarted.
    (tmp_path / "jq_unstorable_plugin.py").write_text(UNSTORABLE_PLUGIN)
    daemon = start_with_plugin(daemon_factory, monkeypatch, tmp_path, "jq_unstorable_plugin")
    client = daemon.client()
    cases = {
        ("set", "result"): "The opcode's result cannot be stored: result is of type set",
        ("object", "result"): "The opcode's result cannot be stored: result is of type object",
        ("uuid", "result"): "The opcode's result cannot be stored: result is of type UUID",
        ("bytes", "log"): "A log entry cannot be stored: log message[1] is of type bytes",
    }
    for (kind, logged), message in cases.items():
        job_id = client.submit_job([{"OP_ID": "OP_ODD", "kind": kind, "logged": logged}])
        assert daemon.wait_job(job_id) == "error"
        (row,) = client.query_jobs([job_id], ["opresult", "oplog"])
        assert row == [[["OpExecError", [message]]], [[]]]
        stored = read_job(daemon.state_dir / "queue" / f"job-{job_id}")
        assert stored.ops[0].result == ["OpExecError", [message]]
    assert "returned what no job can store: result is of type set" in daemon.log()
    # It ran to its end: a retry policy does not run it again.
    op = {"OP_ID": "OP_ODD", "kind": "set"}
    job_id = client.submit_job([op], options={"retries": 2})
    assert daemon.wait_job(job_id) == "error"
    (row,) = client.query_jobs([job_id], ["opresult", "oplog", "attempts"])
    assert row[0] == [["OpExecError", [cases[("set", "result")]]]]
    assert [entry[3] for entry in row[1][0]] == [constants.MSG_NOT_RETRIED]
    assert row[2] == []
    assert daemon.log().count("returned what no job can store: result is of type set") == 2
