"""What a pending job waits for: a lock and its holders, another job, a free worker.

All of it comes from calls the daemon has: ``Query("lock")`` lists every
lock with its owners and waiters, and the jobs others depend on as locks
named ``job/ID``; a queued job waits for a worker, and ``QueryConfigValues``
says how many there are. Each reason is a small dict (JSON output shows it
as it is); ``describe`` puts it in words.
"""

from __future__ import annotations

from collections.abc import Callable

from jobqueue.cli import formatting
from jobqueue.constants import Status

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jobqueue.luxi.client import Client

    Reason = dict[str, Any]
    Finder = Callable[[Client, int, str], list[Reason]]

#: The prefix of the locks that stand for jobs other jobs depend on.
JOB_LOCK_PREFIX = "job/"
LOCK_FIELDS = ["name", "mode", "owner", "pending"]


def _cells(row: list[Any]) -> list[Any]:
    return [cell[1] if cell[0] == formatting.RS_NORMAL else None for cell in row]


def _same_job(name: Any, job_id: int) -> bool:
    return name == job_id or (isinstance(name, str) and name.isdigit() and int(name) == job_id)


def lock_reasons(client: Client, job_id: int, status: str) -> list[Reason]:
    """The locks the job waits for (with their holders) and the jobs it waits for."""
    if status != Status.WAITING:
        return []
    reasons: list[Reason] = []
    for row in client.query("lock", LOCK_FIELDS, None)["data"]:
        name, held, owners, pending = _cells(row)
        for mode, waiters in pending or []:
            if not any(_same_job(waiter, job_id) for waiter in waiters or []):
                continue
            if isinstance(name, str) and name.startswith(JOB_LOCK_PREFIX):
                reasons.append({"kind": "job", "job": name.removeprefix(JOB_LOCK_PREFIX)})
            else:
                reasons.append(
                    {"kind": "lock", "lock": name, "mode": mode, "held": held, "owners": owners}
                )
    return reasons


def worker_reasons(client: Client, job_id: int, status: str) -> list[Reason]:
    """A queued job waits for a worker when every worker is busy (else it is about
    to start, which is nothing to report)."""
    if status != Status.QUEUED:
        return []
    (workers,) = client.query_config_values(["workers"])
    running = len(client.query("job", ["id"], ["=", "status", Status.RUNNING.value])["data"])
    if not isinstance(workers, int) or running < workers:
        return []
    return [{"kind": "worker", "workers": workers, "running": running}]


#: What can hold a pending job back, asked in turn. A filter rule holding the
#: job and a start time it is scheduled for would each be one more finder
#: here (returning kinds "filter" and "scheduled"), once the daemon has them;
#: it has neither yet.
FINDERS: tuple[Finder, ...] = (lock_reasons, worker_reasons)


def reasons(client: Client, job_id: int, status: str) -> list[Reason]:
    """Everything the job waits for now, from every finder."""
    found: list[Reason] = []
    for finder in FINDERS:
        found.extend(finder(client, job_id, status))
    return found


def _holders(owners: Any) -> str:
    if not owners:
        return ""
    names = [str(owner) for owner in owners]
    if all(isinstance(owner, int) or str(owner).isdigit() for owner in owners):
        return f"job{'s' if len(names) > 1 else ''} {', '.join(names)}"
    return ", ".join(names)


def describe(reason: Reason) -> str:
    """One reason in words."""
    kind = reason.get("kind")
    if kind == "lock":
        text = f"for lock {reason.get('lock')} ({reason.get('mode')})"
        holders = _holders(reason.get("owners"))
        if holders:
            shared = " shared" if reason.get("held") == "shared" else ""
            text += f", held{shared} by {holders}"
        return text
    if kind == "job":
        return f"for job {reason.get('job')} to end"
    if kind == "worker":
        return f"for a free worker ({reason.get('running')} of {reason.get('workers')} busy)"
    return f"for {formatting.compact_json(reason)}"


def state_line(status: str, found: list[Reason]) -> str:
    """The line ``watch`` shows for a pending job, e.g. ``Waiting for lock db (...)``."""
    word = "Queued, waiting" if status == Status.QUEUED else "Waiting"
    return f"{word} " + "; ".join(describe(reason) for reason in found)
