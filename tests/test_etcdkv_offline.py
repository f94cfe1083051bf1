"""The etcd wrapper's parts that need no server: settings, key ranges, unreachable endpoints."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

import pytest

from jobqueue.errors import StorageError
from jobqueue.storage.etcdconn import EtcdSettings
from jobqueue.storage.etcdkv import EtcdKV, prefix_end


def test_settings_refuse_what_cannot_work() -> None:
    assert EtcdSettings.from_list(" http://a:1 ,https://b:2/").endpoints == (
        "http://a:1",
        "https://b:2",
    )
    for endpoints in [(), ("a:2379",), ("http://host",), ("unix://x:1",)]:
        with pytest.raises(ValueError):
            EtcdSettings(endpoints)
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        EtcdSettings(("http://a:1",), cert_file="c.pem")
    with pytest.raises(ValueError, match="user and password"):
        EtcdSettings(("http://a:1",), user="root")


def test_prefix_end_covers_exactly_the_prefix() -> None:
    assert prefix_end(b"/jobs/") == b"/jobs0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_unreachable_endpoints_fail_at_once_naming_each(open_kv: Callable[..., EtcdKV]) -> None:
    dead = [f"http://127.0.0.1:{port}" for port in (1, 2)]
    kv = open_kv(dead, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        kv.get(b"k")
    assert caught.value.args[1] == errno.ECONNREFUSED
    assert all(url in str(caught.value) for url in dead)
    assert time.monotonic() - started < 2.0
