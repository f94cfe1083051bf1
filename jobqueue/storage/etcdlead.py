"""Leadership of an etcd queue: a leader key bound to a lease, and the fence it gives.

A daemon campaigns by granting itself a lease and creating ``<prefix>/leader``
bound to it, holding its name, only if the key does not exist. The winner's
*fence* is the key's create_revision: the store conditions every write on
it, so once the lease ends (etcd deletes the key) or another daemon has
created the key anew, etcd refuses every write of the old leader, whatever
that leader believes. A ``LeaseKeeper`` renews the lease and says, from our
own clock, when it may be gone; ``lost`` is set then, or as soon as a write
is refused on the fence, and from then on the store refuses writes without
asking etcd. A daemon that waits to lead watches the leader key and
campaigns again when it is deleted, rather than polling.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from jobqueue.errors import NotLeaderError, StorageError
from jobqueue.storage.base import Leadership
from jobqueue.storage.etcdkv import Campaign, EtcdKV, Fence
from jobqueue.storage.etcdlease import LeaseKeeper
from jobqueue.storage.etcdwatch import EventKind, PrefixWatch, WatchEvent

_log = logging.getLogger(__name__)

NOT_LEADER = "this daemon no longer leads the job queue in etcd"


class EtcdLeadership(Leadership):
    """One handle's leadership of the queue whose leader key is ``key``.

    ``held_once`` tells the store to fence its writes (from the first
    acquire on); ``fence_for_write`` gives the fence or raises
    NotLeaderError. ``_lock`` guards ``_fence`` and ``_keeper``;
    ``_acquiring`` serialises acquire and release.
    """

    def __init__(
        self,
        kv: EtcdKV,
        key: bytes,
        name: str,
        ttl: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.name = name
        self.held_once = False
        self._kv = kv
        self._key = key
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._acquiring = threading.Lock()
        self._fence: Fence | None = None
        self._keeper: LeaseKeeper | None = None

    @property
    def lease_id(self) -> int | None:
        """The lease our leadership hangs on while we lead (for tools and tests)."""
        with self._lock:
            return self._keeper.lease.lease_id if self._keeper and self._fence else None

    def acquire(self, wait: float) -> bool:
        """Campaign until we lead or ``wait`` seconds passed; watches the key meanwhile.

        Raises StorageError when etcd cannot be reached.
        """
        deadline = self._clock() + max(0.0, wait)
        with self._acquiring:
            if self._leading():
                return True
            self._drop_keeper()  # of a leadership lost before
            while True:
                holder, revision = self._kv.get_at(self._key)
                if holder is None:  # a lease and a campaign only when the seat looks free
                    outcome = self._campaign()
                    if outcome.won:
                        return True
                    holder, revision = outcome.holder, outcome.revision
                left = deadline - self._clock()
                if left <= 0:
                    return False
                if holder is not None:
                    self._wait_for_vacancy(revision, left)

    def leading(self) -> bool:
        """Whether this handle leads now (by our own clock; etcd has the last word)."""
        return self._leading()

    def _leading(self) -> bool:
        with self._lock:
            return self._fence is not None and self._keeper is not None and self._keeper.holds()

    def _drop_keeper(self) -> None:
        with self._lock:
            keeper, self._keeper, self._fence = self._keeper, None, None
        if keeper is not None:
            keeper.stop(revoke=True)

    def _campaign(self) -> Campaign:
        """One attempt: a new lease and the leader key; the lease is revoked if we lost."""
        lease = self._kv.lease_grant(self._ttl)
        try:
            outcome = self._kv.campaign(self._key, self.name.encode("utf-8"), lease.lease_id)
        except StorageError:
            self._revoke_quietly(lease.lease_id)
            raise
        if not outcome.won or outcome.fence is None:
            self._revoke_quietly(lease.lease_id)
            return outcome
        keeper = LeaseKeeper(self._kv, lease, on_lost=self.declare_lost, clock=self._clock)
        with self._lock:
            self._fence, self._keeper = outcome.fence, keeper
            self.held_once = True
            self.lost.clear()
        keeper.start()
        _log.info("Leading the job queue at %r as %s", self._key, self.name)
        return outcome

    def _revoke_quietly(self, lease_id: int) -> None:
        with contextlib.suppress(StorageError):  # unrevoked, it ends at its TTL
            self._kv.lease_revoke(lease_id)

    def _wait_for_vacancy(self, revision: int, timeout: float) -> None:
        """Return once the leader key seen at ``revision`` may be gone, or after ``timeout``."""
        deadline = self._clock() + timeout
        watch = PrefixWatch(self._kv, self._key, revision + 1).start()
        try:
            while (left := deadline - self._clock()) > 0:
                event = watch.get(timeout=left)
                if event is None or not isinstance(event, WatchEvent):  # time up, or compacted
                    return
                if event.kv.key == self._key and event.kind == EventKind.DELETE:
                    return
        finally:
            watch.stop()

    def fence_for_write(self) -> Fence | None:
        """The fence to condition a write on; None if this handle never led.

        Raises NotLeaderError when it led and no longer does (released,
        lost, or the lease may have expired by our own clock).
        """
        with self._lock:
            if not self.held_once:
                return None
            fence, keeper = self._fence, self._keeper
        if fence is None or keeper is None:
            raise NotLeaderError(NOT_LEADER, 0)
        if not keeper.holds():
            self.declare_lost("the lease was not renewed in time")
            raise NotLeaderError(NOT_LEADER, 0)
        return fence

    def declare_lost(self, reason: str) -> None:
        """Leadership is gone (the keeper gave up, or etcd refused a write on the fence)."""
        with self._lock:
            if self._fence is None:
                return
            self._fence = None
        _log.error("Lost the leadership of the job queue at %r: %s", self._key, reason)
        self.lost.set()

    def release(self) -> None:
        """Stop leading: stop renewing and revoke the lease, which deletes the leader key."""
        with self._acquiring:
            self._drop_keeper()

    def holder(self) -> str | None:
        """The leader's name from the leader key; None when nobody leads.

        Raises StorageError when etcd cannot be reached.
        """
        current = self._kv.get(self._key)
        return None if current is None else current.value.decode("utf-8", "replace")
