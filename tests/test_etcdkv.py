"""The etcd wrapper against real etcd servers (1 and 3 members), killed and paused for real."""

from __future__ import annotations

import errno
import itertools
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from jobqueue.errors import ProgrammerError, StorageError
from jobqueue.storage.etcdkv import MAX_TXN_OPS, EtcdKV
from jobqueue.storage.etcdlease import LeaseKeeper
from jobqueue.storage.etcdwatch import EventKind, PrefixWatch, WatchCompacted, WatchEvent
from tests.etcd_cluster import EtcdCluster, etcd_binary, make_tls_files
from tests.polling import poll_until

_SERVER, _WHY_NOT = etcd_binary()
if _SERVER is None:
    pytest.skip(f"etcd tests need an etcd server: {_WHY_NOT}", allow_module_level=True)

#: Per-call deadline of the clients in the quorum test.
QUORUM_TIMEOUT = 1.0
#: etcd's default --max-request-bytes.
REQUEST_LIMIT = 1536 * 1024


def fresh_prefix() -> bytes:
    return f"/jq-test/{uuid.uuid4().hex}/".encode()


def put_many(kv: EtcdKV, items: dict[bytes, bytes]) -> int:
    """Write ``items`` in transactions of at most MAX_TXN_OPS keys; the last revision."""
    revision = 0
    keys = list(items)
    for start in range(0, len(keys), MAX_TXN_OPS):
        chunk = {key: items[key] for key in keys[start : start + MAX_TXN_OPS]}
        result = kv.txn(fence=None, puts=chunk)
        assert result.succeeded
        revision = result.revision
    return revision


def drain(watch: PrefixWatch, count: int, timeout: float = 20.0) -> list[WatchEvent]:
    """The next ``count`` events of ``watch``; fails if they do not come in time."""
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        item = watch.get(timeout=max(0.0, deadline - time.monotonic()))
        assert item is not None, f"only {len(events)} of {count} events: {watch.last_error}"
        assert isinstance(item, WatchEvent), item
        events.append(item)
    return events


# -- reads and conditioned writes -----------------------------------------------


def test_range_pages_through_many_keys_at_one_revision(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    items = {prefix + b"jobs/%08d" % number: b"%d" % number for number in range(20_000)}
    put_many(kv, items)
    kv.txn(fence=None, puts={prefix[:-1] + b"0": b"outside the prefix"})
    revision = kv.revision()
    kv.txn(fence=None, deletes=[prefix + b"jobs/00000000"], puts={prefix + b"jobs/x": b"new"})

    pinned = list(kv.range_prefix(prefix, revision=revision, page_size=1000))
    assert [(entry.key, entry.value) for entry in pinned] == list(items.items())
    now = [entry.key for entry in kv.range_prefix(prefix + b"jobs/", page_size=999)]
    assert len(now) == len(items) and now[0] == prefix + b"jobs/00000001"
    assert now[-1] == prefix + b"jobs/x"


def test_txn_writes_only_when_expected_revisions_hold(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    one, two = prefix + b"one", prefix + b"two"
    created = kv.txn(fence=None, puts={one: b"1"}, expect={one: 0})
    assert created.succeeded
    assert not kv.txn(fence=None, puts={one: b"again"}, expect={one: 0}).succeeded

    stale = kv.txn(
        fence=None, puts={one: b"x", two: b"x"}, expect={one: created.revision - 1, two: 0}
    )
    assert (stale.succeeded, stale.fenced_out, stale.conflicts) == (False, False, (one,))
    assert kv.get(two) is None
    current = kv.get(one)
    assert current is not None and current.value == b"1"

    moved = kv.txn(fence=None, puts={two: b"2"}, deletes=[one], expect={one: current.mod_revision})
    assert moved.succeeded and kv.get(one) is None
    with pytest.raises(ProgrammerError):
        kv.txn(fence=None, puts={one: b"a"}, deletes=[one])


def test_fenced_writes_refused_once_the_lease_is_revoked(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    leader_key, job = prefix + b"leader", prefix + b"jobs/1"
    first = kv.lease_grant(10)
    won = kv.campaign(leader_key, b"node-a", first.lease_id)
    assert won.won and won.fence is not None
    assert kv.txn(fence=won.fence, puts={job: b"by a"}).succeeded

    second = kv.lease_grant(10)
    lost = kv.campaign(leader_key, b"node-b", second.lease_id)
    assert not lost.won and lost.holder is not None and lost.holder.value == b"node-a"
    assert lost.holder.lease == first.lease_id

    kv.lease_revoke(first.lease_id)
    refused = kv.txn(fence=won.fence, puts={job: b"by a, deposed"})
    assert (refused.succeeded, refused.fenced_out) == (False, True)
    now_b = kv.campaign(leader_key, b"node-b", second.lease_id)
    assert now_b.won and now_b.fence is not None
    assert now_b.fence.create_revision != won.fence.create_revision
    # The key exists again, but not with a's create_revision: a stays fenced out.
    assert kv.txn(fence=won.fence, deletes=[job]).fenced_out
    assert not kv.resign(won.fence)
    assert kv.txn(fence=now_b.fence, puts={job: b"by b"}).succeeded
    stored = kv.get(job)
    assert stored is not None and stored.value == b"by b"
    assert kv.resign(now_b.fence) and kv.get(leader_key) is None
    kv.lease_revoke(second.lease_id)
    kv.lease_revoke(second.lease_id)  # an unknown lease is already gone


def test_fenced_writes_refused_once_the_lease_expires(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    lease = kv.lease_grant(1)
    assert lease.ttl >= 1
    won = kv.campaign(prefix + b"leader", b"me", lease.lease_id)
    assert won.fence is not None
    assert poll_until(lambda: kv.get(prefix + b"leader") is None, timeout=lease.ttl + 10)
    assert kv.lease_keepalive(lease.lease_id) == 0
    refused = kv.txn(fence=won.fence, puts={prefix + b"jobs/1": b"late"})
    assert refused.fenced_out and kv.get(prefix + b"jobs/1") is None


def test_lease_keeper_holds_past_the_ttl_and_revokes_on_stop(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    key = fresh_prefix() + b"leader"
    lease = kv.lease_grant(2)
    assert kv.campaign(key, b"me", lease.lease_id).won
    keeper = LeaseKeeper(kv, lease).start()
    try:
        outlived = lease.sent_at + lease.ttl + 1
        assert poll_until(lambda: time.monotonic() > outlived, timeout=lease.ttl + 5)
        assert keeper.holds() and keeper.renewals >= 3
        assert kv.get(key) is not None
    finally:
        keeper.stop(revoke=True)
    assert kv.get(key) is None and not keeper.lost.is_set()


def test_allocate_never_hands_out_a_number_twice(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    lease = kv.lease_grant(30)
    won = kv.campaign(prefix + b"leader", b"me", lease.lease_id)
    assert won.fence is not None
    serial = prefix + b"serial"
    blocks: list[range] = []

    def allocate_some() -> None:
        for _ in range(10):
            allocation = kv.allocate(serial, 7, fence=won.fence, attempts=50)
            assert allocation.numbers is not None
            blocks.append(allocation.numbers)

    threads = [threading.Thread(target=allocate_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    numbers = sorted(itertools.chain.from_iterable(blocks))
    assert numbers == list(range(1, 4 * 10 * 7 + 1))
    stored = kv.get(serial)
    assert stored is not None and stored.value == b"280"

    kv.lease_revoke(lease.lease_id)
    assert kv.allocate(serial, 5, fence=won.fence).numbers is None
    assert kv.get(serial) == stored
    kv.txn(fence=None, puts={serial: b"garbage"})
    with pytest.raises(StorageError, match="garbage"):
        kv.allocate(serial, 1, fence=None)


def test_requests_over_the_size_limit_fail_cleanly_and_write_nothing(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    near = b"n" * (REQUEST_LIMIT - 4096)
    assert kv.txn(fence=None, puts={prefix + b"near": near}).succeeded
    stored = kv.get(prefix + b"near")
    assert stored is not None and stored.value == near

    for size in (REQUEST_LIMIT + 1, 3 * 1024 * 1024):  # etcd's limit, then gRPC's
        with pytest.raises(StorageError) as caught:
            kv.txn(fence=None, puts={prefix + b"small": b"s", prefix + b"near": b"x" * size})
        assert caught.value.args[1] == errno.EFBIG, caught.value
        assert "too large" in str(caught.value) or "larger than max" in str(caught.value)
        assert kv.get(prefix + b"small") is None
        assert kv.get(prefix + b"near") == stored


# -- watches --------------------------------------------------------------------


def test_watch_delivers_puts_and_deletes_in_order(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    watch = PrefixWatch(kv, prefix, kv.revision() + 1).start()
    try:
        kv.txn(fence=None, puts={prefix + b"a": b"1", prefix + b"b": b"1"})
        kv.txn(fence=None, puts={prefix[:-1] + b"0": b"outside"})
        kv.txn(fence=None, puts={prefix + b"a": b"2"}, deletes=[prefix + b"b"])
        big = b"v" * (REQUEST_LIMIT - 4096)
        kv.txn(fence=None, puts={prefix + b"big": big})
        events = drain(watch, 5)
    finally:
        watch.stop()
    seen = [(event.kind, event.kv.key[len(prefix) :], event.kv.value) for event in events]
    assert seen == [
        (EventKind.PUT, b"a", b"1"),
        (EventKind.PUT, b"b", b"1"),
        (EventKind.PUT, b"a", b"2"),
        (EventKind.DELETE, b"b", b""),
        (EventKind.PUT, b"big", big),
    ]
    revisions = [event.kv.mod_revision for event in events]
    assert revisions == sorted(revisions) and watch.next_revision == revisions[-1] + 1
    assert watch.get(timeout=0) is None


def test_watch_reports_compaction_and_compact_is_idempotent(
    etcd_shared: EtcdCluster, open_kv: Callable[..., EtcdKV]
) -> None:
    kv = open_kv(etcd_shared.endpoints)
    prefix = fresh_prefix()
    first = kv.txn(fence=None, puts={prefix + b"a": b"1"}).revision
    last = kv.txn(fence=None, puts={prefix + b"a": b"2"}).revision
    kv.compact(last)
    kv.compact(last)
    with pytest.raises(StorageError) as caught:
        list(kv.range_prefix(prefix, revision=first))
    assert caught.value.args[1] == errno.ESTALE
    watch = PrefixWatch(kv, prefix, first).start()
    try:
        notice = watch.get(timeout=10)
    finally:
        watch.stop()
    assert isinstance(notice, WatchCompacted) and notice.compact_revision >= last


def test_watch_resumes_after_the_member_restarts(
    etcd_factory: Callable[..., EtcdCluster], open_kv: Callable[..., EtcdKV]
) -> None:
    cluster = etcd_factory(1)
    kv = open_kv(cluster.endpoints)
    prefix = fresh_prefix()
    watch = PrefixWatch(kv, prefix, kv.revision() + 1).start()
    try:
        kv.txn(fence=None, puts={prefix + b"1": b"before"})
        assert drain(watch, 1)[0].kv.value == b"before"
        cluster.restart(cluster.members[0])
        kv.txn(fence=None, puts={prefix + b"2": b"after"})
        kv.txn(fence=None, deletes=[prefix + b"1"])
        events = drain(watch, 2)
    finally:
        watch.stop()
    assert [(e.kind, e.kv.key) for e in events] == [
        (EventKind.PUT, prefix + b"2"),
        (EventKind.DELETE, prefix + b"1"),
    ]
    assert watch.reconnects >= 1 and watch.get(timeout=0) is None


def test_watch_moves_to_another_member_without_gap_or_repeat(
    etcd_factory: Callable[..., EtcdCluster], open_kv: Callable[..., EtcdKV]
) -> None:
    cluster = etcd_factory(3)
    kv = open_kv(cluster.endpoints)
    prefix = fresh_prefix()
    watch = PrefixWatch(kv, prefix, kv.revision() + 1).start()
    writer = open_kv(cluster.endpoints[1:])
    try:
        assert watch.connected.wait(10)
        for number in range(5):
            writer.txn(fence=None, puts={prefix + b"%d" % number: b"x"})
        cluster.members[0].kill9()  # the member the watch is on (maybe the raft leader)
        cluster.wait_healthy()  # writes wait for a new raft leader
        for number in range(5, 10):
            writer.txn(fence=None, puts={prefix + b"%d" % number: b"x"})
        events = drain(watch, 10)
    finally:
        watch.stop()
    assert [event.kv.key for event in events] == [prefix + b"%d" % n for n in range(10)]
    assert watch.reconnects >= 1 and watch.get(timeout=0) is None


# -- lost quorum ------------------------------------------------------------------


def test_calls_fail_in_time_without_quorum_and_work_again_after(
    etcd_factory: Callable[..., EtcdCluster], open_kv: Callable[..., EtcdKV]
) -> None:
    cluster = etcd_factory(3)
    kv = open_kv(cluster.endpoints, timeout=QUORUM_TIMEOUT)
    prefix = fresh_prefix()
    lease = kv.lease_grant(2)
    won = kv.campaign(prefix + b"leader", b"me", lease.lease_id)
    assert won.fence is not None
    lost = threading.Event()
    keeper = LeaseKeeper(kv, lease, on_lost=lambda reason: lost.set()).start()
    watch = PrefixWatch(kv, prefix, kv.revision() + 1).start()
    try:
        assert watch.connected.wait(10)
        gone = cluster.members[1:]
        for member in gone:
            member.kill9()
        calls: list[Callable[[], object]] = [
            lambda: kv.get(prefix + b"x"),
            lambda: kv.txn(fence=won.fence, puts={prefix + b"x": b"1"}),
            lambda: kv.allocate(prefix + b"serial", 1, fence=won.fence),
            lambda: kv.lease_grant(5),
            lambda: kv.revision(),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StorageError) as caught:
                call()
            assert time.monotonic() - started < QUORUM_TIMEOUT + 1.0, caught.value
            assert caught.value.args[1] in (errno.ETIMEDOUT, errno.EAGAIN, errno.ECONNREFUSED)
        assert lost.wait(lease.ttl + QUORUM_TIMEOUT + 1.0), "the keeper never gave the lease up"
        assert not keeper.holds()

        for member in gone:
            cluster.restart(member, wait=False)
        cluster.wait_healthy()
        assert poll_until(lambda: _answers(kv), timeout=20)
        assert kv.txn(fence=None, puts={prefix + b"after": b"1"}).succeeded
        # The write of x timed out with its outcome unknown: the surviving
        # member may hold it in its log and commit it once quorum is back,
        # but then before any later write, never after it. The restored
        # cluster may also expire the lost lease and delete the leader key
        # first. Nothing else may come before our own write.
        events = drain(watch, 1)
        while events[-1].kv.key != prefix + b"after" and len(events) < 3:
            events += drain(watch, 1)
        seen = [(event.kv.key, event.kind) for event in events]
        assert seen[-1][0] == prefix + b"after", seen
        allowed = {(prefix + b"x", EventKind.PUT), (prefix + b"leader", EventKind.DELETE)}
        assert set(seen[:-1]) <= allowed, seen
    finally:
        watch.stop()
        keeper.stop(revoke=False)
    assert watch.get(timeout=0) is None


def _answers(kv: EtcdKV) -> bool:
    try:
        kv.revision()
    except StorageError:
        return False
    return True


def test_a_paused_member_is_left_for_the_others(
    etcd_factory: Callable[..., EtcdCluster], open_kv: Callable[..., EtcdKV]
) -> None:
    cluster = etcd_factory(3)
    kv = open_kv(cluster.endpoints, timeout=1.0)
    paused = cluster.members[0]
    paused.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            kv.get(b"k")  # the first endpoint takes it and never answers
        assert caught.value.args[1] == errno.ETIMEDOUT
        assert time.monotonic() - started < 2.0
        # The others answer (after electing a leader if the paused one was it).
        assert poll_until(lambda: _answers(kv), timeout=15)
        assert kv.connection.endpoint_order()[0] != paused.client_url
        assert all(_answers(kv) for _ in range(5))
    finally:
        paused.resume()


# -- TLS and authentication -------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_tls_with_client_certificate(
    etcd_factory: Callable[..., EtcdCluster], open_kv: Callable[..., EtcdKV], tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    cluster = etcd_factory(1, tls=tls)
    assert cluster.endpoints[0].startswith("https://")
    kv = open_kv(
        cluster.endpoints,
        ca_file=str(tls.ca),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    )
    prefix = fresh_prefix()
    watch = PrefixWatch(kv, prefix, kv.revision() + 1).start()
    try:
        assert kv.txn(fence=None, puts={prefix + b"k": b"v"}).succeeded
        assert drain(watch, 1)[0].kv.value == b"v"
    finally:
        watch.stop()
    without_certificate = open_kv(cluster.endpoints, ca_file=str(tls.ca))
    unknown_ca = open_kv(cluster.endpoints)
    for refused in (without_certificate, unknown_ca):
        with pytest.raises(StorageError) as caught:
            refused.get(prefix + b"k")
        assert caught.value.args[1] == errno.EACCES, caught.value


def test_user_and_password_and_a_token_that_expires(
    etcd_factory: Callable[..., EtcdCluster], open_kv: Callable[..., EtcdKV]
) -> None:
    cluster = etcd_factory(1, flags=("--auth-token-ttl=1",))
    admin = open_kv(cluster.endpoints)
    admin.call("/auth/role/add", {"name": "root"}, write=True)
    admin.call("/auth/user/add", {"name": "root", "password": "secret"}, write=True)
    admin.call("/auth/user/grant", {"user": "root", "role": "root"}, write=True)
    admin.call("/auth/enable", {}, write=True)

    with pytest.raises(StorageError) as refused:
        admin.get(b"k")
    assert refused.value.args[1] == errno.EACCES
    with pytest.raises(StorageError) as wrong:
        open_kv(cluster.endpoints, user="root", password="guess").get(b"k")
    assert wrong.value.args[1] == errno.EACCES

    kv = open_kv(cluster.endpoints, user="root", password="secret")
    prefix = fresh_prefix()
    watch = PrefixWatch(kv, prefix, kv.revision() + 1).start()
    try:
        assert kv.txn(fence=None, puts={prefix + b"1": b"v"}).succeeded
        token = kv.connection.token
        # The token lives one second of idleness; the next call gets a new one.
        stale = time.monotonic() + 3
        assert poll_until(lambda: time.monotonic() > stale, timeout=5)
        assert kv.txn(fence=None, puts={prefix + b"2": b"v"}).succeeded
        assert [e.kv.key for e in drain(watch, 2)] == [prefix + b"1", prefix + b"2"]
    finally:
        watch.stop()
    assert kv.connection.token != token
