"""Keep an etcd lease alive from a thread, and say as soon as it may be lost.

The keeper renews the lease every third of its TTL. It counts the lease as
held until ``valid_until``: the time the last successful renewal was *sent*
plus the TTL etcd answered, which is never later than etcd's own expiry. When
a renewal fails it retries quickly; once ``valid_until`` passes without a
renewal, or etcd answers that the lease is gone, the keeper sets ``lost``,
calls ``on_lost`` once with the reason and stops. The owner must then stop
writing (its fenced transactions would be refused anyway) and campaign anew.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from jobqueue.errors import StorageError
from jobqueue.storage.etcdkv import EtcdKV, Lease

_log = logging.getLogger(__name__)

#: Pause between renewals that fail, in seconds (bounded by the time left).
_RETRY_INTERVAL = 0.2


class LeaseKeeper:
    """Renews one lease from a daemon thread until stopped or lost.

    ``clock`` is monotonic seconds, passed in for tests. ``on_lost`` runs in
    the keeper's thread.
    """

    def __init__(
        self,
        kv: EtcdKV,
        lease: Lease,
        on_lost: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.lease = lease
        self.lost = threading.Event()
        self.lost_reason = ""
        self.renewals = 0
        self._on_lost = on_lost
        self._clock = clock
        self._stop = threading.Event()
        self._valid_until = lease.sent_at + lease.ttl
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{lease.lease_id:x}", daemon=True
        )

    @property
    def interval(self) -> float:
        return self.lease.ttl / 3

    def valid_until(self) -> float:
        """The clock time until which the lease surely still exists in etcd."""
        return self._valid_until

    def holds(self) -> bool:
        """Whether the lease surely still exists (not lost, not past valid_until)."""
        return not self.lost.is_set() and self._clock() < self._valid_until

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self, revoke: bool = True) -> None:
        """Stop renewing; with ``revoke`` also revoke the lease (deleting its keys).

        A failure to revoke is logged, not raised: the lease then ends at its TTL.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if revoke and not self.lost.is_set():
            try:
                self.kv.lease_revoke(self.lease.lease_id)
            except StorageError as exc:
                _log.warning("could not revoke etcd lease %x: %s", self.lease.lease_id, exc)

    def _run(self) -> None:
        next_renewal = self._clock() + self.interval
        while not self._stop.wait(max(0.0, next_renewal - self._clock())):
            left = self._valid_until - self._clock()
            if left <= 0:
                self._declare_lost("no renewal succeeded within the lease's TTL")
                return
            sent = self._clock()
            try:
                ttl = self.kv.lease_keepalive(self.lease.lease_id, timeout=min(left, self.interval))
            except StorageError as exc:
                _log.warning("etcd lease %x not renewed: %s", self.lease.lease_id, exc)
                next_renewal = min(self._clock() + _RETRY_INTERVAL, self._valid_until)
                continue
            if ttl <= 0:
                self._declare_lost("etcd says the lease has expired")
                return
            self.renewals += 1
            self._valid_until = sent + ttl
            next_renewal = sent + self.interval

    def _declare_lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        _log.error("etcd lease %x lost: %s", self.lease.lease_id, reason)
        self._on_lost(reason)
