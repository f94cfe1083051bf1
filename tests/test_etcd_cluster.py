"""The test helper that runs real etcd servers: version gate, start, kill, pause, restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.etcd_cluster import EtcdCluster, etcd_binary


def fake_etcd(directory: Path, version: str) -> str:
    script = directory / f"etcd-{version}"
    script.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\necho 'Git SHA: x'\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("version", "usable"),
    [
        ("3.4.23", True),
        ("3.5.6", True),
        ("3.6.1", True),
        ("3.5.0", False),
        ("3.5.5", False),
        ("3.3.9", False),
    ],
)
def test_releases_that_lose_data_after_sigkill_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, usable: bool
) -> None:
    monkeypatch.setenv("JOBQUEUE_ETCD", fake_etcd(tmp_path, version))
    path, detail = etcd_binary()
    assert (path is not None) == usable, detail
    if usable:
        assert detail == version
    else:
        assert version in detail


def test_members_die_pause_and_come_back(etcd_factory: Callable[..., EtcdCluster]) -> None:
    cluster = etcd_factory(3)
    first, second, third = cluster.members
    ports = [port for m in cluster.members for port in (m.client_port, m.peer_port)]
    assert len(set(ports)) == 6 and all(m.healthy() for m in cluster.members)

    first.kill9()
    assert not first.running and not first.healthy()
    cluster.wait_healthy([second, third])  # two of three keep a quorum
    cluster.restart(first)
    assert first.healthy()

    second.pause()
    try:
        assert not second.healthy(timeout=0.3)
    finally:
        second.resume()
    cluster.wait_healthy()

    cluster.close()
    assert not any(member.running for member in cluster.members)
