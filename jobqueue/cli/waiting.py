"""What a pending job waits for: its start time, a filter rule, a lock and its
holders, another job, a free worker.

All of it comes from calls the daemon has: the job's ``hold`` field says
why the queue holds it back (a start time to come, a PAUSE or RATE_LIMIT
filter rule); ``Query("lock")`` lists every lock with its owners and
waiters, and the jobs others depend on as locks named ``job/ID``; a queued
job waits for a worker, and ``QueryConfigValues`` says how many there are.
Each reason is a small dict (JSON output shows it as it is); ``describe``
puts it in words.
"""

from __future__ import annotations

from collections.abc import Callable

from jobqueue.cli import formatting
from jobqueue.cli.configvalues import config_values
from jobqueue.constants import Status

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jobqueue.luxi.client import Client

    Reason = dict[str, Any]
    Finder = Callable[[Client, int, str], list[Reason]]

#: The kinds of reason that are the queue's holds (``hold`` field), not waits.
HOLD_KINDS = ("scheduled", "paused", "rate_limited")
#: How much of a filter rule's uuid is shown.
SHORT_UUID = 8
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
    to start, which is nothing to report).

    Busy: running an opcode or waiting for its locks. A job that waits for a
    dependency, or whose opcode is over and is being recorded, holds no
    worker; job statuses cannot tell those apart, so the daemon is asked.
    """
    if status != Status.QUEUED:
        return []
    values = config_values(client, ["workers", "busy_workers"])
    workers, busy = values["workers"], values["busy_workers"]  # busy: None from an older daemon
    if not isinstance(workers, int) or not isinstance(busy, int) or busy < workers:
        return []
    return [{"kind": "worker", "workers": workers, "busy": busy}]


def hold_reasons(client: Client, job_id: int, status: str) -> list[Reason]:
    """Why the queue holds a queued job back: its start time, a filter rule."""
    if status != Status.QUEUED:
        return []
    rows = client.query_jobs([job_id], ["hold"])
    hold = rows[0][0] if rows and rows[0] else None
    return [hold] if isinstance(hold, dict) else []


#: What can hold a pending job back, asked in turn; a job the queue holds
#: back (the first finder) waits for nothing else.
FINDERS: tuple[Finder, ...] = (hold_reasons, lock_reasons, worker_reasons)


def reasons(client: Client, job_id: int, status: str) -> list[Reason]:
    """Everything the job waits for now, from every finder."""
    found: list[Reason] = []
    for finder in FINDERS:
        found.extend(finder(client, job_id, status))
        if any(reason.get("kind") in HOLD_KINDS for reason in found):
            break
    return found


def describe_hold(hold: Reason) -> str:
    """Why the queue holds a job, in words: ``paused by filter 8c2f1a2b``."""
    kind = hold.get("kind")
    rule = str(hold.get("filter", ""))[:SHORT_UUID]
    if kind == "paused":
        return f"paused by filter {rule}"
    if kind == "rate_limited":
        return f"rate limited by filter {rule} ({hold.get('limit')} at once)"
    if kind == "scheduled":
        when = formatting.format_timestamp(hold.get("at"))
        attempt = hold.get("attempt")
        return f"attempt {attempt} scheduled for {when}" if attempt else f"scheduled for {when}"
    return formatting.compact_json(hold)


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
    if kind in HOLD_KINDS:
        return describe_hold(reason)
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
        return f"for a free worker ({reason.get('busy')} of {reason.get('workers')} busy)"
    return f"for {formatting.compact_json(reason)}"


def state_line(status: str, found: list[Reason]) -> str:
    """The line ``watch`` shows for a pending job, e.g. ``Waiting for lock db (...)``."""
    if found and all(reason.get("kind") in HOLD_KINDS for reason in found):
        return "Queued, " + "; ".join(describe(reason) for reason in found)
    word = "Queued, waiting" if status == Status.QUEUED else "Waiting"
    return f"{word} " + "; ".join(describe(reason) for reason in found)
