"""Job dependencies (chained jobs).

An opcode may carry ``depends: [[job_id, [statuses...]], ...]``. Before it
runs, the job step asks ``DependencyManager.check`` about each dependency in
turn. A dependency that has not finished registers the job as a *waiter*; the
job then holds no worker; when the dependency finishes, ``notify`` returns
the waiters for the queue to re-queue. Rules:

* finished with a wanted status (or any status, when none is listed): go on;
* canceled, and ``canceled`` not listed: the waiting job is canceled too;
* finished with another status: the opcode fails naming the status;
* the job does not exist, or is the job itself: the opcode fails.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from jobqueue.constants import FINALIZED, Status


class Outcome(enum.Enum):
    CONTINUE = "continue"
    WAIT = "wait"
    CANCEL = "cancel"
    WRONG_STATUS = "wrong_status"
    ERROR = "error"


StatusLookup = Callable[[int], Status | None]


class DependencyManager:
    """Tracks which jobs wait for which; ``_lock`` guards ``_waiters``."""

    def __init__(self, status_of: StatusLookup) -> None:
        self._status_of = status_of
        self._lock = threading.Lock()
        self._waiters: dict[int, set[int]] = {}

    def check(self, job_id: int, dep_id: int, wanted: Sequence[str]) -> tuple[Outcome, str]:
        """Decide about one dependency of ``job_id``; see the module docstring.

        Registers ``job_id`` as a waiter *before* reading the dependency's
        status, so a dependency finishing in between always wakes it.
        """
        if dep_id == job_id:
            return Outcome.ERROR, "Job can't depend on itself"
        with self._lock:
            self._waiters.setdefault(dep_id, set()).add(job_id)
        status = self._status_of(dep_id)
        if status is not None and status not in FINALIZED:
            return Outcome.WAIT, f"Need to wait for job {dep_id}, wanted status {_words(wanted)}"
        self._forget(dep_id, job_id)
        if status is None:
            return Outcome.ERROR, f"Dependency error: job {dep_id} not found (job lost)"
        if status == Status.CANCELED and Status.CANCELED not in wanted:
            return Outcome.CANCEL, f"Dependency job {dep_id} was canceled"
        if not wanted or status in wanted:
            return Outcome.CONTINUE, f"Dependency job {dep_id} finished with status {status}"
        return (
            Outcome.WRONG_STATUS,
            f"Dependency job {dep_id} finished with status '{status}', not one of {_words(wanted)}",
        )

    def notify(self, finished_id: int) -> list[int]:
        """The jobs that waited for ``finished_id``, sorted; they wait no more."""
        with self._lock:
            waiters = self._waiters.pop(finished_id, set())
        return sorted(waiters)

    def remove_waiter(self, job_id: int) -> bool:
        """Stop ``job_id`` waiting for anything; True if it was waiting."""
        found = False
        with self._lock:
            for dep_id in list(self._waiters):
                waiters = self._waiters[dep_id]
                if job_id in waiters:
                    found = True
                    waiters.discard(job_id)
                    if not waiters:
                        del self._waiters[dep_id]
        return found

    def waiting_jobs(self) -> set[int]:
        with self._lock:
            return set().union(*self._waiters.values()) if self._waiters else set()

    def lock_info(self) -> list[dict[str, Any]]:
        """Each awaited job as a pseudo-lock ``job/<id>`` with its waiters pending."""
        with self._lock:
            items = sorted((dep, sorted(waiters)) for dep, waiters in self._waiters.items())
        return [
            {"name": f"job/{dep}", "mode": None, "owner": [], "pending": [["job", waiters]]}
            for dep, waiters in items
            if waiters
        ]

    def _forget(self, dep_id: int, job_id: int) -> None:
        with self._lock:
            waiters = self._waiters.get(dep_id)
            if waiters is not None:
                waiters.discard(job_id)
                if not waiters:
                    del self._waiters[dep_id]


def _words(statuses: Iterable[str]) -> str:
    listed = ", ".join(statuses)
    return listed if listed else "any final status"
