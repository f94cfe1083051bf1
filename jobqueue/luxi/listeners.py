"""Who gets a connection on a LUXI socket: a limit per socket, a share per user, an admins' reserve.

Each socket serves at most ``limit`` clients at once, so that clients never
take the descriptors the daemon needs for its own files and commands. So
that one local user cannot take them all and lock everyone else out (every
Ganeti tool and ``jobctl`` call needs a connection):

* a user (uid) holds at most ``per_user`` of a socket's connections;
* root and the daemon's own user (the admins here) are not held to that
  share, and may open ``ADMIN_RESERVE`` connections past the limit, as
  PostgreSQL keeps connections for its superusers: however the other users
  fill a socket, an operator still gets in. (The commands of jobs that run
  as one of them count as them: under a daemon that is not root, that is
  every job's.)

A connection past a limit gets one ``LuxiError`` and is closed; refusals are
logged at a bounded rate. Peers whose credentials cannot be read share one
user's share. Loop thread only.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any, Protocol

from jobqueue import errors
from jobqueue.luxi import access
from jobqueue.luxi.connection import Connection
from jobqueue.model import Submitter

#: Connections that root and the daemon's user may open past a socket's limit.
ADMIN_RESERVE = 8
#: A user's share of a socket's connections, unless given: this part of the limit.
DEFAULT_USER_SHARE = 4


class _RareLog(Protocol):
    def warning(self, kind: str, message: str, *args: Any) -> None: ...


def default_per_user(limit: int) -> int:
    """A user's share of a socket serving ``limit`` clients, unless given."""
    return max(1, limit // DEFAULT_USER_SHARE)


class Listener:
    """One listening socket: its rule, its connections and limits (a ``connection.Gate``).

    ``admins`` are the uids held to no share and given the reserve (default:
    root and the daemon's effective uid).
    """

    def __init__(
        self,
        name: str,
        *,
        read_only: bool,
        limit: int,
        per_user: int | None,
        rule: access.MasterAccess,
        log: _RareLog,
        admins: Collection[int] | None = None,
    ) -> None:
        self.name = name
        self.read_only = read_only
        self.limit = limit
        self.per_user = default_per_user(limit) if per_user is None else per_user
        self.count = 0
        self.refused = 0
        self._by_user: dict[int | None, int] = {}
        self._user_of: dict[Connection, int | None] = {}  # counted under which uid
        self._admins = frozenset({0, os.geteuid()} if admins is None else admins)
        self._rule = rule
        self._log = log

    def opened(self, connection: Connection) -> errors.GenericError | None:
        uid = None if connection.peer is None else connection.peer.uid
        admin = uid in self._admins
        if self.count >= self.limit + (ADMIN_RESERVE if admin else 0):
            return self._refuse(
                "full",
                "Refusing a connection on the %s socket: %d clients already (--max-connections)",
                f"Too many connections to the {self.name} socket ({self.limit}); try again later",
                self.count,
            )
        held = self._by_user.get(uid, 0)
        if not admin and held >= self.per_user:
            return self._refuse(
                "user",
                "Refusing a connection on the %s socket: uid %s has %d already "
                "(--max-connections-per-user)",
                f"Too many connections from your user to the {self.name} socket "
                f"({self.per_user}); close some or try again later",
                uid,
                held,
            )
        self.count += 1
        self._by_user[uid] = held + 1
        self._user_of[connection] = uid
        return None

    def closed(self, connection: Connection) -> None:
        uid = self._user_of.pop(connection)
        self.count -= 1
        held = self._by_user.pop(uid) - 1
        if held > 0:
            self._by_user[uid] = held

    def may_change(self, peer: access.PeerCredentials | None) -> bool:
        return peer is not None and self._rule.allows(peer)

    def caller(self, peer: access.PeerCredentials | None) -> Submitter | None:
        if peer is None:
            return None
        groups = peer.groups if peer.groups is not None else access.supplementary_groups(peer.pid)
        return Submitter.client(uid=peer.uid, gid=peer.gid, groups=groups, pid=peer.pid)

    def _refuse(self, kind: str, logged: str, told: str, *args: Any) -> errors.GenericError:
        self.refused += 1
        self._log.warning(f"refused-{kind}-{self.name}", logged, self.name, *args)
        return errors.LuxiError(told)
