"""Storage: command output kept in files on the daemon's own host, by the file store and
by the etcd store: modes, archiving, pruning, and what a crash or a standby leaves.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobqueue.constants import Status
from jobqueue.errors import StorageError
from jobqueue.storage.base import JobStore
from jobqueue.storage.files import FileJobStore
from tests.etcd_cluster import unique_prefix
from tests.store_samples import create, make_job, touch


def _write_output(store: JobStore, job_id: int, data: bytes = b"out") -> None:
    stream = store.open_output(job_id, 0, "stdout")
    stream.append(data)
    stream.close()


def _finished_with_output(store: JobStore, *job_ids: int) -> None:
    """Finished jobs ``job_ids``, each with b"out" on stdout."""
    create(store, *(make_job(i, Status.SUCCESS) for i in job_ids))
    for job_id in job_ids:
        _write_output(store, job_id)


def test_output_files_are_private_and_follow_the_archive(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, make_job(12345, Status.SUCCESS))
    _write_output(store, 12345)
    live = queue / "output" / "12345" / "0.stdout"
    assert stat.S_IMODE(live.stat().st_mode) == 0o600
    assert stat.S_IMODE(live.parent.stat().st_mode) == 0o700
    store.archive_jobs([12345])
    assert not live.parent.exists()
    assert (queue / "archive" / "1" / "output-12345" / "0.stdout").read_bytes() == b"out"


def test_start_settles_output_left_by_a_crash(tmp_path: Path) -> None:
    """Job 1 was archived but not its output (a crash in between); job 2 is gone."""
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    _finished_with_output(store, 1, 2, 3)
    os.makedirs(queue / "archive" / "0")
    os.replace(queue / "job-1", queue / "archive" / "0" / "job-1")
    os.unlink(queue / "job-2")
    reopened = FileJobStore(str(queue))
    assert sorted(job.id for job in reopened.load_jobs()) == [3]
    assert sorted(os.listdir(queue / "output")) == ["3"]
    assert (queue / "archive" / "0" / "output-1" / "0.stdout").is_file()
    assert reopened.read_output(1, 0, "stdout", 0, 10) == b"out"


def test_prune_deletes_output_only_without_its_job_and_old(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    archive = queue / "archive" / "0"
    day = 86400
    touch(archive / "job-1", 30 * day)
    touch(archive / "output-1" / "0.stdout", 30 * day)
    touch(archive / "job-2", 1 * day)
    touch(archive / "output-2" / "0.stdout", 30 * day)  # its job is recent: kept
    touch(archive / "output-3" / "0.stdout", 0)  # being archived: its job comes next
    for name in ("output-1", "output-2", "output-3"):
        stamp = time.time() - (0 if name == "output-3" else 30 * day)
        os.utime(archive / name, (stamp, stamp))
    result = FileJobStore(str(queue), owner=False).prune_archive(21 * day, time.time())
    assert (result.jobs, result.failures) == (1, [])
    assert sorted(os.listdir(archive)) == ["job-2", "output-2", "output-3"]


def test_output_reads_neither_follow_links_nor_block(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    store = FileJobStore(str(queue))
    create(store, make_job(1, Status.RUNNING))
    _write_output(store, 1, b"mine")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for you")
    (queue / "output" / "1" / "0.stderr").symlink_to(secret)
    os.mkfifo(queue / "output" / "1" / "1.stdout")
    assert store.output_sizes(1) == {(0, "stdout"): 4}
    for op_index, stream in ((0, "stderr"), (1, "stdout")):
        with pytest.raises(StorageError):
            store.read_output(1, op_index, stream, 0, 100)
        with pytest.raises(StorageError):
            store.open_output(1, op_index, stream)
    assert secret.read_bytes() == b"not for you"


# -- the etcd store's output: files on the daemon's own host --------------------------------

OpenEtcd = Callable[..., Any]


def test_an_etcd_handle_without_an_output_directory_keeps_none(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    """The cleaner's maintenance handle keeps no output and reads none, not even this host's."""
    prefix = unique_prefix()
    daemon = open_etcd_store(etcd_member.endpoints, prefix, output_dir=str(tmp_path / "output"))
    create(daemon, make_job(1, Status.RUNNING))
    _write_output(daemon, 1)
    maintenance = open_etcd_store(etcd_member.endpoints, prefix, owner=False)
    with pytest.raises(StorageError, match="keeps no command output") as raised:
        maintenance.open_output(1, 0, "stdout")
    assert raised.value.args[1] == errno.ENOTSUP
    assert maintenance.output_sizes(1) == {}
    assert maintenance.read_output(1, 0, "stdout", 0, 10) == b""
    assert daemon.read_output(1, 0, "stdout", 0, 10) == b"out"


def test_etcd_output_stays_private_on_the_host_and_follows_the_archive(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    output = tmp_path / "output"
    store = open_etcd_store(etcd_member.endpoints, unique_prefix(), output_dir=str(output))
    create(store, make_job(12345, Status.SUCCESS))
    _write_output(store, 12345, b"kept on this host")
    live = output / "12345" / "0.stdout"
    assert live.read_bytes() == b"kept on this host"
    assert stat.S_IMODE(live.stat().st_mode) == 0o600
    assert {stat.S_IMODE(path.stat().st_mode) for path in (output, live.parent)} == {0o700}
    keys = list(store.kv.range_prefix(store.keys.root))
    assert not [item.key for item in keys if b"kept on this host" in item.value]  # not in etcd
    assert store.archive_jobs([12345]) == ([12345], None)
    assert not live.parent.exists()
    archived = output / "archive" / "1" / "output-12345"
    assert (archived / "0.stdout").read_bytes() == b"kept on this host"
    assert {stat.S_IMODE(path.stat().st_mode) for path in archived.parents[:2]} == {0o700}
    assert store.read_output(12345, 0, "stdout", 5, 100) == b"on this host"


def test_an_etcd_start_settles_output_left_by_a_crash(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    """Job 1 was archived in etcd but not its output (a crash in between); job 2 is gone."""
    prefix, output = unique_prefix(), tmp_path / "output"
    endpoints = etcd_member.endpoints
    store = open_etcd_store(endpoints, prefix, output_dir=str(output))
    _finished_with_output(store, 1, 2, 3)
    in_etcd_only = open_etcd_store(endpoints, prefix)  # moves jobs, never output
    assert in_etcd_only.archive_jobs([1]) == ([1], None)
    assert in_etcd_only.discard_jobs([2]) == ([2], None)

    leader = open_etcd_store(endpoints, prefix)
    assert leader.leadership("leader").acquire(0)
    standby = open_etcd_store(endpoints, prefix, output_dir=str(output))
    standby.leadership("standby")
    assert [job.id for job in standby.load_jobs()] == [3]
    assert sorted(os.listdir(output)) == ["1", "2", "3"]  # only a leading owner settles
    leader.leadership("leader").release()

    reopened = open_etcd_store(endpoints, prefix, output_dir=str(output))
    assert [job.id for job in reopened.load_jobs()] == [3]
    assert sorted(os.listdir(output)) == ["3", "archive"]
    assert (output / "archive" / "0" / "output-1" / "0.stdout").read_bytes() == b"out"
    assert reopened.read_output(1, 0, "stdout", 0, 10) == b"out"
    assert reopened.output_sizes(2) == {}


def test_etcd_pruning_deletes_the_output_of_jobs_etcd_no_longer_has(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    now, day = time.time(), 86400.0
    when = [now - 30 * day]
    prefix, output = unique_prefix(), tmp_path / "output"
    endpoints = etcd_member.endpoints
    store = open_etcd_store(endpoints, prefix, output_dir=str(output), clock=lambda: when[0])
    _finished_with_output(store, 1, 2, 3, 4)
    store.archive_jobs([1])  # a month ago
    when[0] = now
    store.archive_jobs([2])  # just now
    store.kv.txn(fence=None, deletes=[store.keys.job(3)])  # archived and pruned elsewhere

    result = store.prune_archive(21 * day, now)
    assert (result.jobs, result.failures) == (1, [])
    assert sorted(os.listdir(output)) == ["4", "archive"]  # live job 4 keeps its output
    assert os.listdir(output / "archive" / "0") == ["output-2"]
    assert store.read_output(2, 0, "stdout", 0, 10) == b"out"
    assert store.output_sizes(1) == {} and store.output_sizes(3) == {}

    # The cleaner prunes etcd alone (the daemon was down); the next pruning here follows.
    maintenance = open_etcd_store(endpoints, prefix, owner=False)
    assert maintenance.prune_archive(0, now + 1).jobs == 1
    assert (output / "archive" / "0" / "output-2").is_dir()
    again = store.prune_archive(21 * day, now + 1)
    assert (again.jobs, again.directories, again.failures) == (0, 1, [])
    assert os.listdir(output / "archive") == []


def test_a_standby_tidies_only_its_own_output_of_jobs_etcd_no_longer_has(
    etcd_member: Any, open_etcd_store: OpenEtcd, tmp_path: Path
) -> None:
    """Output this host made as master, of jobs the new master has since pruned, goes."""
    prefix, output = unique_prefix(), tmp_path / "output"
    endpoints = etcd_member.endpoints
    was_master = open_etcd_store(endpoints, prefix, output_dir=str(output))
    _finished_with_output(was_master, 1, 2, 3)
    assert was_master.archive_jobs([2]) == ([2], None)
    was_master.kv.txn(fence=None, deletes=[was_master.keys.job(3)])  # pruned by the new master
    leader = open_etcd_store(endpoints, prefix)
    assert leader.leadership("new master").acquire(0)
    standby = open_etcd_store(endpoints, prefix, output_dir=str(output))
    standby.leadership("this host")
    revision = standby.kv.revision()
    result = standby.tidy_local_output()
    assert result.failures == []
    assert sorted(os.listdir(output)) == ["1", "archive"]
    assert os.listdir(output / "archive" / "0") == ["output-2"]
    assert standby.kv.revision() == revision  # etcd untouched
    assert FileJobStore(str(tmp_path / "queue")).tidy_local_output().failures == []
