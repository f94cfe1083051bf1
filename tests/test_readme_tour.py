"""The README's five-minute tour, run line by line in bash against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.daemon_helper import Daemon, state_dir_under

README = Path(__file__).resolve().parent.parent / "README.rst"


def tour_script() -> str:
    """The shell block under "A five-minute tour", dedented."""
    text = README.read_text()
    section = text.split("A five-minute tour", 1)[1]
    block = section.split(".. code-block:: sh", 1)[1].split("\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


def raw_socket_script() -> str:
    """The ``python3 -c`` block that talks to the socket without socat, dedented."""
    text = README.read_text()
    block = text.split("with Python's standard library alone::", 1)[1].split("\n\n", 2)[1]
    return "\n".join(line[4:] for line in block.splitlines())


def test_readme_names_the_prerequisites() -> None:
    setup = README.read_text().split("Set-up\n======", 1)[1].split("A five-minute tour", 1)[0]
    for needed in ("Linux", "inotify", "peer credentials", "Python 3.11", "venv"):
        assert needed in setup


def test_raw_socket_example_without_socat(tmp_path: Path) -> None:
    script = raw_socket_script()
    assert script.startswith("python3 -c '") and "socat" not in script
    daemon = Daemon(state_dir_under(tmp_path)).start()
    workdir = daemon.state_dir.parent
    (workdir / "state").symlink_to(daemon.state_dir)
    try:
        result = subprocess.run(
            ["bash", "-c", script.replace("python3", sys.executable, 1)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        daemon.stop()
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["success"] is True and isinstance(answer["result"], int)


def test_tour_mentions_the_whole_story() -> None:
    script = tour_script()
    for step in (
        "--watch",
        "fanout",
        "--depends",
        "cancel --kill",
        "autoarchive",
        "drain",
        "queue pause",
        "--rate-limit",
        "--retries",
        "log",
    ):
        assert step in script


def test_tour_runs() -> None:
    # The tour runs in the checkout's directory: ./state and ./.venv/bin.
    workdir = Path(tempfile.mkdtemp(prefix="jqtour", dir="/tmp"))
    try:
        (workdir / ".venv").mkdir()
        (workdir / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
        daemon = Daemon(workdir / "state").start()
        try:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", tour_script()],
                cwd=workdir,
                env={**os.environ, "JOBQUEUE_STATE_DIR": ""},
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            daemon.stop()
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        out = result.stdout
        assert "Test delay iteration 3/3" in out
        assert os.uname().sysname in out  # the uname job's output, followed by watch
        assert out.count(os.uname().release) >= 2  # ... and printed again by log
        assert "the command exited with 3" in out
        assert "jobs" in out  # the fan-out's result lists the jobs it submitted
        assert "both canceled, as asked" in out
        assert "queued (paused by filter " in out
        assert "rate limited by filter " in out
        assert "The drain flag is set" in out
        assert "Archived" in out
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
