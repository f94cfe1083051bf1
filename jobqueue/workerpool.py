"""A generic priority worker pool.

A fixed (but resizable) set of daemon threads takes tasks from a heap and
hands each task's payload to one ``run_task`` callable. Lower priority
numbers run first; tasks of equal priority run in the order they were added.

A task may carry an id. At most one queued entry exists per id: adding an id
that is already queued keeps the queued entry and only improves its priority.
A running task can raise ``DeferTask`` to be put back into the queue under
the same id, behind the tasks already waiting at its priority.

The pool's size is a number of *slots*: at most that many tasks run their
main part at once. A task whose main part is over but which still has
bookkeeping to do (the queue records a job's end durably) calls
``step_aside``: it gives its slot to the next task and finishes on its own
thread. The pool starts extra threads for that as needed, never more than
twice the slots.

The pool knows nothing of jobs; it imports nothing of the project but
``jobqueue.errors``.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from jobqueue.errors import NoSuchTask, ProgrammerError

#: Rebuild the heap once abandoned entries outnumber live ones by this much.
_COMPACT_SLACK = 64
#: Threads per slot at most: one running a task's main part, one finishing
#: a task that stepped aside.
_THREADS_PER_SLOT = 2


class DeferTask(Exception):
    """Raised by a running task to be queued again under the same id.

    Not a ``GenericError`` on purpose: it never leaves the pool. With
    ``priority`` None the task keeps the priority it ran with.
    """

    def __init__(self, priority: int | None = None) -> None:
        """Ask to be queued again at ``priority`` (None: the current one)."""
        super().__init__(priority)
        self.priority = priority


@dataclasses.dataclass(frozen=True)
class _Task:
    """A queued task; the heap orders it by priority, then by the order it was added in."""

    priority: int
    order: int
    task_id: Hashable = dataclasses.field(compare=False)
    payload: Any = dataclasses.field(compare=False)


class _Worker(threading.Thread):
    """A pool thread; its fields belong to the pool and follow the pool's lock."""

    def __init__(self, pool: WorkerPool, name: str) -> None:
        """Make an unstarted daemon thread for ``pool`` named ``name``."""
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self.base_name = name
        self.stopping = False
        self.current: _Task | None = None
        self.holds_slot = False

    def run(self) -> None:
        """Serve the pool until told to stop."""
        self.pool._work(self)


class WorkerPool:
    """Runs queued payloads on a set of worker threads, best priority first."""

    # Locking: the one lock ``self._lock`` guards every attribute below that
    # changes after __init__ (the heap, the queued-id map, the workers and
    # their ``stopping``/``current`` fields, the active flag). Methods ending
    # in ``_locked`` need the caller to hold it. Two conditions share it:
    # idle workers wait on ``_work_ready``, woken one per new task or freed
    # slot (waking all of them for every task made them fight over the
    # lock), and ``quiesce`` waits on ``_state_changed``, announced whenever
    # a task ends or a worker leaves. The lock is never held while a task
    # runs. ``_busy`` counts the workers that hold a slot.

    def __init__(
        self,
        name: str,
        num_workers: int,
        run_task: Callable[[Any], None],
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        """Start ``num_workers`` daemon threads named ``f"{name}{n}"`` (n from 1).

        ``num_workers`` is the number of slots (see the module docstring).

        ``run_task(payload)`` is called in a worker thread for every task.
        Raises ProgrammerError if ``num_workers`` is negative.
        """
        self._name = name
        self._run_task_fn = run_task
        self._logger = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._state_changed = threading.Condition(self._lock)
        # (priority, order, push, task): tuples compare in C (a dataclass's
        # ``__lt__`` is Python's). A task moved to another priority and back has
        # two entries of equal priority and order, the abandoned one and its own;
        # no two entries share a push number, so tasks are never compared.
        self._heap: list[tuple[int, int, int, _Task]] = []
        # The live entry of every queued task; a heap entry not found here
        # under its own id is abandoned and skipped by the workers.
        self._queued: dict[Hashable, _Task] = {}
        self._workers: list[_Worker] = []
        self._threads: list[_Worker] = []  # every started thread not yet joined
        self._slots = 0
        self._busy = 0
        self._active = True
        self._order = itertools.count()
        self._pushes = itertools.count()
        self._task_ids = itertools.count()
        self._worker_numbers = itertools.count(1)
        self.resize(num_workers)

    # -- adding and reprioritising -------------------------------------------

    def add_task(
        self, payload: Any, priority: int = 0, task_id: Hashable | None = None
    ) -> Hashable:
        """Queue ``payload`` and return its task id.

        Without ``task_id`` a fresh int is assigned (unique among assigned
        ids; a caller mixing its own ints in must avoid clashes). If the id
        is already queued, nothing new is queued: the existing entry stays
        and moves to ``priority`` if that is better. Takes the lock.
        """
        with self._lock:
            task_id = self._add_task_locked(payload, priority, task_id)
            self._wake_locked(1)
        return task_id

    def add_many_tasks(
        self,
        payloads: Sequence[Any],
        priority: int | Sequence[int] = 0,
        task_ids: Sequence[Hashable] | None = None,
    ) -> list[Hashable]:
        """Queue several payloads at once, as ``add_task`` would; return their ids.

        ``priority`` is one priority for all or one per payload; ``task_ids``
        is None or one id per payload. Raises ProgrammerError, adding nothing,
        if a list has the wrong length. Takes the lock.
        """
        if isinstance(priority, int):
            priorities: Sequence[int] = [priority] * len(payloads)
        else:
            priorities = priority
        if len(priorities) != len(payloads):
            raise ProgrammerError(f"{len(payloads)} tasks but {len(priorities)} priorities")
        if task_ids is not None and len(task_ids) != len(payloads):
            raise ProgrammerError(f"{len(payloads)} tasks but {len(task_ids)} task ids")
        ids: Sequence[Hashable | None] = [None] * len(payloads) if task_ids is None else task_ids
        with self._lock:
            added = [
                self._add_task_locked(payload, prio, task_id)
                for payload, prio, task_id in zip(payloads, priorities, ids, strict=True)
            ]
            self._wake_locked(len(added))
        return added

    def change_task_priority(self, task_id: Hashable, priority: int) -> None:
        """Move a queued task to ``priority``, keeping its place among equals.

        Raises NoSuchTask if ``task_id`` is not queued (never added, already
        finished, or running and not queued again). Takes the lock.
        """
        with self._lock:
            task = self._queued.get(task_id)
            if task is None:
                raise NoSuchTask(task_id)
            if task.priority != priority:  # same number of tasks: nobody to wake
                self._push_locked(dataclasses.replace(task, priority=priority))

    def _add_task_locked(self, payload: Any, priority: int, task_id: Hashable | None) -> Hashable:
        """Queue one task or merge it into the queued entry with the same id."""
        if task_id is None:
            task_id = next(self._task_ids)
        queued = self._queued.get(task_id)
        if queued is None:
            self._push_locked(_Task(priority, next(self._order), task_id, payload))
        elif priority < queued.priority:
            self._push_locked(dataclasses.replace(queued, priority=priority))
        return task_id

    def _push_locked(self, task: _Task) -> None:
        """Make ``task`` the live entry for its id, abandoning any previous one."""
        self._queued[task.task_id] = task
        heapq.heappush(self._heap, self._heap_entry(task))
        if len(self._heap) > 2 * len(self._queued) + _COMPACT_SLACK:
            self._heap = [self._heap_entry(task) for task in self._queued.values()]
            heapq.heapify(self._heap)

    def _heap_entry(self, task: _Task) -> tuple[int, int, int, _Task]:
        return task.priority, task.order, next(self._pushes), task

    def _pop_live_locked(self) -> _Task | None:
        """Remove and return the best live task, dropping abandoned entries."""
        while self._heap:
            task = heapq.heappop(self._heap)[3]
            if self._queued.get(task.task_id) is task:
                del self._queued[task.task_id]
                return task
        return None

    # -- inside a running task -----------------------------------------------

    def current_priority(self) -> int:
        """Return the priority the calling task runs with.

        Raises ProgrammerError unless called from a task of this pool. Needs
        no lock: only the worker's own thread sets its current task.
        """
        return self._current_task().priority

    def current_task_id(self) -> Hashable:
        """Return the id of the calling task; ProgrammerError outside a task."""
        return self._current_task().task_id

    def set_task_name(self, name: str) -> None:
        """Rename the calling worker thread ``f"{worker}/{name}"`` until the task ends.

        Raises ProgrammerError unless called from a task of this pool.
        """
        self._current_task()
        worker = threading.current_thread()
        assert isinstance(worker, _Worker)
        worker.name = f"{worker.base_name}/{name}"

    def step_aside(self) -> None:
        """Give the calling task's slot to the next task; the caller runs on.

        For a task whose main part is over. It finishes on its thread
        without counting towards the pool's size; a queued task takes the
        slot on an idle thread, or on one started for it (at most
        ``_THREADS_PER_SLOT`` threads per slot). Does nothing when called a
        second time. Raises ProgrammerError unless called from a task of
        this pool. Takes the lock.
        """
        self._current_task()
        worker = threading.current_thread()
        assert isinstance(worker, _Worker)
        with self._lock:
            if self._release_slot_locked(worker):
                self._wake_locked(1)

    def _in_own_worker(self) -> bool:
        """Tell whether the calling thread is one of this pool's workers."""
        worker = threading.current_thread()
        return isinstance(worker, _Worker) and worker.pool is self

    def _current_task(self) -> _Task:
        """The task the calling thread runs for this pool; ProgrammerError if none."""
        worker = threading.current_thread()
        if not isinstance(worker, _Worker) or worker.pool is not self or worker.current is None:
            raise ProgrammerError("not called from a task of this worker pool")
        return worker.current

    # -- state and waiting ---------------------------------------------------

    def set_active(self, active: bool) -> None:
        """Let workers pick new tasks (True) or not (False); takes the lock.

        Running tasks finish either way, and tasks can still be added.
        """
        with self._lock:
            self._active = active
            self._work_ready.notify_all()
            self._wake_locked(len(self._queued))  # threads for slots nobody is free to take

    def is_active(self) -> bool:
        """Tell whether workers pick new tasks; takes the lock."""
        with self._lock:
            return self._active

    def quiesce(self, timeout: float | None = None) -> bool:
        """Wait until no task is queued and none runs; True if that was reached.

        Queued tasks count even while the pool is inactive or has no
        workers, so then this waits for the whole ``timeout`` (forever when
        None) and returns False. Raises ProgrammerError if called from one
        of this pool's tasks, which could never see the pool idle. Takes the
        lock (released while waiting).
        """
        if self._in_own_worker():
            raise ProgrammerError("quiesce called from a task of the same pool")
        with self._lock:
            return self._state_changed.wait_for(self._is_idle_locked, timeout)

    def wait_no_running(self, timeout: float | None = None) -> bool:
        """Wait until no task runs (queued ones may remain); True if that was reached.

        Raises ProgrammerError if called from one of this pool's tasks. Takes
        the lock (released while waiting).
        """
        if self._in_own_worker():
            raise ProgrammerError("wait_no_running called from a task of the same pool")
        with self._lock:
            return self._state_changed.wait_for(lambda: self._count_running_locked() == 0, timeout)

    def has_running_tasks(self) -> bool:
        """Tell whether any worker is running a task; takes the lock."""
        with self._lock:
            return self._count_running_locked() > 0

    def stats(self) -> dict[str, int]:
        """Counts of workers, queued tasks, running tasks and busy workers; takes the lock.

        ``workers`` counts slots (those of a shrinking pool until their tasks
        end or step aside) that have a thread; ``busy`` the slots in use;
        ``running`` the tasks that run, those that stepped aside included.
        """
        with self._lock:
            return {
                "workers": min(max(self._slots, self._busy), len(self._workers)),
                "queued": len(self._queued),
                "running": self._count_running_locked(),
                "busy": self._busy,
            }

    def _is_idle_locked(self) -> bool:
        """Tell whether nothing is queued and nothing runs."""
        return not self._queued and self._count_running_locked() == 0

    def _count_running_locked(self) -> int:
        """Count the workers that are running a task."""
        return sum(1 for worker in self._workers if worker.current is not None)

    # -- workers -------------------------------------------------------------

    def resize(self, num_workers: int) -> None:
        """Grow or shrink the pool to ``num_workers`` slots and threads; takes the lock.

        Growing first keeps workers that were told to stop but have not yet
        left. Surplus workers (extra threads started by ``step_aside``
        included) leave after their current task; this does not wait for
        them. Raises ProgrammerError if ``num_workers`` is negative.
        """
        if num_workers < 0:
            raise ProgrammerError(f"negative number of workers: {num_workers}")
        with self._lock:
            self._slots = num_workers
            staying = [worker for worker in self._workers if not worker.stopping]
            leaving = [worker for worker in self._workers if worker.stopping]
            for worker in staying[num_workers:]:
                worker.stopping = True
            for worker in leaving[: max(0, num_workers - len(staying))]:
                worker.stopping = False
            for _ in range(num_workers - len(staying) - len(leaving)):
                self._start_worker_locked()
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            self._wake_everyone_locked()
            self._wake_locked(len(self._queued))  # new slots, and every thread busy

    def terminate(self) -> None:
        """Stop every worker after its current task, join them, drop queued tasks.

        Idempotent; the pool can be grown again with ``resize``. Raises
        ProgrammerError if called from one of this pool's workers, which
        cannot join itself. Takes the lock, but not while joining.
        """
        if self._in_own_worker():
            raise ProgrammerError("terminate called from a worker of the same pool")
        with self._lock:
            self._slots = 0
            for worker in self._workers:
                worker.stopping = True
            threads = list(self._threads)
            self._wake_everyone_locked()
        for thread in threads:
            thread.join()
        with self._lock:
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            self._heap.clear()
            self._queued.clear()
            self._wake_everyone_locked()

    def _wake_locked(self, tasks: int) -> None:
        """Get up to ``tasks`` queued tasks taken: slots free, threads waiting or started.

        Wakes idle workers one per task, and starts threads for free slots
        that no worker without a task can take (after ``step_aside``),
        within ``_THREADS_PER_SLOT`` threads per slot. Does nothing while no
        slot is free, the pool is inactive or nothing is queued.
        """
        takeable = min(tasks, len(self._queued), self._slots - self._busy)
        if takeable <= 0 or not self._active:
            return
        self._work_ready.notify(takeable)
        room = _THREADS_PER_SLOT * self._slots - len(self._workers)
        if room <= 0:  # as many threads as may be: no need to count the free ones
            return
        free = sum(1 for worker in self._workers if worker.current is None and not worker.stopping)
        try:
            for _ in range(min(takeable - free, room)):
                self._start_worker_locked()
        except RuntimeError as err:  # no thread to be had: a worker that frees up takes it
            self._logger.warning("%s: cannot start a worker thread: %s", self._name, err)

    def _wake_everyone_locked(self) -> None:
        """Wake every waiter: workers must re-check ``stopping``, quiesce the counts."""
        self._work_ready.notify_all()
        self._state_changed.notify_all()

    def _start_worker_locked(self) -> None:
        """Start one more worker thread with the next free number; RuntimeError if none.

        It is counted only once it started (it waits for the lock held here).
        """
        worker = _Worker(self, f"{self._name}{next(self._worker_numbers)}")
        worker.start()
        self._workers.append(worker)
        self._threads.append(worker)

    def _work(self, worker: _Worker) -> None:
        """The worker thread's loop: run a task, then report it and take the next in one step."""
        try:
            task = self._next_task(worker)
            while task is not None:
                defer_priority = self._run_one(worker, task)
                task = self._next_task(worker, (task, defer_priority))
        finally:
            with self._lock:
                if worker in self._workers:  # only if something escaped _run_one
                    self._workers.remove(worker)
                    worker.current = None
                    self._release_slot_locked(worker)
                self._wake_everyone_locked()
                self._wake_locked(len(self._queued))

    def _release_slot_locked(self, worker: _Worker) -> bool:
        """Give back the slot ``worker`` holds; False if it holds none."""
        if not worker.holds_slot:
            return False
        worker.holds_slot = False
        self._busy -= 1
        return True

    def _next_task(
        self, worker: _Worker, done: tuple[_Task, int | None] | None = None
    ) -> _Task | None:
        """Block until there is a task for ``worker``; None when it must leave.

        ``done``: the task the worker just ran, and the priority to queue it
        again at (None if it is over); it is reported in the same locked
        step that looks for the next task, one hand-off of the lock fewer
        per task. A leaving worker drops out of the pool in that step too,
        so ``resize`` never revives a worker that already left.
        """
        with self._lock:
            if done is not None:
                ran, defer_priority = done
                worker.current = None
                self._release_slot_locked(worker)  # it takes the next task itself
                if defer_priority is not None:  # this worker looks for work next anyway
                    self._add_task_locked(ran.payload, defer_priority, ran.task_id)
                self._state_changed.notify_all()
            while not worker.stopping:
                free = self._active and self._busy < self._slots
                task = self._pop_live_locked() if free else None
                if task is not None:
                    worker.current = task
                    worker.holds_slot = True
                    self._busy += 1
                    self._wake_locked(1)  # a slot may still be free for the next task
                    return task
                self._work_ready.wait()
            self._workers.remove(worker)
            self._wake_locked(1)  # pass on a wake-up this worker may have taken
            self._state_changed.notify_all()
            return None

    def _run_one(self, worker: _Worker, task: _Task) -> int | None:
        """Run one task without the lock; return the priority to defer it at, or None.

        Exceptions other than DeferTask are logged and swallowed.
        """
        try:
            self._run_task_fn(task.payload)
        except DeferTask as defer:
            return task.priority if defer.priority is None else defer.priority
        except Exception:
            self._logger.exception("%s: task %r failed", worker.base_name, task.task_id)
        finally:
            worker.name = worker.base_name
        return None
