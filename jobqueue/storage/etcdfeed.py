"""The etcd store's change feed: a watch of the queue's prefix, reported per job id.

Every put or delete of ``<prefix>/jobs/<id>`` or ``<prefix>/archive/<id>``
(a job created, replaced, archived, discarded or pruned) is reported with
the id, in etcd's order, from a thread of the feed's own. The watch bridges
reconnects without a gap (``etcdwatch.PrefixWatch``); when the history it
needs was compacted away, the feed reports None ("anything may have
changed") and watches anew from the current revision. Writes through any
handle are reported, this process's own included (the contract allows
spurious reports).
"""

from __future__ import annotations

import logging
import threading

from jobqueue.errors import StorageError
from jobqueue.storage.base import ChangeCallback, ChangeFeed
from jobqueue.storage.etcdkv import EtcdKV
from jobqueue.storage.etcdlayout import Keys
from jobqueue.storage.etcdwatch import PrefixWatch, WatchCompacted

#: Seconds the feed's thread waits for a change before it looks at ``stop``.
_POLL = 0.25
#: Seconds between attempts to read etcd's revision after a compaction.
_RETRY = 0.5


class EtcdChangeFeed(ChangeFeed):
    """Reports changes of jobs under ``keys``; ``start_revision`` 0: from now on."""

    def __init__(
        self,
        kv: EtcdKV,
        keys: Keys,
        *,
        start_revision: int = 0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._kv = kv
        self._keys = keys
        self._start_revision = start_revision
        self._log = logger or logging.getLogger(__name__)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: PrefixWatch | None = None  # replaced only by the feed's thread
        #: Times the watch was compacted away and started anew.
        self.restarts = 0

    def start(self, on_change: ChangeCallback) -> None:
        """Begin reporting; StorageError when etcd cannot be reached or it was started."""
        if self._thread is not None:
            raise StorageError("The change feed was already started", 0)
        revision = self._start_revision or self._kv.revision() + 1
        self._watch = PrefixWatch(self._kv, self._keys.root, revision).start()
        self._thread = threading.Thread(
            target=self._run, args=(on_change,), name="etcd-feed", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting and close the watch; idempotent."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def _run(self, on_change: ChangeCallback) -> None:
        while not self._stop.is_set():
            watch = self._watch
            assert watch is not None
            item = watch.get(timeout=_POLL)
            if item is None:
                continue
            if isinstance(item, WatchCompacted):
                self._log.warning(
                    "etcd history compacted up to revision %d under the change feed; re-watching",
                    item.compact_revision,
                )
                if self._rewatch(watch):  # watching again first: nothing after None is missed
                    on_change(None)
                continue
            job_id = self._keys.changed_job(item.kv.key)
            if job_id is not None:
                on_change(job_id)

    def _rewatch(self, old: PrefixWatch) -> bool:
        """Replace a compacted watch by one from the current revision on; False if stopped."""
        old.stop()
        while not self._stop.is_set():
            try:
                revision = self._kv.revision()
            except StorageError as err:
                self._log.warning("Cannot restart the etcd change feed: %s", err)
                self._stop.wait(_RETRY)
                continue
            self._watch = PrefixWatch(self._kv, self._keys.root, revision + 1).start()
            self.restarts += 1
            return True
        return False
