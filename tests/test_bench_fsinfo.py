"""The benchmark's header names the file system and its journal mode (bench/fsinfo.py)."""

from __future__ import annotations

from pathlib import Path

from bench.fsinfo import journal_mode, mount_of

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:26 / /dev/shm rw,nosuid shared:4 - tmpfs tmpfs rw,size=65536k
31 22 254:16 / /srv/queue\\040data rw shared:5 - xfs /dev/vdb rw,attr2
"""


def test_the_longest_mount_point_holding_the_path_wins() -> None:
    assert mount_of(Path("/srv/queue data/q"), MOUNTINFO)[:3] == (
        "/srv/queue data",
        "xfs",
        "/dev/vdb",
    )
    assert mount_of(Path("/dev/shm/x"), MOUNTINFO)[1] == "tmpfs"
    assert mount_of(Path("/srv/queue"), MOUNTINFO)[1] == "ext4"  # a prefix is not a parent


def test_ext4_journal_modes(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "fs" / "jbd2").mkdir(parents=True)
    assert journal_mode("ext4", "/dev/vda", proc) == "no journal"
    (proc / "fs" / "jbd2" / "vda-8").mkdir()
    assert journal_mode("ext4", "/dev/vda", proc) == "journal, data=ordered"
    options = proc / "fs" / "ext4" / "vda"
    options.mkdir(parents=True)
    (options / "options").write_text("rw\ndata=journal\n")
    assert journal_mode("ext4", "/dev/vda", proc) == "journal, data=journal"
    assert journal_mode("xfs", "/dev/vdb", proc) == "metadata log"
    assert journal_mode("nfs4", "server:/x", proc) == "journal mode unknown"
