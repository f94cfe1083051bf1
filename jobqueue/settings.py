"""The queue as a whole: its settings, and what it reports of itself.

``QueueSettings`` sets the queue-wide settings kept in the store (the
drain flag, the cron cleaner's pause; admins only, checked by
``ownership.Ownership``) and answers QueryConfigValues and QueryMetrics
from the store, the live view, the worker pool and the filter rules. The
number of workers, also kept in the store, is set through ``Controls``,
which resizes the pool with it. Built by ``JobQueue`` for itself, as
``Controls`` is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from jobqueue import configfields
from jobqueue.admission import Admission
from jobqueue.errors import ECODE_INVAL, OpPrereqError
from jobqueue.livejobs import Limits, LiveJobs
from jobqueue.metrics import Metrics, QueueState
from jobqueue.model import Submitter
from jobqueue.ownership import Ownership
from jobqueue.storage.base import WATCHER_PAUSE, JobStore, format_pause, pause_until
from jobqueue.workerpool import WorkerPool


class QueueSettings:
    """See the module docstring."""

    def __init__(
        self,
        store: JobStore,
        live: LiveJobs,
        pool: WorkerPool,
        admission: Admission,
        metrics: Metrics,
        ownership: Ownership,
        *,
        limits: Limits,
        name: str | None,
        accepting: Callable[[], bool],
        max_running_jobs: Callable[[], int],
        clock: Callable[[], float] = time.time,
        logger: logging.Logger,
    ) -> None:
        """``accepting`` tells whether the queue takes new jobs; ``max_running_jobs``
        the number of workers asked for (``Controls.workers``)."""
        self._store = store
        self._live = live
        self._pool = pool
        self._admission = admission
        self._metrics = metrics
        self._ownership = ownership
        self._limits = limits
        self._name = name
        self._accepting = accepting
        self._max_running_jobs = max_running_jobs
        self._clock = clock
        self._log = logger

    def set_drain_flag(self, flag: bool, *, caller: Submitter | None = None) -> bool:
        """Set or clear the drain flag; admins only."""
        self._ownership.check_queue(caller, "drain or undrain the queue")
        self._store.set_drained(flag)
        return True

    def set_watcher_pause(
        self, until: float | None, *, caller: Submitter | None = None
    ) -> float | None:
        """Pause the cron cleaner until ``until`` (seconds since the epoch), or end a pause.

        Returns ``until``, as Ganeti does. Raises ``OpPrereqError`` for a time
        in the past (Ganeti: GenericError) and ``StorageError`` if the setting
        cannot be stored; ``AccessDenied`` unless ``caller`` is an admin.
        """
        self._ownership.check_queue(caller, "pause the cron cleaner")
        if until is not None and until < self._clock():
            raise OpPrereqError("Unable to set pause end time in the past", ECODE_INVAL)
        text = None if until is None else format_pause(until)
        self._store.write_setting(WATCHER_PAUSE, text)
        self._log.info(
            "Cron cleaner %s", "no longer paused" if text is None else f"paused until {text}"
        )
        return until

    def watcher_pause(self) -> float | None:
        """Until when the cron cleaner is paused; None if it is not."""
        return pause_until(self._store.read_setting(WATCHER_PAUSE), self._clock())

    def query_config_values(self, fields: list[str]) -> list[Any]:
        """The named values, in order; ``OpPrereqError`` naming the unknown ones."""
        values: dict[str, Callable[[], Any]] = {
            **configfields.common_fields(),
            "drain_flag": self._store.is_drained,
            "watcher_pause": self.watcher_pause,
            **configfields.held_fields(self._live, self._limits),
            "workers": lambda: self._pool.stats()["workers"],
            "busy_workers": lambda: self._pool.stats()["busy"],
            "max_running_jobs": self._max_running_jobs,
            "filters": lambda: len(self._admission.rules()),
            "held_jobs": self._admission.held,
            "accepting_jobs": self._accepting,
            "role": lambda: "master",
            "master": lambda: self._name,
        }
        return configfields.select(fields, values)

    def query_metrics(self) -> dict[str, Any]:
        """The daemon's metrics and the queue's state now (``jobqueue.metrics``)."""
        stats = self._pool.stats()
        state = QueueState(
            role="master",
            jobs=self._live.tally(),
            workers=stats["workers"],
            busy_workers=stats["busy"],
            drained=self._store.is_drained(),
            limits=self._limits,
            opcodes=self._live.opcode_count(),
            opcode_bytes=self._live.input_bytes(),
            held=self._live.held_tally(),
            filter_rules=len(self._admission.rules()),
        )
        return self._metrics.export(state)
