"""Follow every change under an etcd prefix from a revision on, across reconnects.

A ``PrefixWatch`` runs one thread that holds a watch stream open on one
endpoint and puts each change, in etcd's order, on a queue the owner reads
with ``get``. It remembers the revision after the last change it delivered;
when the stream breaks (the member died, was paused past ``idle_timeout``,
or lost its leader: the stream asks etcd to end it then) it opens a new one
on the next endpoint from that revision, so nothing is missed or repeated.

The one thing it cannot bridge is compaction: when the history it needs is
gone it delivers ``WatchCompacted`` and stops. The owner then reads the
prefix afresh (``EtcdKV.range_prefix`` at ``EtcdKV.revision()``) and starts
a new watch from the revision after that.

An idle stream (no change for ``idle_timeout``) is reopened too, which costs
one request; etcd's progress notifications (``--experimental-watch-progress-
notify-interval``) let the watch know it is alive without reopening.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from jobqueue.errors import StorageError
from jobqueue.storage.etcdkv import EtcdKV, KeyValue, parse_kv

_log = logging.getLogger(__name__)

#: Shortest and longest pause before reconnecting, in seconds.
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 1.0


class EventKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    """One change; ``kv.mod_revision`` is the revision it happened at.

    A delete carries the key and that revision, with an empty value.
    """

    kind: EventKind
    kv: KeyValue


@dataclass(frozen=True)
class WatchCompacted:
    """History from the watched revision on is compacted away; the watch has ended."""

    compact_revision: int


class _StreamEnded(Exception):
    """The stream ended in a way that a new stream can recover from."""


class PrefixWatch:
    """Changes under ``prefix`` from ``start_revision`` on, delivered through ``get``.

    ``connected`` is set while a stream is open and acknowledged by etcd.
    """

    def __init__(
        self, kv: EtcdKV, prefix: bytes, start_revision: int, *, idle_timeout: float = 10.0
    ) -> None:
        self.kv = kv
        self.prefix = prefix
        self.idle_timeout = idle_timeout
        self.connected = threading.Event()
        self.reconnects = 0
        self.last_error = ""
        self._next_revision = start_revision
        self._events: queue.Queue[WatchEvent | WatchCompacted] = queue.Queue()
        self._session = kv.connection.new_session()
        self._endpoint = kv.connection.endpoint_order()[0]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: requests.Response | None = None  # under _lock
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)

    @property
    def next_revision(self) -> int:
        """The revision a new stream would start from: one past the last change delivered."""
        return self._next_revision

    def start(self) -> PrefixWatch:
        self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> WatchEvent | WatchCompacted | None:
        """The next change (or the compaction notice); None if none came within ``timeout``."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        """End the stream and the thread; events already queued stay readable."""
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shut(response)
        self._thread.join()
        self._session.close()

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._stop.is_set():
            endpoint = self._endpoint
            try:
                response = self.kv.open_watch(
                    self._session, endpoint, self.prefix, self._next_revision, self.idle_timeout
                )
            except (requests.RequestException, StorageError) as exc:
                backoff = self._broken(endpoint, str(exc), backoff)
                continue
            with self._lock:
                self._response = response
            if self._stop.is_set():  # stop() may have looked before the stream was there
                response.close()
                return
            try:
                if self._follow(response):
                    return
                reason = "stream closed by etcd"
            except (_StreamEnded, requests.RequestException, ValueError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                with self._lock:
                    self._response = None
                response.close()
            if self.connected.is_set():  # it worked for a while: retry at once
                self.connected.clear()
                backoff = _BACKOFF_MIN
            backoff = self._broken(endpoint, reason, backoff)

    def _broken(self, endpoint: str, reason: str, backoff: float) -> float:
        """Note a broken stream, move to the next endpoint, pause; the next pause."""
        if self._stop.is_set():
            return backoff
        self.last_error = f"{endpoint}: {reason}"
        self.reconnects += 1
        _log.info("etcd watch on %r reconnecting: %s", self.prefix, self.last_error)
        endpoints = self.kv.settings.endpoints
        self._endpoint = endpoints[(endpoints.index(endpoint) + 1) % len(endpoints)]
        self._stop.wait(backoff)
        return min(backoff * 2, _BACKOFF_MAX)

    def _follow(self, response: requests.Response) -> bool:
        """Deliver the stream's changes; True when it ended for good (compacted).

        Raises _StreamEnded or a transport error when a new stream should follow.
        """
        for line in _lines(response):
            message = json.loads(line)
            if "error" in message:
                raise _StreamEnded(str(message["error"].get("message", message["error"])))
            result: dict[str, Any] = message.get("result") or {}
            if result.get("canceled"):
                compacted = int(result.get("compact_revision", 0))
                if compacted:
                    self._events.put(WatchCompacted(compacted))
                    return True
                raise _StreamEnded(str(result.get("cancel_reason") or "watch canceled"))
            if result.get("created"):
                self.connected.set()
                continue
            self._deliver(result)
        return False

    def _deliver(self, result: dict[str, Any]) -> None:
        events = result.get("events") or []
        for event in events:
            kv = parse_kv(event["kv"])
            kind = EventKind.DELETE if event.get("type") == "DELETE" else EventKind.PUT
            self._events.put(WatchEvent(kind, kv))
            self._next_revision = kv.mod_revision + 1
        if not events:  # a progress notification: nothing up to this revision is pending
            revision = int(result.get("header", {}).get("revision", 0))
            self._next_revision = max(self._next_revision, revision + 1)


def _lines(response: requests.Response) -> Iterator[bytes]:
    """The newline-separated JSON messages of a watch stream, as they arrive."""
    pending = bytearray()
    for chunk in response.iter_content(chunk_size=None):
        searched = len(pending)
        pending += chunk
        end = pending.find(b"\n", searched)
        while end >= 0:
            line = bytes(pending[:end])
            del pending[: end + 1]
            if line.strip():
                yield line
            end = pending.find(b"\n")


def _shut(response: requests.Response) -> None:
    """Wake a thread blocked reading ``response`` by shutting its socket down."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
