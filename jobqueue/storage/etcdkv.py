"""The etcd calls the etcd store makes, typed; failures are StorageError.

This module knows etcd's requests and nothing of jobs. It reads a key, or a
prefix page by page at one revision; writes in transactions conditioned on
a leadership ``Fence`` and on mod_revisions, saying which condition failed
when refused; reserves blocks of a counter; grants, renews and revokes
leases; campaigns for the leader key; compacts; and opens the watch streams
``etcdwatch.PrefixWatch`` follows. How requests reach etcd (endpoints,
deadlines, TLS, tokens, what a failure means) is ``etcdconn``'s concern;
doc/ha.rst describes each call.
"""

from __future__ import annotations

import base64
import errno
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import requests

from jobqueue.errors import ProgrammerError, StorageError
from jobqueue.storage.etcdconn import EtcdConnection, EtcdSettings

#: Header asking etcd to end a watch when the member loses its leader.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
#: etcd's default --max-txn-ops: operations in one transaction.
MAX_TXN_OPS = 128


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd keeps it; revisions are etcd's global revision numbers."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


@dataclass(frozen=True)
class Fence:
    """Leadership held: the leader key exists with this create_revision.

    A new leader creates the key anew, so its create_revision differs: a
    write conditioned on the fence can never succeed for a deposed leader.
    """

    key: bytes
    create_revision: int


@dataclass(frozen=True)
class TxnResult:
    """How a conditioned transaction ended.

    ``revision`` is etcd's revision after the transaction (the one it wrote
    at when it succeeded). When refused, ``fenced_out`` says the fence did
    not hold and ``found`` maps each key whose mod_revision differed to the
    mod_revision it has (0: absent).
    """

    succeeded: bool
    revision: int
    fenced_out: bool = False
    found: Mapping[bytes, int] = field(default_factory=dict)

    @property
    def conflicts(self) -> tuple[bytes, ...]:
        """The keys whose mod_revision differed."""
        return tuple(self.found)


class Allocation(NamedTuple):
    """A block of counter values, or ``numbers`` None when fenced out."""

    numbers: range | None
    revision: int


class Campaign(NamedTuple):
    """The outcome of ``campaign``: our fence if we won, else who holds the key.

    ``revision`` is etcd's revision when the campaign was decided: a watch
    from the next one sees the holder's key go.
    """

    won: bool
    fence: Fence | None
    holder: KeyValue | None
    revision: int = 0


class Lease(NamedTuple):
    """A granted lease, the TTL etcd granted (it raises one that is too small)
    and the clock time the grant was sent: the lease surely lives until
    ``sent_at + ttl``."""

    lease_id: int
    ttl: int
    sent_at: float


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def parse_kv(item: Mapping[str, Any]) -> KeyValue:
    """A KeyValue from the gateway's JSON (int64 fields come as strings, zeros omitted)."""
    return KeyValue(
        key=_unb64(item.get("key")),
        value=_unb64(item.get("value")),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
        version=int(item.get("version", 0)),
        lease=int(item.get("lease", 0)),
    )


def _revision(answer: Mapping[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


class EtcdKV:
    """The calls the etcd store makes, over one connection; safe for many threads."""

    def __init__(self, settings: EtcdSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.connection = EtcdConnection(settings, clock)
        self.settings = settings
        self._clock = clock

    def call(
        self, path: str, body: Mapping[str, Any], *, write: bool, timeout: float | None = None
    ) -> dict[str, Any]:
        """One raw gateway request (see EtcdConnection.call)."""
        return self.connection.call(path, body, write=write, timeout=timeout)

    def close(self) -> None:
        self.connection.close()

    # -- reads ---------------------------------------------------------------

    def revision(self, timeout: float | None = None) -> int:
        """etcd's current revision (a linearizable read)."""
        answer = self.call(
            "/kv/range", {"key": _b64(b"\0"), "count_only": True}, write=False, timeout=timeout
        )
        return _revision(answer)

    def get(self, key: bytes, timeout: float | None = None) -> KeyValue | None:
        """The key, or None when it does not exist."""
        return self.get_at(key, timeout)[0]

    def get_at(self, key: bytes, timeout: float | None = None) -> tuple[KeyValue | None, int]:
        """The key (None when it does not exist) and etcd's revision when it was read."""
        answer = self.call("/kv/range", {"key": _b64(key)}, write=False, timeout=timeout)
        kvs = answer.get("kvs") or []
        return (parse_kv(kvs[0]) if kvs else None), _revision(answer)

    def range_prefix(
        self,
        prefix: bytes,
        *,
        revision: int = 0,
        page_size: int = 1000,
        keys_only: bool = False,
        timeout: float | None = None,
    ) -> Iterator[KeyValue]:
        """Every key under ``prefix`` in key order, read page by page at one revision.

        ``revision`` 0 reads at the revision of the first page; pass
        ``revision()`` to know it and watch from the next one. Each page is
        one call with its own deadline. With ``keys_only`` the values are
        not sent (empty). Raises StorageError (ESTALE) when the revision
        gets compacted while paging.
        """
        start, end = prefix, prefix_end(prefix)
        while True:
            body: dict[str, Any] = {"key": _b64(start), "range_end": _b64(end), "limit": page_size}
            if keys_only:
                body["keys_only"] = True
            if revision:
                body["revision"] = revision
            answer = self.call("/kv/range", body, write=False, timeout=timeout)
            revision = revision or _revision(answer)
            kvs = [parse_kv(item) for item in answer.get("kvs") or []]
            yield from kvs
            if not answer.get("more") or not kvs:
                return
            start = kvs[-1].key + b"\0"

    def last_key(self, prefix: bytes, timeout: float | None = None) -> bytes | None:
        """The greatest key under ``prefix`` (one request, no value), None if there is none."""
        body = {
            "key": _b64(prefix),
            "range_end": _b64(prefix_end(prefix)),
            "limit": 1,
            "keys_only": True,
            "sort_order": "DESCEND",
            "sort_target": "KEY",
        }
        kvs = self.call("/kv/range", body, write=False, timeout=timeout).get("kvs") or []
        return parse_kv(kvs[0]).key if kvs else None

    def get_many(
        self, keys: Iterable[bytes], timeout: float | None = None
    ) -> list[KeyValue | None]:
        """Several keys read in one request at one revision, in order (None: absent).

        At most MAX_TXN_OPS keys (ProgrammerError otherwise).
        """
        wanted = list(keys)
        if len(wanted) > MAX_TXN_OPS:
            raise ProgrammerError(f"more than {MAX_TXN_OPS} keys in one read")
        if not wanted:
            return []
        body = {"success": [{"request_range": {"key": _b64(key)}} for key in wanted]}
        answer = self.call("/kv/txn", body, write=False, timeout=timeout)
        return [parse_kv(kvs[0]) if kvs else None for kvs in _ranges(answer)]

    # -- writes --------------------------------------------------------------

    def txn(
        self,
        *,
        fence: Fence | None,
        puts: Mapping[bytes, bytes] = {},
        deletes: Iterable[bytes] = (),
        expect: Mapping[bytes, int] = {},
        timeout: float | None = None,
    ) -> TxnResult:
        """Put and delete keys in one transaction if ``fence`` and ``expect`` hold.

        ``expect`` maps keys to the mod_revision they must have (0: must not
        exist). A refused transaction writes nothing and reports why. Raises
        StorageError on failure (EFBIG when the request is over etcd's limit,
        in which case nothing was written) and ProgrammerError when a key is
        both put and deleted or there are more operations than etcd allows
        (etcd counts the compares, the fence's included, and the operations
        apart: each at most MAX_TXN_OPS).
        """
        deleted = list(deletes)
        if set(puts) & set(deleted):
            raise ProgrammerError("a key is both put and deleted in one transaction")
        compares = len(expect) + (fence is not None)
        if max(len(puts) + len(deleted), compares) > MAX_TXN_OPS:
            raise ProgrammerError(f"more than {MAX_TXN_OPS} operations in one transaction")
        compare = [_mod_equal(key, mod) for key, mod in expect.items()]
        checked = list(expect)
        if fence is not None:
            compare.insert(0, _create_equal(fence.key, fence.create_revision))
            checked.insert(0, fence.key)
        success = [_put(key, value) for key, value in puts.items()]
        success += [{"request_delete_range": {"key": _b64(key)}} for key in deleted]
        failure = [{"request_range": {"key": _b64(key), "keys_only": True}} for key in checked]
        body = {"compare": compare, "success": success, "failure": failure}
        answer = self.call("/kv/txn", body, write=True, timeout=timeout)
        if answer.get("succeeded"):
            return TxnResult(True, _revision(answer))
        found = _ranges(answer)
        fenced_out = fence is not None and _create_of(found[0]) != fence.create_revision
        watched = found[1:] if fence is not None else found
        current = {
            key: _mod_of(kvs)
            for (key, mod), kvs in zip(expect.items(), watched, strict=True)
            if _mod_of(kvs) != mod
        }
        return TxnResult(False, _revision(answer), fenced_out, current)

    def allocate(
        self,
        key: bytes,
        count: int,
        *,
        fence: Fence | None,
        attempts: int = 8,
        timeout: float | None = None,
    ) -> Allocation:
        """Reserve ``count`` consecutive numbers from the counter at ``key``.

        The key holds the last number handed out (absent: 0) in decimal; the
        block is ``last+1 .. last+count``, stored in one transaction that also
        checks the fence, so no number is ever given twice. Retries when
        another writer moved the counter meanwhile. Raises StorageError when
        the counter is not a number or keeps moving.
        """
        if count < 1:
            raise ProgrammerError("allocate needs a positive count")
        for _ in range(attempts):
            current = self.get(key, timeout=timeout)
            stored, mod = (current.value, current.mod_revision) if current else (b"0", 0)
            if not stored.isdigit():
                raise StorageError(f"etcd counter {key!r} holds {stored!r}", errno.EIO)
            last = int(stored)
            result = self.txn(
                fence=fence,
                puts={key: str(last + count).encode()},
                expect={key: mod},
                timeout=timeout,
            )
            if result.succeeded:
                return Allocation(range(last + 1, last + count + 1), result.revision)
            if result.fenced_out:
                return Allocation(None, result.revision)
        raise StorageError(
            f"etcd counter {key!r} kept changing over {attempts} attempts", errno.EAGAIN
        )

    def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> None:
        """Drop the history before ``revision``; already compacted is fine."""
        body = {"revision": revision, "physical": physical}
        try:
            self.call("/kv/compaction", body, write=True, timeout=timeout)
        except StorageError as exc:
            if exc.args[1] != errno.ESTALE:
                raise

    # -- leases and leadership -----------------------------------------------

    def lease_grant(self, ttl: int, timeout: float | None = None) -> Lease:
        """A new lease of ``ttl`` seconds (etcd may grant more)."""
        sent_at = self._clock()
        answer = self.call("/lease/grant", {"TTL": ttl}, write=True, timeout=timeout)
        return Lease(int(answer["ID"]), int(answer["TTL"]), sent_at)

    def lease_keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Renew the lease; its new TTL in seconds, or 0 when it has expired."""
        answer = self.call("/lease/keepalive", {"ID": lease_id}, write=True, timeout=timeout)
        return max(0, int(answer.get("result", {}).get("TTL", 0)))

    def lease_revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """Revoke the lease and delete its keys; an unknown lease is already gone."""
        try:
            self.call("/kv/lease/revoke", {"ID": lease_id}, write=True, timeout=timeout)
        except StorageError as exc:
            if "lease not found" not in str(exc):
                raise

    def campaign(
        self, key: bytes, value: bytes, lease_id: int, timeout: float | None = None
    ) -> Campaign:
        """Create the leader ``key`` bound to the lease unless it exists.

        Won: our fence. Lost: the current holder (its value names it).
        """
        body = {
            "compare": [_create_equal(key, 0)],
            "success": [_put(key, value, lease_id)],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        answer = self.call("/kv/txn", body, write=True, timeout=timeout)
        revision = _revision(answer)
        if answer.get("succeeded"):
            mine = KeyValue(key, value, revision, revision, 1, lease_id)
            return Campaign(True, Fence(key, revision), mine, revision)
        kvs = _ranges(answer)[0]
        return Campaign(False, None, parse_kv(kvs[0]) if kvs else None, revision)

    def resign(self, fence: Fence, timeout: float | None = None) -> bool:
        """Delete the leader key if it is still ours; whether it was."""
        return self.txn(fence=fence, deletes=[fence.key], timeout=timeout).succeeded

    # -- watch stream --------------------------------------------------------

    def open_watch(
        self,
        session: requests.Session,
        endpoint: str,
        prefix: bytes,
        start_revision: int,
        idle_timeout: float,
    ) -> requests.Response:
        """Start a watch stream on ``prefix`` from ``start_revision`` (see PrefixWatch).

        etcd ends the stream when the member loses its leader. Raises
        requests.RequestException when the endpoint cannot be reached.
        """
        create = {
            "key": _b64(prefix),
            "range_end": _b64(prefix_end(prefix)),
            "start_revision": start_revision,
            "progress_notify": True,
        }
        return self.connection.stream(
            session, endpoint, "/watch", {"create_request": create}, _REQUIRE_LEADER, idle_timeout
        )


def _put(key: bytes, value: bytes, lease_id: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease_id:
        put["lease"] = lease_id
    return {"request_put": put}


def _create_equal(key: bytes, create_revision: int) -> dict[str, Any]:
    return {
        "key": _b64(key),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": create_revision,
    }


def _mod_equal(key: bytes, mod_revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}


def _ranges(answer: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """The kvs of each range in a transaction's answer, in order."""
    return [
        list(item.get("response_range", {}).get("kvs") or [])
        for item in answer.get("responses") or []
    ]


def _create_of(kvs: list[dict[str, Any]]) -> int:
    return int(kvs[0].get("create_revision", 0)) if kvs else 0


def _mod_of(kvs: list[dict[str, Any]]) -> int:
    return int(kvs[0].get("mod_revision", 0)) if kvs else 0
