"""Which job may run its next opcode now; the others are held without a worker.

Before each opcode of a job the queue asks ``Admission.admit``. A job is
held, and parked holding no worker and no lock, when

* it has a start time (``not_before``: a scheduled start, or a retry's
  delay) still to come: a timer (``Timers``, no polling) wakes it then;
* the deciding filter rule (``jobqueue.filters``) says PAUSE: it is woken
  when the rules change;
* the deciding rule says ``["RATE_LIMIT", n]`` and n jobs of that rule hold
  a *slot* already: it waits in line (best priority, then lowest id) and is
  handed the next slot that frees.

A slot is taken when a job is admitted and kept until the job finishes,
waits for a dependency, or is held; it is handed straight to the next job
in line, which is woken. A REJECT verdict is returned to the queue, which
cancels the job. The rules are kept here, in memory and durably through
the store (written first); every change of them wakes every held job to be
decided again, so no job waits on a rule that no longer holds it.

Locking: ``_lock`` guards the rules, slots, lines and held sets; the wake
callback (``wake``: re-queue these jobs) and the store are never called
with it held, except the store's rule writes, which keep rule changes in
the order they were made.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue import filters
from jobqueue.errors import ECODE_NOENT, GenericError, OpPrereqError
from jobqueue.filters import CompiledRule, CompileFilter, FilterRule, JobView
from jobqueue.model import Timestamp, merge_time
from jobqueue.storage.base import JobStore
from jobqueue.timers import Timers

#: How a held job is described (``Job.hold``, the ``hold`` query field).
HOLD_SCHEDULED = "scheduled"
HOLD_PAUSED = "paused"
HOLD_RATE_LIMITED = "rate_limited"

Wake = Callable[[list[int]], None]


@dataclasses.dataclass(frozen=True)
class Decision:
    """What ``admit`` decided: go (both None), hold (``hold`` says why), or reject."""

    hold: dict[str, Any] | None = None
    reject: FilterRule | None = None


GO = Decision()


class Admission:
    """See the module docstring; ``daemon.py`` builds one per queue."""

    def __init__(
        self,
        store: JobStore,
        compile_filter: CompileFilter,
        timers: Timers,
        wake: Wake,
        *,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self._store = store
        self._compile = compile_filter
        self._timers = timers
        self._wake = wake
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._rules: list[CompiledRule] = []  # in evaluation order
        self._slots: dict[str, set[int]] = {}  # rule uuid -> jobs holding a slot
        self._slot_of: dict[int, str] = {}
        self._lines: dict[str, list[tuple[int, int]]] = {}  # uuid -> heap of (priority, id)
        self._in_line: dict[int, str] = {}
        self._paused: dict[int, str] = {}
        self._timed: dict[int, float] = {}  # job -> start time a timer is set for
        self._generation = 0  # counts rule changes
        self._decided: dict[int, tuple[int, FilterRule | None]] = {}  # job -> (generation, rule)
        self._rejecting = False  # whether any rule rejects

    # -- rules ---------------------------------------------------------------------
    def load_rules(self) -> None:
        """Read the stored rules; one that no longer parses or compiles is logged and skipped."""
        compiled = []
        for data in self._store.load_filters():
            try:
                compiled.append(filters.compile_rule(FilterRule.from_dict(data), self._compile))
            except GenericError as err:
                self._log.error("Ignoring stored filter rule %s: %s", data.get("uuid"), err)
        with self._lock:
            self._rules = filters.ordered(compiled)
            self._rules_changed_locked()

    def rules(self) -> list[FilterRule]:
        """The rules, in evaluation order."""
        with self._lock:
            return [compiled.rule for compiled in self._rules]

    def rule(self, uuid: str) -> FilterRule | None:
        with self._lock:
            return next((c.rule for c in self._rules if c.rule.uuid == uuid), None)

    def replace_rule(self, rule: FilterRule) -> None:
        """Add ``rule``, or replace the one with its uuid: durably, then in effect.

        Raises ``OpPrereqError`` for a predicate that does not compile and
        ``StorageError`` when it cannot be stored (nothing changes then).
        Held jobs are woken to be decided again.
        """
        compiled = filters.compile_rule(rule, self._compile)
        with self._lock:
            self._store.replace_filter(rule.to_dict())
            kept = [c for c in self._rules if c.rule.uuid != rule.uuid]
            self._rules = filters.ordered([*kept, compiled])
            woken = self._rules_changed_locked()
        self._wake(woken)

    def delete_rule(self, uuid: str) -> None:
        """Delete a rule durably; ``OpPrereqError`` if there is none, ``StorageError``."""
        with self._lock:
            if not any(c.rule.uuid == uuid for c in self._rules):
                raise OpPrereqError(f"No filter rule with uuid {uuid}", ECODE_NOENT)
            self._store.delete_filter(uuid)
            self._rules = [c for c in self._rules if c.rule.uuid != uuid]
            woken = self._rules_changed_locked()
        self._wake(woken)

    def decide(self, job: JobView) -> FilterRule | None:
        """The deciding rule for ``job`` now (None: it runs normally)."""
        with self._lock:
            return filters.decide(self._rules, job) if self._rules else None

    def rejects_any(self) -> bool:
        """Whether any rule has the action REJECT."""
        with self._lock:
            return self._rejecting

    def rejecting(self, job: JobView) -> FilterRule | None:
        """The REJECT rule that decides about ``job`` now, if any (cheap without one)."""
        with self._lock:
            if not self._rejecting:
                return None
            rule = filters.decide(self._rules, job)
        return rule if rule is not None and rule.action == filters.REJECT else None

    def _decide_cached_locked(self, job: JobView) -> FilterRule | None:
        """``decide``, remembered per job until the rules change (jobs never change)."""
        if not self._rules:
            return None
        cached = self._decided.get(job.id)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        rule = filters.decide(self._rules, job)
        self._decided[job.id] = (self._generation, rule)
        return rule

    def _rules_changed_locked(self) -> list[int]:
        """Forget every hold a rule made and the slots of rules that limit no more.

        Returns the held jobs, to be decided again. Jobs keep the slot of a
        rule that still limits; one that is gone frees its slots.
        """
        self._generation += 1
        self._decided.clear()
        self._rejecting = any(c.rule.action == filters.REJECT for c in self._rules)
        limiting = {c.rule.uuid for c in self._rules if c.rule.action == filters.RATE_LIMIT}
        for uuid in [uuid for uuid in self._slots if uuid not in limiting]:
            for job_id in self._slots.pop(uuid):
                self._slot_of.pop(job_id, None)
        woken = sorted({*self._paused, *self._in_line})
        self._paused.clear()
        self._in_line.clear()
        self._lines.clear()
        return woken

    # -- jobs ----------------------------------------------------------------------
    def admit(
        self, job: JobView, priority: int, not_before: Timestamp | None, attempt: int = 1
    ) -> Decision:
        """Whether ``job`` may run its next opcode now; see the module docstring.

        A held job is parked here (or timed) and woken through ``wake``;
        ``priority`` places it in a rate limit's line.
        """
        job_id = job.id
        woken: list[int] = []
        timer: float | None = None
        with self._lock:
            self._paused.pop(job_id, None)  # decided afresh
            self._in_line.pop(job_id, None)
            if not_before is not None and merge_time(not_before) > self._clock():
                start = merge_time(not_before)
                woken = self._free_slot_locked(job_id)
                if self._timed.get(job_id) != start:
                    self._timed[job_id] = timer = start
                decision = Decision(hold=_scheduled(not_before, attempt))
            else:
                decision = self._decide_locked(job, priority, woken)
        if timer is not None:
            due = timer
            self._timers.call_later(due - self._clock(), lambda: self._due(job_id, due))
        if woken:  # usually none: then the queue's lock is not taken for nothing
            self._wake(woken)
        return decision

    def _decide_locked(self, job: JobView, priority: int, woken: list[int]) -> Decision:
        job_id = job.id
        rule = self._decide_cached_locked(job)
        if rule is not None and rule.action == filters.RATE_LIMIT:
            if self._slot_of.get(job_id) == rule.uuid:
                return GO
            woken.extend(self._free_slot_locked(job_id))
            holders = self._slots.setdefault(rule.uuid, set())
            if len(holders) < (rule.rate or 0):
                holders.add(job_id)
                self._slot_of[job_id] = rule.uuid
                return GO
            self._in_line[job_id] = rule.uuid
            heapq.heappush(self._lines.setdefault(rule.uuid, []), (priority, job_id))
            hold = {"kind": HOLD_RATE_LIMITED, "filter": rule.uuid, "limit": rule.rate}
            return Decision(hold=hold)
        woken.extend(self._free_slot_locked(job_id))
        if rule is None or rule.action == filters.ACCEPT:
            return GO
        if rule.action == filters.PAUSE:
            self._paused[job_id] = rule.uuid
            return Decision(hold={"kind": HOLD_PAUSED, "filter": rule.uuid})
        return Decision(reject=rule)

    def _due(self, job_id: int, start: float) -> None:
        """A timer's call: wake the job unless its time was changed meanwhile."""
        with self._lock:
            if self._timed.get(job_id) != start:
                return
            del self._timed[job_id]
        self._wake([job_id])

    def release(self, job_id: int) -> None:
        """The job finished or waits for a dependency: it holds no slot and no place.

        Its slot, if any, goes to the next job in line.
        """
        with self._lock:
            self._paused.pop(job_id, None)
            self._in_line.pop(job_id, None)
            self._timed.pop(job_id, None)
            self._decided.pop(job_id, None)
            woken = self._free_slot_locked(job_id)
        if woken:
            self._wake(woken)

    def _free_slot_locked(self, job_id: int) -> list[int]:
        """Give up the job's slot; hand free slots of that rule to the jobs in line."""
        uuid = self._slot_of.pop(job_id, None)
        if uuid is None:
            return []
        holders = self._slots.get(uuid, set())
        holders.discard(job_id)
        rule = next((c.rule for c in self._rules if c.rule.uuid == uuid), None)
        limit = rule.rate if rule is not None and rule.rate is not None else 0
        line = self._lines.get(uuid, [])
        woken = []
        while line and len(holders) < limit:
            _, waiting = heapq.heappop(line)
            if self._in_line.get(waiting) != uuid:
                continue  # it left the line (finished, or decided again) meanwhile
            del self._in_line[waiting]
            holders.add(waiting)
            self._slot_of[waiting] = uuid
            woken.append(waiting)
        return woken

    def held(self) -> dict[str, int]:
        """How many jobs each kind of hold parks now (timed ones are counted by their timer)."""
        with self._lock:
            return {
                HOLD_PAUSED: len(self._paused),
                HOLD_RATE_LIMITED: len(self._in_line),
                HOLD_SCHEDULED: len(self._timed),
            }

    def slot_holders(self, uuid: str) -> set[int]:
        """The jobs holding a slot of rule ``uuid`` (for tests and diagnostics)."""
        with self._lock:
            return set(self._slots.get(uuid, ()))


def _scheduled(not_before: Timestamp, attempt: int) -> dict[str, Any]:
    hold: dict[str, Any] = {"kind": HOLD_SCHEDULED, "at": list(not_before)}
    if attempt > 1:
        hold["attempt"] = attempt
    return hold


def stored_rules(store: JobStore, log: logging.Logger) -> list[FilterRule]:
    """The rules a store holds, in evaluation order (a standby shows them so)."""
    rules = []
    for data in store.load_filters():
        try:
            rules.append(FilterRule.from_dict(data))
        except GenericError as err:
            log.error("Ignoring stored filter rule %s: %s", data.get("uuid"), err)
    return sorted(rules, key=FilterRule.sort_key)


def job_view(job_id: int, inputs: Iterable[dict[str, Any]]) -> JobView:
    """What the rules look at of a job."""
    return JobView(job_id, list(inputs))
