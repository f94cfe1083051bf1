"""The file store's change feed, with real inotify events on a temporary queue directory."""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from jobqueue.errors import StorageError
from jobqueue.model import Job
from jobqueue.storage.base import encode_job
from jobqueue.storage.filefeed import FileChangeFeed
from jobqueue.storage.files import Disk
from jobqueue.storage.startrecords import StartFiles, encode_record

#: Bound on every wait that should succeed, so a bug fails instead of hanging.
WAIT = 5.0
DELAY = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


class Recorder:
    """Collects what a feed reports; ``wait_for`` blocks until an id shows up."""

    def __init__(self) -> None:
        self.seen: list[int | None] = []
        self._changed = threading.Condition()

    def __call__(self, job_id: int | None) -> None:
        with self._changed:
            self.seen.append(job_id)
            self._changed.notify_all()

    def wait_for(self, job_id: int, times: int = 1) -> list[int | None]:
        """Everything reported until ``job_id`` was reported ``times`` times."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.seen.count(job_id) >= times, WAIT), self.seen
            return list(self.seen)


def replace_job_file(queue_dir: Path, job_id: int, content: str = "{}") -> None:
    """Write ``job-<id>`` the way the store does: temp file, then rename over it."""
    temp = queue_dir / f".job-{job_id}.tmp"
    temp.write_text(content)
    os.replace(temp, queue_dir / f"job-{job_id}")


def fd_targets() -> collections.Counter[str]:
    """What this process's descriptors point to (``anon_inode:inotify``, ``pipe:[N]``...).

    Compared by target, not by count: another test's leftover thread may
    close a descriptor of its own at any moment.
    """
    targets: collections.Counter[str] = collections.Counter()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own among them)
            targets[os.readlink(f"/proc/self/fd/{name}")] += 1
    return targets


def inotify_fds() -> int:
    return fd_targets()["anon_inode:inotify"]


@pytest.fixture
def feed(tmp_path: Path) -> tuple[FileChangeFeed, Recorder]:
    recorder = Recorder()
    feed = FileChangeFeed(str(tmp_path))
    feed.start(recorder)
    yield feed, recorder
    feed.stop()


def test_a_replaced_job_file_is_reported(
    tmp_path: Path, feed: tuple[FileChangeFeed, Recorder]
) -> None:
    _, recorder = feed
    replace_job_file(tmp_path, 7)
    assert recorder.wait_for(7) == [7]
    replace_job_file(tmp_path, 7)
    replace_job_file(tmp_path, 8)
    assert recorder.wait_for(8)[-1] == 8


def test_other_names_are_not_reported(
    tmp_path: Path, feed: tuple[FileChangeFeed, Recorder]
) -> None:
    _, recorder = feed
    (tmp_path / "serial").write_text("1\n")
    os.replace(tmp_path / "serial", tmp_path / "serial2")
    (tmp_path / "job-1.tmp").write_text("{}")
    os.unlink(tmp_path / "job-1.tmp")
    os.replace(tmp_path / "serial2", tmp_path / "job-abc")
    (tmp_path / ".spare-1").write_text("{}")  # closed after writing, like a start file
    record = encode_record(encode_job(Job.new(4, [DELAY], (0, 0)), 2))
    torn = record.replace(b'"id":4', b'"id":5')  # the CRC no longer matches
    (tmp_path / ".start-1").write_bytes(torn)
    (tmp_path / ".start-2").write_bytes(b"jobqueue-start 0 00000000\n")  # whole, of no job
    (tmp_path / ".start-4").write_bytes(b" " * 4096)  # new: made before any record
    replace_job_file(tmp_path, 99)  # the barrier: events arrive in order
    assert recorder.wait_for(99) == [99]


def test_a_start_record_is_reported_once_written(
    tmp_path: Path, feed: tuple[FileChangeFeed, Recorder]
) -> None:
    # A start record is written in place: no name moves, the writer closes the file.
    _, recorder = feed
    start_file = tmp_path / ".start-3"
    with open(start_file, "wb") as handle:
        handle.write(encode_record(encode_job(Job.new(41, [DELAY], (0, 0)), 2)))
    assert recorder.wait_for(41) == [41]
    with open(start_file, "r+b") as handle:  # the next job's start, over a free file
        handle.write(encode_record(encode_job(Job.new(42, [DELAY], (0, 0)), 2)))
    assert recorder.wait_for(42) == [41, 42]


def test_a_start_undone_after_its_write_failed_is_reported_again(
    tmp_path: Path, feed: tuple[FileChangeFeed, Recorder]
) -> None:
    # The record was written and its file closed, but the sync failed: a
    # follower may have read it; the writer erases it, and the job's start is undone.
    # The start file's creation may be reported late, once it holds the record:
    # so the start is reported once or twice before the erase, and again after it.
    _, recorder = feed
    before_erase: list[int] = []

    def write_then_fail_to_sync(name: str, data: bytes) -> None:
        with open(tmp_path / name, "r+b") as handle:
            handle.write(data)
        before_erase.append(recorder.wait_for(41).count(41))  # a follower saw the start
        raise OSError(errno.EIO, "the sync failed")

    starts = StartFiles(str(tmp_path), Disk(), write_then_fail_to_sync, logging.getLogger())
    with pytest.raises(OSError):
        starts.write(41, 2, encode_job(Job.new(41, [DELAY], (0, 0)), 2))
    (reported,) = before_erase
    assert recorder.wait_for(41, times=reported + 1).count(41) > reported  # reported again


def test_archive_and_delete_are_reported(tmp_path: Path) -> None:
    (tmp_path / "archive" / "0").mkdir(parents=True)
    replace_job_file(tmp_path, 5)
    replace_job_file(tmp_path, 6)
    recorder = Recorder()
    feed = FileChangeFeed(str(tmp_path))
    feed.start(recorder)
    try:
        os.rename(tmp_path / "job-5", tmp_path / "archive" / "0" / "job-5")
        os.unlink(tmp_path / "job-6")
        assert recorder.wait_for(6) == [5, 6]
    finally:
        feed.stop()


def test_stop_releases_everything_and_is_idempotent(tmp_path: Path) -> None:
    before, threads = fd_targets(), set(threading.enumerate())
    feed = FileChangeFeed(str(tmp_path))
    feed.start(Recorder())
    opened = fd_targets() - before
    # inotify, and both ends of the stop pipe
    assert opened["anon_inode:inotify"] == 1
    pipes = [target for target, count in opened.items() if target.startswith("pipe:")]
    assert len(pipes) == 1 and opened[pipes[0]] == 2
    started = set(threading.enumerate()) - threads
    assert len(started) == 1
    feed.stop()
    after = fd_targets()
    assert after["anon_inode:inotify"] == before["anon_inode:inotify"] and pipes[0] not in after
    assert not any(thread.is_alive() for thread in started)
    feed.stop()


def test_start_twice_is_an_error(feed: tuple[FileChangeFeed, Recorder]) -> None:
    with pytest.raises(StorageError, match="already started"):
        feed[0].start(Recorder())


def test_missing_directory_is_an_error_and_leaks_nothing(tmp_path: Path) -> None:
    before = fd_targets()
    with pytest.raises(StorageError, match="Cannot watch"):
        FileChangeFeed(str(tmp_path / "missing")).start(Recorder())
    assert not fd_targets() - before
