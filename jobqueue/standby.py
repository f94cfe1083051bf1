"""What a daemon does while another one leads the queue: mirror it, and refuse changes.

``StoreMirror`` keeps a ``LiveJobs`` view in step with a store that another
process writes: it loads every live job once, then re-reads each job the
store's change feed reports and publishes it (or drops it when it left the
live queue). Queries and WaitForJobChange calls on a standby are answered
from that view exactly as on the master, and a waiter keeps its watch when
this daemon takes over, since the view stays the same object.

``StandbyQueue`` is what the LUXI server calls for changes meanwhile: every
mutating method raises ``NotMasterError`` naming the leader, and
``QueryConfigValues`` answers from the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from jobqueue import configfields
from jobqueue.errors import GenericError, NotMasterError
from jobqueue.livejobs import DEFAULT_LIMITS, Limits, LiveJobs
from jobqueue.metrics import Metrics, QueueState
from jobqueue.storage.base import WATCHER_PAUSE, ChangeFeed, JobStore, pause_until


class StoreMirror:
    """Keeps ``live`` in step with ``store``; ``start`` and ``stop`` once each.

    ``_lock`` serialises the loading and every change applied, so an older
    read never overwrites a newer one.
    """

    def __init__(
        self, store: JobStore, live: LiveJobs, *, logger: logging.Logger | None = None
    ) -> None:
        self._store = store
        self._live = live
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._feed: ChangeFeed | None = None

    def start(self) -> None:
        """Follow the store's changes, then load it whole (no change falls in between).

        Raises ``StorageError`` when the store cannot be read or watched.
        """
        self._feed = self._store.change_feed()
        self._feed.start(self._apply)
        try:
            self.reload()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._feed is not None:
            self._feed.stop()
            self._feed = None

    def reload(self) -> None:
        """Replace the whole view with what the store holds now."""
        with self._lock:
            self._live.load(self._store.load_jobs(), copy=False)

    def _apply(self, job_id: int | None) -> None:
        """The feed's callback: re-read one job (None: everything)."""
        try:
            if job_id is None:
                self.reload()
                return
            with self._lock:
                job = self._store.read_job(job_id)
                if job is None or self._store.is_archived(job_id):
                    self._live.drop([job_id])
                else:
                    self._live.publish([job], copy=False)
        except GenericError as err:
            self._log.warning("Cannot follow the change of job %s: %s", job_id, err)


class StandbyQueue:
    """The queue API of a standby: changes refused naming the master, settings read."""

    def __init__(
        self,
        store: JobStore,
        master: Callable[[], str | None],
        live: LiveJobs,
        *,
        limits: Limits = DEFAULT_LIMITS,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._master = master
        self._live = live
        self._limits = limits
        self._metrics = metrics or Metrics()

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        master = self._master()
        where = f"the master is {master}" if master else "no master is running right now"
        raise NotMasterError(f"This daemon is a standby and changes nothing; {where}", master)

    submit_job = submit_each = submit_many_jobs = cancel_job = change_job_priority = _refuse
    archive_job = auto_archive_jobs = prune_archive = set_drain_flag = _refuse
    set_watcher_pause = _refuse
    change_job_start = replace_filter = delete_filter = set_max_running_jobs = _refuse

    def query_config_values(self, fields: list[str]) -> list[Any]:
        values: dict[str, Callable[[], Any]] = {
            **configfields.common_fields(),
            "drain_flag": self._store.is_drained,
            "watcher_pause": lambda: pause_until(
                self._store.read_setting(WATCHER_PAUSE), time.time()
            ),
            **configfields.held_fields(self._live, self._limits),
            "workers": lambda: 0,
            "busy_workers": lambda: 0,
            "max_running_jobs": lambda: 0,
            "filters": lambda: len(self._store.load_filters()),
            "held_jobs": lambda: {"paused": 0, "rate_limited": 0, "scheduled": 0},
            "accepting_jobs": lambda: False,
            "role": lambda: "standby",
            "master": self._master,
        }
        return configfields.select(fields, values)

    def query_metrics(self) -> dict[str, Any]:
        """The daemon's metrics, its role and the mirrored queue's state."""
        state = QueueState(
            role="standby",
            jobs=self._live.tally(),
            drained=self._store.is_drained(),
            limits=self._limits,
            opcodes=self._live.opcode_count(),
            opcode_bytes=self._live.input_bytes(),
        )
        return self._metrics.export(state)
