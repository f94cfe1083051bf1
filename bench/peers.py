"""Section 3, the peers: the same no-op jobs through Huey-SQLite, RQ+Redis, task-spooler.

Each peer runs as a script under ``bench/peers/`` in a subprocess of its own
session, with the interpreter of ``.venv-bench`` where it needs a package
(huey, rq) so the project's virtualenv stays clean. The script measures from
its first submission to its last completion and prints one JSON line. This
module bounds it with a timeout, kills its whole process group afterwards
(Redis, RQ workers) and stops a task-spooler server it may have left, so a
failed peer leaves nothing running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Context, Row, median, skipped

SECTION = "3 e2e"
SCRIPTS = Path(__file__).resolve().parent / "peers"
BENCH_VENV = REPO_ROOT / ".venv-bench"
#: The RQ worker class the comparison uses: "simple" runs jobs inside the
#: worker process (like our worker threads); "fork" is RQ's default, a fork
#: per job, and about ten times slower here.
RQ_WORKER_CLASS = "simple"


def bench_python() -> Path | None:
    """Return the benchmark virtualenv's interpreter, or None when it is missing."""
    python = BENCH_VENV / "bin" / "python"
    return python if python.exists() else None


def tsp_command() -> str | None:
    """Return task-spooler's client command (Debian's ``tsp`` or upstream ``ts``)."""
    for name in ("tsp", "ts"):
        path = shutil.which(name)
        if path and subprocess.run([path, "-V"], capture_output=True, check=False).returncode == 0:
            return path
    return None


def _needs_venv(*modules: str) -> Callable[[], tuple[str | None, str]]:
    """Availability check: the bench venv exists and imports ``modules``."""

    def check() -> tuple[str | None, str]:
        python = bench_python()
        if python is None:
            return None, f"{BENCH_VENV.name} missing (run bench/setup_peers.sh)"
        probe = subprocess.run(
            [str(python), "-c", "import " + ", ".join(modules)],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            return None, f"cannot import {', '.join(modules)} in {BENCH_VENV.name}"
        return str(python), ""

    return check


def _check_rq() -> tuple[str | None, str]:
    if shutil.which("redis-server") is None:
        return None, "redis-server not installed"
    return _needs_venv("rq", "redis")()


def _check_tsp() -> tuple[str | None, str]:
    if tsp_command() is None:
        return None, "task-spooler (tsp/ts) not installed"
    return sys.executable, ""


@dataclasses.dataclass(frozen=True)
class Peer:
    """A peer queue: its name, script, extra arguments and availability check.

    ``check`` returns (interpreter to run the script with, "") or (None, reason).
    """

    name: str
    script: str
    check: Callable[[], tuple[str | None, str]]
    extra_args: tuple[str, ...] = ()


PEERS = (
    Peer("huey-sqlite", "huey_noop.py", _needs_venv("huey")),
    Peer("rq-redis", "rq_noop.py", _check_rq, ("--worker-class", RQ_WORKER_CLASS)),
    Peer("task-spooler", "tsp_noop.py", _check_tsp),
)


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL everything left in the process group the peer script led."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_spooler(work_dir: Path) -> None:
    """Kill a private task-spooler server still listening in ``work_dir``."""
    command = tsp_command()
    socket_path = work_dir / "ts.sock"
    if command is None or not socket_path.exists():
        return
    env = dict(os.environ, TS_SOCKET=str(socket_path), TMPDIR=str(work_dir))
    subprocess.run([command, "-K"], env=env, capture_output=True, timeout=30, check=False)


def run_script(
    python: str, script: Path, args: list[str], work_dir: Path, timeout: float
) -> dict[str, Any]:
    """Run one peer script and return its JSON result.

    Raises RuntimeError with the script's last error line when it fails or
    overruns ``timeout``; its process group is killed either way.
    """
    command = [python, str(script), *args, "--work-dir", str(work_dir), "--timeout", str(timeout)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=script.parent,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        kill_group(process)
        process.communicate()
        raise RuntimeError(f"timed out after {timeout + 60:.0f} s") from None
    finally:
        kill_group(process)
        stop_spooler(work_dir)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        errors = [line for line in stderr.splitlines() if line.strip()]
        last = errors[-1] if errors else f"exit status {process.returncode}"
        raise RuntimeError(last)
    result: dict[str, Any] = json.loads(lines[-1])
    return result


#: What a failed peer run raises (``run_once``).
RUN_ERRORS = (OSError, RuntimeError, ValueError)


def find(name: str) -> Peer:
    """The peer called ``name``; KeyError if there is none."""
    return {peer.name: peer for peer in PEERS}[name]


def run_once(ctx: Context, peer: Peer, python: str, workers: int) -> dict[str, Any]:
    """One run of ``peer`` at ``workers``: its script's JSON result; one of ``RUN_ERRORS``."""
    settings = ctx.settings
    args = ["--jobs", str(settings.e2e_jobs), "--workers", str(workers), *peer.extra_args]
    with ctx.scratch_dir(f"{peer.name}-") as work_dir:
        return run_script(python, SCRIPTS / peer.script, args, work_dir, settings.peer_timeout)


def run_peer(ctx: Context, peer: Peer, python: str, workers: int) -> Row:
    """Measure one peer at one worker count, median of the configured repeats.

    A failure of any repeat becomes a skipped row.
    """
    settings = ctx.settings
    metric = f"{peer.name}, {workers} workers"
    runs: list[dict[str, Any]] = []
    for _ in range(settings.e2e_repeats):
        if runs and not settings.more_runs_fit(runs[0]["seconds"]):
            break
        try:
            runs.append(run_once(ctx, peer, python, workers))
        except RUN_ERRORS as error:
            return skipped(SECTION, f"failed ({error})", metric)
    rate = median([run["jobs_per_s"] for run in runs])
    ctx.values[f"peer.{peer.name}.{workers}"] = rate
    detail = {"runs": runs, "jobs_per_s_each": [run["jobs_per_s"] for run in runs]}
    return Row(SECTION, f"{metric} (median of {len(runs)})", rate, "jobs/s", detail=detail)


def run(ctx: Context) -> Iterator[Row]:
    """Section 3, peers: each available peer at each configured worker count."""
    for peer in PEERS:
        python, reason = peer.check()
        if python is None:
            yield skipped(SECTION, reason, peer.name)
            continue
        for workers in ctx.settings.e2e_workers:
            yield run_peer(ctx, peer, python, workers)
