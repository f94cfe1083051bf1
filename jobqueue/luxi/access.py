"""Who may talk to the LUXI sockets: socket file modes, peer credentials, the rule.

Socket files are created under a temporary name with their final mode and
group and renamed into place once listening, so an existing socket path
always means a daemon that accepts connections.

The kernel reports the connecting process's pid, uid and primary gid
(``SO_PEERCRED``) and its supplementary groups (``SO_PEERGROUPS``, Linux 4.13
and later), all taken at ``connect`` time. Only where the kernel lacks
``SO_PEERGROUPS`` are the groups read from ``/proc/<pid>/status`` instead:
a snapshot of the process now, not at connect time, and none for a peer in
another pid namespace (pid 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import socket
import struct
from collections.abc import Callable, Collection

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Linux's option number; Python's socket module does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_GID_SIZE = 4
#: Buffer sizes tried, in groups: most processes have few; Linux allows 65,536.
_PEER_GROUP_COUNTS = (64, 65536)


@dataclasses.dataclass(frozen=True)
class PeerCredentials:
    """The process at the other end of a Unix socket.

    ``groups`` are its supplementary groups (None: unknown, to be read from
    ``/proc`` when needed).
    """

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] | None = None


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read the peer's credentials of a connected Unix socket; OSError if unavailable.

    Its groups are the kernel's, else read from ``/proc`` now, once.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    groups = peer_groups(sock)
    if groups is None:
        groups = supplementary_groups(pid)
    return PeerCredentials(pid=pid, uid=uid, gid=gid, groups=groups)


def peer_groups(sock: socket.socket) -> frozenset[int] | None:
    """The peer's supplementary groups as of ``connect``; None if the kernel cannot say."""
    for count in _PEER_GROUP_COUNTS:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, count * _GID_SIZE)
        except OSError as err:
            if err.errno == errno.ERANGE:  # more groups than the buffer holds
                continue
            if err.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise
        return frozenset(struct.unpack(f"{len(raw) // _GID_SIZE}I", raw))
    return None


def supplementary_groups(pid: int, *, proc_dir: str = "/proc") -> frozenset[int]:
    """The ``Groups:`` of process ``pid``; empty when it cannot be read."""
    if pid <= 0:
        return frozenset()
    try:
        with open(os.path.join(proc_dir, str(pid), "status"), encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Groups:"):
                    return frozenset(int(group) for group in line.split()[1:])
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return frozenset()


class MasterAccess:
    """Allow a peer whose uid is in ``allowed_uids`` or who belongs to ``group``.

    Membership is the primary gid or a supplementary group: those the
    kernel reported with the credentials, else ``groups_of(pid)``. With
    ``group`` None only the uids are allowed.
    """

    def __init__(
        self,
        *,
        allowed_uids: Collection[int],
        group: int | None,
        groups_of: Callable[[int], frozenset[int]] = supplementary_groups,
    ) -> None:
        self._allowed_uids = frozenset(allowed_uids)
        self._group = group
        self._groups_of = groups_of

    def allows(self, peer: PeerCredentials) -> bool:
        """Whether ``peer`` may use the master socket."""
        if peer.uid in self._allowed_uids:
            return True
        if self._group is None:
            return False
        if peer.gid == self._group:
            return True
        groups = peer.groups if peer.groups is not None else self._groups_of(peer.pid)
        return self._group in groups


def listen_unix(
    path: str, mode: int, group: int | None, *, backlog: int
) -> tuple[socket.socket, int]:
    """Bind under a temporary name in ``path``'s directory, set mode and group, listen, rename.

    Returns the listening (non-blocking) socket and the inode of the socket
    file. Raises OSError; nothing is left behind then.
    """
    temp = os.path.join(os.path.dirname(path), f".luxi-{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temp)
        try:
            os.chmod(temp, mode)
            if group is not None:
                os.chown(temp, -1, group)
            sock.listen(backlog)
            os.rename(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        inode = os.stat(path).st_ino
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock, inode


def remove_socket_file(path: str, inode: int) -> None:
    """Unlink ``path`` if it is still the socket file we created (same inode)."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
