"""The file system a path lives on and its journal mode, for the header of a run.

Read from ``/proc/self/mountinfo`` (the mount with the longest mount point
that contains the path) and, for ext3/ext4, ``/proc/fs/jbd2/`` (a journal
has an entry there) and ``/proc/fs/ext4/<device>/options`` (its data mode).
"""

from __future__ import annotations

import os
from pathlib import Path

#: What other file systems do instead of a journal, when it is always the same.
_JOURNAL_BY_TYPE = {
    "xfs": "metadata log",
    "btrfs": "copy-on-write, log tree",
    "tmpfs": "in memory",
    "overlay": "overlay, see its upper file system",
    "zfs": "copy-on-write, intent log",
}


def mount_of(path: Path, mountinfo: str) -> tuple[str, str, str, str]:
    """``(mount point, type, source, super options)`` of the mount holding ``path``."""
    target = os.path.realpath(path)
    best: tuple[str, str, str, str] = ("/", "unknown", "unknown", "")
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if len(fields) < 5 or len(after) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, after[0], after[1], after[2] if len(after) > 2 else "")
    return best


def journal_mode(fs_type: str, source: str, proc: Path = Path("/proc")) -> str:
    """How the file system makes metadata changes durable, in a few words."""
    if fs_type not in ("ext3", "ext4"):
        return _JOURNAL_BY_TYPE.get(fs_type, "journal mode unknown")
    device = os.path.basename(os.path.realpath(source))
    if not any(entry.startswith(f"{device}-") for entry in _listdir(proc / "fs" / "jbd2")):
        return "no journal"
    mode = "ordered"
    try:
        options = (proc / "fs" / fs_type / device / "options").read_text().split()
    except OSError:
        options = []
    for option in options:
        if option.startswith("data="):
            mode = option.removeprefix("data=")
    return f"journal, data={mode}"


def describe(path: Path) -> str:
    """E.g. ``ext4 on /dev/vda mounted at / (no journal)``."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return "unknown file system"
    point, fs_type, source, _ = mount_of(path, mountinfo)
    return f"{fs_type} on {source} mounted at {point} ({journal_mode(fs_type, source)})"


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
