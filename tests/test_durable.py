"""One durable write and shared directory syncs: the compiled helper and its Python twin."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobqueue.storage.durable import Directory, PythonDirectory, compiled_directory, helper_built
from jobqueue.storage.files import Disk
from tests.polling import poll_until


@pytest.fixture(
    params=[
        pytest.param(
            "compiled",
            marks=pytest.mark.skipif(not helper_built(), reason="the C helper was not built"),
        ),
        "python",
    ]
)
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Directory]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    made = compiled_directory(fd) if request.param == "compiled" else None
    yield made or PythonDirectory(Disk(), str(tmp_path))
    os.close(fd)


def test_create_exchange_and_rename(directory: Directory, tmp_path: Path) -> None:
    assert directory.write_file("spare", "job-1", b"one", 0o600, False, True, True) is None
    assert (tmp_path / "job-1").read_bytes() == b"one"
    assert not (tmp_path / "spare").exists()
    assert directory.write_file("spare", "unused", b"a longer text", 0o600, True, True, False) == (
        "rename",
        errno.ENOENT,
    )
    first_inode = (tmp_path / "job-1").stat().st_ino
    assert directory.write_file("spare", "job-1", b"two", 0o600, True, False, True) is None
    assert (tmp_path / "job-1").read_bytes() == b"two"  # cut to length, not "twonger text"
    assert (tmp_path / "spare").read_bytes() == b"one"
    assert (tmp_path / "spare").stat().st_ino == first_inode
    directory.exchange("spare", "job-1")
    assert (tmp_path / "job-1").read_bytes() == b"one"
    assert oct((tmp_path / "job-1").stat().st_mode & 0o777) == oct(0o600)
    directory.sync()


def test_overwrite_writes_in_place_and_cuts_nothing(directory: Directory, tmp_path: Path) -> None:
    start = tmp_path / ".start-0"
    start.write_bytes(b"an older, longer record")
    inode = start.stat().st_ino
    assert directory.overwrite(".start-0", b"a new one") is None
    assert start.read_bytes() == b"a new one longer record"
    assert start.stat().st_ino == inode
    assert directory.overwrite(".start-9", b"x") == ("open", errno.ENOENT)
    os.symlink(start, tmp_path / "link")
    assert directory.overwrite("link", b"x") == ("open", errno.ELOOP)  # never through a link


def test_failures_name_their_step(directory: Directory, tmp_path: Path) -> None:
    assert directory.write_file("missing", "job-1", b"x", 0o600, True, False, True) == (
        "open",
        errno.ENOENT,
    )
    (tmp_path / "taken").write_bytes(b"")
    assert directory.write_file("taken", "job-1", b"x", 0o600, False, True, True) == (
        "open",
        errno.EEXIST,
    )
    with pytest.raises(FileNotFoundError):
        directory.exchange("taken", "job-1")


def test_create_many_writes_each_file_then_renames_those_written(
    directory: Directory, tmp_path: Path
) -> None:
    (tmp_path / "old").write_bytes(b"a longer old text")
    (tmp_path / "taken").write_bytes(b"")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "fourth").write_bytes(b"")
    entries = [
        ("new", "job-1", b"one", True),
        ("old", "job-2", b"two", False),  # written from offset 0 and cut to length
        ("missing", "job-3", b"x", False),
        ("taken", "job-4", b"x", True),  # created exclusively: it exists
        ("fourth", "a-dir", b"x", False),  # a file cannot be renamed over a directory
    ]
    assert directory.create_many(entries, 0o600) == [
        None,
        None,
        ("open", errno.ENOENT),
        ("open", errno.EEXIST),
        ("rename", errno.EISDIR),
    ]
    assert (tmp_path / "job-1").read_bytes() == b"one"
    assert (tmp_path / "job-2").read_bytes() == b"two"
    assert oct((tmp_path / "job-1").stat().st_mode & 0o777) == oct(0o600)
    assert not (tmp_path / "new").exists() and not (tmp_path / "old").exists()
    assert (tmp_path / "fourth").read_bytes() == b"x"  # written, left under its own name
    assert not (tmp_path / "job-3").exists() and not (tmp_path / "job-4").exists()
    assert directory.create_many([("missing", "job-5", b"x", False)], 0o600) == [
        ("open", errno.ENOENT)
    ]


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            "compiled",
            marks=pytest.mark.skipif(not helper_built(), reason="the C helper was not built"),
        ),
        "python",
    ],
)
def test_a_failed_file_system_sync_fails_every_written_file_and_renames_none(
    tmp_path: Path, kind: str
) -> None:
    class FailingSync(Disk):
        def sync_filesystem(self, fd: int) -> None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    # An O_PATH descriptor opens and renames files under it, but cannot be synced.
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        made = compiled_directory(fd) if kind == "compiled" else None
        directory = made or PythonDirectory(FailingSync(), str(tmp_path), fd)
        entries = [("a", "job-1", b"1", True), ("b", "job-2", b"2", True)]
        entries.append(("a", "job-3", b"", True))  # its spare's name is taken
        assert directory.create_many(entries, 0o600) == [
            ("syncfs", errno.EBADF),
            ("syncfs", errno.EBADF),
            ("open", errno.EEXIST),
        ]
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


@pytest.mark.skipif(not helper_built(), reason="the C helper was not built")
def test_the_helper_refuses_a_malformed_batch_before_writing_anything(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        directory = compiled_directory(fd)
        assert directory is not None
        good = ("a", "job-1", b"1", True)
        with pytest.raises(TypeError):
            directory.create_many([good, ("b", 5, b"2", True)], 0o600)  # type: ignore[list-item]
        with pytest.raises(TypeError, match="must be a"):
            directory.create_many([good, ["b", "job-2", b"2", True]], 0o600)  # type: ignore[list-item]

        class Shrinking:
            """A name whose conversion empties the list being read."""

            def __fspath__(self) -> str:
                entries.clear()
                return "c"

        entries: list[tuple[object, str, bytes, bool]] = [good, (Shrinking(), "job-3", b"3", True)]
        assert directory.create_many(entries, 0o600) == [None, None]  # type: ignore[arg-type]
        assert directory.create_many([], 0o600) == []
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["job-1", "job-3"]


class GatedDisk(Disk):
    """Counts directory syncs; the first waits until ``gate`` is set; fails while ``failing``."""

    def __init__(self) -> None:
        self.syncs = 0
        self.first_started = threading.Event()
        self.gate = threading.Event()
        self.failing = False

    def fsync_dir(self, path: str) -> None:
        self.syncs += 1
        if self.syncs == 1:
            self.first_started.set()
            assert self.gate.wait(30)
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync_dir(path)


def run_syncs(directory: PythonDirectory, disk: GatedDisk, callers: int) -> list[str]:
    """One caller syncs (held at the gate), then ``callers`` more arrive; their outcomes."""
    outcomes: list[str] = []

    def sync() -> None:
        try:
            directory.sync()
            outcomes.append("ok")
        except OSError as err:
            outcomes.append(os.strerror(err.errno or 0))

    first = threading.Thread(target=sync)
    first.start()
    assert disk.first_started.wait(30)
    late = [threading.Thread(target=sync) for _ in range(callers)]
    for thread in late:
        thread.start()

    def waiting() -> int:
        with directory._done:
            return directory._requested

    assert poll_until(lambda: waiting() == callers + 1, 30)
    disk.gate.set()
    for thread in [first, *late]:
        thread.join(30)
    return outcomes


def test_concurrent_syncs_share_one_fsync_begun_after_them(tmp_path: Path) -> None:
    disk = GatedDisk()
    directory = PythonDirectory(disk, str(tmp_path))
    assert run_syncs(directory, disk, 8) == ["ok"] * 9
    # The first fsync began before the eight others asked: they needed one more, together.
    assert disk.syncs == 2


def test_a_failed_shared_sync_fails_everyone_it_covered(tmp_path: Path) -> None:
    disk = GatedDisk()
    disk.failing = True
    directory = PythonDirectory(disk, str(tmp_path))
    assert run_syncs(directory, disk, 4) == ["Input/output error"] * 5
    disk.failing = False
    directory.sync()  # a later sync works again


def test_a_helper_built_from_older_sources_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Older:
        """A helper module whose Directory predates start records (no ``overwrite``)."""

        class Directory:
            def __init__(self, dir_fd: int) -> None: ...
            def write_file(self) -> None: ...
            def sync(self) -> None: ...
            def exchange(self) -> None: ...

    monkeypatch.setattr("importlib.import_module", lambda name: Older)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert compiled_directory(fd) is None
    finally:
        os.close(fd)
