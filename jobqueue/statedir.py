"""The state directory at start: create what is missing, refuse what others could have planted.

Like sshd's ``StrictModes``, the daemon starts only if every directory it
trusts is a real directory (not a symbolic link) owned by the daemon's user
or root and not writable by group or others. Otherwise another user could
have planted a job that runs as the daemon's user, a link that makes the
daemon overwrite a file of its choosing, or a record that makes it kill a
process group. What
is missing is created with these modes (the umask can only narrow them); a
private one found open to reading by others (but safe otherwise) is narrowed
to 0700::

    <state>/          0755  clients must reach run/
    run/              0755  the sockets (their own modes decide who connects)
    run/commands/     0700  private: records of running commands
    log/              0750
    queue/            0700  private: the jobs
    queue/archive/    0700  private (checked when present; created by the store)
    queue/corrupt/    0700  private (checked when present)
    output/           0700  private: command output with the etcd store (checked
                            when present; created by the store)

Only the state directory itself may be reached through a symbolic link.
The archive's sub-directories are not checked (``queue/`` being private,
nobody else can have made them). Linux only.
"""

from __future__ import annotations

import os
import pwd
import stat

from jobqueue.errors import JobQueueError
from jobqueue.paths import StatePaths

_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_GROUP_OTHER_ANY = stat.S_IRWXG | stat.S_IRWXO


def prepare(paths: StatePaths, euid: int | None = None) -> None:
    """Create the missing directories and check every one, outermost first.

    Raises ``JobQueueError`` with one line naming the first directory that is
    not safe and why, and ``OSError`` when one cannot be created or examined.
    """
    uid = os.geteuid() if euid is None else euid
    queue = paths.queue_dir
    layout = (
        (paths.root, 0o755, False, True),
        (paths.run_dir, 0o755, False, True),
        (paths.commands_dir, 0o700, True, True),
        (paths.log_dir, 0o750, False, True),
        (queue, 0o700, True, True),
        (os.path.join(queue, "archive"), 0o700, True, False),
        (os.path.join(queue, "corrupt"), 0o700, True, False),
        (paths.output_dir, 0o700, True, False),
    )
    for path, mode, private, create in layout:
        if create:
            _create(path, mode, parents=path == paths.root)
        elif not os.path.lexists(path):
            continue
        check_dir(path, uid, private=private, follow=path == paths.root)


def _create(path: str, mode: int, *, parents: bool) -> None:
    try:
        if parents:
            os.makedirs(path, mode=mode)
        else:
            os.mkdir(path, mode)
    except FileExistsError:
        pass  # whatever it is, ``check_dir`` says whether it will do


def check_dir(path: str, euid: int, *, private: bool, follow: bool = False) -> None:
    """Refuse (``JobQueueError``) ``path`` unless it is a safe directory; see the module doc.

    ``follow``: a symbolic link is followed (else refused). ``private``: the
    directory is also closed to group and others (``chmod 0700``) if it is not.
    """
    info = os.stat(path) if follow else os.lstat(path)
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        _refuse(path, "is a symbolic link; it must be a directory")
    if not stat.S_ISDIR(info.st_mode):
        _refuse(path, "is not a directory")
    if info.st_uid not in (euid, 0):
        trusted = "root" if euid == 0 else f"the daemon's user, {_user(euid)}, or root"
        _refuse(path, f"is owned by {_user(info.st_uid)}, not by {trusted}")
    if mode & _GROUP_OTHER_WRITE:
        _refuse(path, f"is writable by group or others (mode {mode:04o}); chmod go-w {path}")
    if private and mode & _GROUP_OTHER_ANY:
        try:
            os.chmod(path, 0o700)  # a directory, as lstat said
        except OSError as err:
            _refuse(path, f"is open to group or others (mode {mode:04o}): {err.strerror}")


def _refuse(path: str, why: str) -> None:
    raise JobQueueError(f"Refusing to start: {path} {why}")


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
