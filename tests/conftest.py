"""Shared fixtures: the real daemon under tmp_path, real etcd clusters, loopback HTTP servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.daemon_helper import Daemon, daemons_made, state_dir_under
from tests.etcd_cluster import EtcdCluster, TlsFiles, etcd_binary
from tests.loopback_http import Serve, Server

if TYPE_CHECKING:
    import ssl

    from jobqueue.storage.etcd import EtcdJobStore
    from jobqueue.storage.etcdkv import EtcdKV


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Make daemons (not started) on one state dir under tmp_path; all are stopped after."""
    with daemons_made(state_dir_under(tmp_path)) as make:
        yield make


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A started daemon with 4 workers."""
    return daemon_factory().start()


@pytest.fixture(scope="session")
def etcd_server() -> str:
    """The etcd server binary; the test is skipped, with the reason, when there is none."""
    path, detail = etcd_binary()
    if path is None:
        pytest.skip(f"etcd tests need an etcd server: {detail}")
    return path


@pytest.fixture
def etcd_factory(tmp_path: Path, etcd_server: str) -> Iterator[Callable[..., EtcdCluster]]:
    """Start etcd clusters (``make(size, flags, tls)``) under tmp_path; all killed after."""
    made: list[EtcdCluster] = []

    def make(
        size: int = 1, flags: tuple[str, ...] = (), tls: TlsFiles | None = None
    ) -> EtcdCluster:
        cluster = EtcdCluster(etcd_server, tmp_path / f"etcd{len(made)}", size, flags, tls)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture(scope="module", params=[1, 3], ids=["1member", "3members"])
def etcd_shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, etcd_server: str
) -> Iterator[EtcdCluster]:
    """A 1-member and a 3-member cluster shared by a module's tests; never killed by them.

    Tests on it keep to a prefix of their own.
    """
    base = tmp_path_factory.mktemp(f"etcd{request.param}")
    with EtcdCluster(etcd_server, base, request.param) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd_member(
    tmp_path_factory: pytest.TempPathFactory, etcd_server: str
) -> Iterator[EtcdCluster]:
    """A 1-member cluster shared by a module's tests, each on a prefix of its own."""
    with EtcdCluster(etcd_server, tmp_path_factory.mktemp("etcd-member"), 1) as cluster:
        yield cluster


@pytest.fixture
def open_etcd_store() -> Iterator[Callable[..., EtcdJobStore]]:
    """Make etcd stores (``make(endpoints, prefix, owner=True, timeout=2.0, clock=...,
    monotonic=..., output_dir=..., **settings)``); each is closed after the test (leadership
    released)."""
    from jobqueue.storage.etcd import EtcdJobStore
    from jobqueue.storage.etcdconn import EtcdSettings
    from jobqueue.storage.etcdoptions import EtcdStoreSettings

    made: list[EtcdJobStore] = []

    def make(
        endpoints: list[str],
        prefix: str,
        *,
        owner: bool = True,
        timeout: float = 2.0,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
        output_dir: str | None = None,
        **settings: Any,
    ) -> EtcdJobStore:
        connection = EtcdSettings(tuple(endpoints), timeout=timeout)
        options: dict[str, Any] = {"owner": owner, "output_dir": output_dir}
        if clock is not None:
            options["clock"] = clock
        if monotonic is not None:
            options["monotonic"] = monotonic
        store = EtcdJobStore(EtcdStoreSettings(connection, prefix, **settings), **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def open_kv() -> Iterator[Callable[..., EtcdKV]]:
    """Make etcd clients (``make(endpoints, timeout=2.0, **settings)``); all closed after."""
    from jobqueue.storage.etcdconn import EtcdSettings
    from jobqueue.storage.etcdkv import EtcdKV

    made: list[EtcdKV] = []

    def make(endpoints: list[str], timeout: float = 2.0, **options: Any) -> EtcdKV:
        kv = EtcdKV(EtcdSettings(tuple(endpoints), timeout=timeout, **options))
        made.append(kv)
        return kv

    yield make
    for kv in made:
        kv.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start loopback HTTP servers (``start(serve, tls=None)``); all stopped after."""
    started: list[Server] = []

    def start(serve: Serve, tls: ssl.SSLContext | None = None) -> Server:
        started.append(Server(serve, tls))
        return started[-1]

    yield start
    for server in started:
        server.stop()
