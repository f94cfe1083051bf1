"""task-spooler: run N no-op jobs (``true``) with W slots, print jobs/s.

Needs only the ``tsp`` (Debian) or ``ts`` command, no Python packages::

    python tsp_noop.py --jobs 2000 --workers 25 --work-dir DIR

Uses a private server: ``TS_SOCKET`` and ``TMPDIR`` point into DIR and
``TS_SLOTS`` is W. Each job is submitted by its own ``tsp -n true`` call, the
only way task-spooler takes jobs. After the last submission the script waits
for the last job (``tsp -w``) and then polls ``tsp -l`` until no job is
queued or running. The clock runs from the first submission to that poll.
The server is killed (``tsp -K``) before exiting; the result is one JSON line
on stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from peer_cli import base_parser, report

UNFINISHED_STATES = {"queued", "running", "allocating"}


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = base_parser(__doc__)
    return parser.parse_args()


def find_command() -> str:
    """Return the task-spooler client command; raises RuntimeError when there is none."""
    for name in ("tsp", "ts"):
        path = shutil.which(name)
        if path and subprocess.run([path, "-V"], capture_output=True, check=False).returncode == 0:
            return path
    raise RuntimeError("neither tsp nor ts is installed")


def spooler_env(work_dir: str, slots: int) -> dict[str, str]:
    """The environment that makes every call talk to our private server."""
    return dict(
        os.environ,
        TS_SOCKET=os.path.join(work_dir, "ts.sock"),
        TMPDIR=work_dir,
        TS_SLOTS=str(slots),
    )


def unfinished(command: str, env: dict[str, str]) -> int:
    """Return how many listed jobs are not finished yet."""
    listing = subprocess.run(
        [command, "-l"], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    states = (line.split()[1] for line in listing.splitlines()[1:] if len(line.split()) > 1)
    return sum(1 for state in states if state in UNFINISHED_STATES)


def measure(command: str, env: dict[str, str], jobs: int, timeout: float) -> dict[str, Any]:
    """Submit ``jobs`` no-ops one call each; wait until none is queued or running."""
    deadline = time.monotonic() + timeout
    began = time.perf_counter()
    for _ in range(jobs):
        subprocess.run(
            [command, "-n", "true"],
            env=env,
            stdout=subprocess.DEVNULL,
            timeout=max(1.0, deadline - time.monotonic()),
            check=True,
        )
    submitted = time.perf_counter()
    subprocess.run(
        [command, "-w"],
        env=env,
        stdout=subprocess.DEVNULL,
        timeout=max(1.0, deadline - time.monotonic()),
        check=False,
    )
    left = unfinished(command, env)
    while left and time.monotonic() < deadline:
        time.sleep(0.005)
        left = unfinished(command, env)
    ended = time.perf_counter()
    completed = jobs - left
    return {
        "completed": completed,
        "errors": 0,
        "seconds": ended - began,
        "submit_seconds": submitted - began,
        "jobs_per_s": completed / (ended - began),
    }


def main() -> int:
    """Run the measurement; exit status 1 when not every job finished in time."""
    args = parse_args()
    command = find_command()
    env = spooler_env(args.work_dir, args.workers)
    try:
        # Starts the private server, which reads TS_SLOTS once, and confirms it.
        subprocess.run([command, "-S", str(args.workers)], env=env, timeout=30, check=True)
        result = measure(command, env, args.jobs, args.timeout)
    finally:
        subprocess.run([command, "-K"], env=env, capture_output=True, timeout=30, check=False)
    result.update(
        peer="task-spooler", jobs=args.jobs, workers=args.workers, command=os.path.basename(command)
    )
    completed = result["completed"]
    return report("task-spooler", result, completed, args.jobs, completed == args.jobs)


if __name__ == "__main__":
    sys.exit(main())
