"""Third-party opcodes: the example plugin loaded by the real daemon."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from jobqueue import errors
from tests.daemon_helper import Daemon

EXAMPLES = Path(__file__).resolve().parent.parent / "doc" / "examples" / "plugin"


def test_example_plugin_runs(
    daemon_factory: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{EXAMPLES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    daemon = daemon_factory("--plugin", "jobqueue_example_plugin").start()
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


def test_broken_plugin_stops_the_daemon_with_a_clear_message(
    daemon_factory: Callable[..., Daemon],
) -> None:
    import subprocess

    daemon = daemon_factory("--plugin", "no_such_module_xyz")
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Cannot load opcode plugin (module no_such_module_xyz)" in result.stderr
