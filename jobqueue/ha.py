"""A daemon's life on one store: standby until it leads, master while it leads.

``Roles.run`` moves a daemon between the two roles:

* **standby**: a ``StoreMirror`` keeps the shared ``LiveJobs`` view in step
  with the store, the LUXI server answers reads from it and refuses every
  change naming the master (``StandbyQueue``), and the daemon campaigns for
  the store's leadership;
* **master**: once it leads, a new *term* starts: the queue is built and
  recovered (jobs that were running end in error: their master failed over,
  so they never run twice) and the server serves it;
* a master that **loses** the lead (its lease ran out while it was paused,
  cut off or slow) can no longer write anything (the store fences it): it
  switches the server back to standby at once, kills its running commands,
  stops its workers and campaigns again;
* a **stop** (SIGTERM) ends a term gracefully: running opcodes get
  ``shutdown_timeout`` seconds, unused ids are given back and the lead is
  released, so a standby takes over without waiting for a lease to expire.

A store that allows no standby (the file store: one daemon per directory)
leads at once or fails to start. The terms are built by the daemon
(``make_term``); this module only sequences them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from jobqueue.errors import GenericError, JobQueueError
from jobqueue.luxi.methods import QueueApi, ReaderApi
from jobqueue.metrics import Metrics
from jobqueue.standby import StandbyQueue, StoreMirror
from jobqueue.storage.base import JobStore, Leadership

#: How often a standby's campaign returns to look at a stop request.
CAMPAIGN_SLICE = 1.0
#: How often a standby deletes its own command output of jobs the store no
#: longer has (the master's pruning reaches only the master's disk).
TIDY_INTERVAL = 3600.0
#: How often a master looks at its leadership while it serves.
LEAD_CHECK = 0.5


class StopRequest(Protocol):
    """What the daemon's signal handlers asked for.

    ``requested``: stop in order (running opcodes may finish); ``now``: stop
    the running opcodes at once, then stop in order; ``again()`` says how to
    ask for ``now``, for the log.
    """

    requested: threading.Event
    now: threading.Event

    def again(self) -> str: ...


class TermQueue(QueueApi, Protocol):
    """What ending a term needs from the queue, beyond serving it."""

    def prepare_shutdown(self) -> None: ...
    def wait_idle(self, timeout: float) -> bool: ...
    def kill_running(self) -> None: ...
    def running_count(self) -> int: ...


class Term(Protocol):
    """One term as master: a started queue, its reader, and how to stop its threads."""

    @property
    def queue(self) -> TermQueue: ...
    @property
    def reader(self) -> ReaderApi: ...
    def stop(self) -> None: ...


#: ``serve(queue, reader)``: the LUXI server answers with these from now on
#: (the first call also opens the sockets).
Serve = Callable[[QueueApi, ReaderApi], None]


class Roles:
    """See the module docstring; ``daemon.py`` builds one."""

    def __init__(
        self,
        store: JobStore,
        leadership: Leadership,
        mirror: StoreMirror,
        standby_queue: StandbyQueue,
        standby_reader: ReaderApi,
        *,
        make_term: Callable[[str], Term],
        serve: Serve,
        standby_allowed: bool,
        recovery_message: str,
        shutdown_timeout: float,
        kill_grace: float,
        logger: logging.Logger | None = None,
        metrics: Metrics | None = None,
        tidy_interval: float = TIDY_INTERVAL,
    ) -> None:
        self._store = store
        self._tidy_interval = tidy_interval
        self._leadership = leadership
        self._mirror = mirror
        self._standby_queue = standby_queue
        self._standby_reader = standby_reader
        self._make_term = make_term
        self._serve = serve
        self._standby_allowed = standby_allowed
        self._recovery_message = recovery_message
        self._shutdown_timeout = shutdown_timeout
        self._kill_grace = kill_grace
        self._log = logger or logging.getLogger(__name__)
        self._metrics = metrics or Metrics()

    def run(self, stop: StopRequest) -> None:
        """Serve as standby and master in turn until a stop is requested.

        Raises ``JobQueueError`` when the store allows no standby and
        another daemon leads it, and whatever the first recovery raises then.
        """
        while self._wait_for_lead(stop):
            try:
                term = self._make_term(self._recovery_message)
            except GenericError as err:
                if not self._standby_allowed:
                    raise
                self._log.error("Cannot take over the queue (%s); standing by again", err)
                self._leadership.release()
                continue
            self._serve(term.queue, term.reader)
            self._log.info("Serving as master")
            while not stop.requested.wait(LEAD_CHECK):
                if self._leadership.lost.is_set():
                    break
            if stop.requested.is_set() and not self._leadership.lost.is_set():
                self._end_term(term, stop)
                return
            self._log.error("Lost the lead of the queue; killing running jobs, standing by")
            self._metrics.leads_lost.inc()
            self._serve(self._standby_queue, self._standby_reader)  # refuse changes from now
            self._step_down(term)

    def _wait_for_lead(self, stop: StopRequest) -> bool:
        """Stand by (mirroring, refusing changes) until leading (True) or stopped (False)."""
        if not self._standby_allowed:
            if self._leadership.acquire(0):
                return True
            raise JobQueueError(
                "The job queue is in use by another daemon"
                f" ({self._leadership.holder() or 'unknown'})"
            )
        self._mirror.start()
        try:
            self._serve(self._standby_queue, self._standby_reader)
            master = self._leadership.holder()
            self._log.info("Standing by; the master is %s", master)
            tidied = -math.inf  # first after one lost campaign: never delays a take-over
            while not stop.requested.is_set():
                try:
                    if self._leadership.acquire(CAMPAIGN_SLICE):
                        self._log.info("Won the lead of the queue; taking over")
                        if master is not None:  # metrics: another daemon led before
                            self._metrics.takeovers.inc()
                        return True
                except GenericError as err:  # the store is unreachable: keep trying
                    self._log.warning("Campaign for the lead failed: %s", err)
                    stop.requested.wait(CAMPAIGN_SLICE)
                if time.monotonic() - tidied >= self._tidy_interval:
                    tidied = time.monotonic()
                    self._tidy_local_output()
            return False
        finally:
            self._mirror.stop()

    def _tidy_local_output(self) -> None:
        """Delete our output of jobs gone from the store; failures are logged, never raised."""
        try:
            result = self._store.tidy_local_output()
        except GenericError as err:
            self._log.warning("Cannot tidy this host's command output: %s", err)
            return
        for failure in result.failures:
            self._log.warning("Tidying this host's command output: %s", failure)

    def _end_term(self, term: Term, stop: StopRequest) -> None:
        """A stop: let running opcodes finish (bounded), give back ids, release the lead.

        Says what it waits for, since that may take ``shutdown_timeout``
        seconds; a second stop signal (``stop.now``) cuts the wait short.
        """
        queue = term.queue
        queue.prepare_shutdown()
        running = queue.running_count()
        if running:
            self._log.info(
                "Waiting up to %g s for %d running job%s; %s to stop %s now",
                self._shutdown_timeout,
                running,
                "" if running == 1 else "s",
                stop.again(),
                "it" if running == 1 else "them",
            )
        if not _wait_idle(queue, self._shutdown_timeout, stop.now):
            if not stop.now.is_set():
                self._log.warning(
                    "Opcodes still running after %gs; killing them", self._shutdown_timeout
                )
            queue.kill_running()
            queue.wait_idle(self._kill_grace + 2)
        term.stop()
        try:
            self._store.release_unused_ids()
        except GenericError as err:
            self._log.warning("Cannot give back unused job ids: %s", err)
        self._leadership.release()

    def _step_down(self, term: Term) -> None:
        """The lead was lost: nothing can be written; stop everything now."""
        queue = term.queue
        queue.prepare_shutdown()
        queue.kill_running()
        if not queue.wait_idle(self._kill_grace + 2):
            self._log.error("Some opcodes did not stop after the lead was lost")
        term.stop()
        self._leadership.release()


def _wait_idle(queue: TermQueue, timeout: float, cut_short: threading.Event) -> bool:
    """Like ``queue.wait_idle(timeout)``, but gives up once ``cut_short`` is set."""
    deadline = time.monotonic() + timeout
    while not cut_short.is_set():
        remaining = deadline - time.monotonic()
        if queue.wait_idle(min(0.1, max(remaining, 0.0))):
            return True
        if remaining <= 0:
            return False
    return False
