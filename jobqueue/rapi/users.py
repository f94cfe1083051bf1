"""The users file, in Ganeti's format, and checking a password against it.

One user per line: ``name password [options]``, fields separated by
whitespace; empty lines and lines starting with ``#`` are ignored. Options
are separated by commas: ``write`` (which implies ``read``) and ``read``.
A password is clear text, or ``{cleartext}`` followed by the clear text, or
``{HA1}`` followed by the hex MD5 of ``name:realm:password`` (RFC 2617's
H(A1)); scheme names are not case-sensitive. A clear-text password that
starts with ``{`` must carry the ``{cleartext}`` prefix.

``UsersFile`` reads the file again when it changes (its inode, size or
modification time), at most once per ``recheck`` seconds; a file that
disappeared leaves no users at all (removing it revokes everyone), one that
cannot be read or parsed keeps the users last read and is logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping

#: The realm of the basic authentication, part of every ``{HA1}`` hash. It is
#: Ganeti's, so that a users file written for Ganeti's RAPI works unchanged.
REALM = "Ganeti Remote API"

READ = "read"
WRITE = "write"
KNOWN_OPTIONS = frozenset({READ, WRITE})
_CLEARTEXT = "{CLEARTEXT}"
_HA1 = "{HA1}"


class UsersFileError(Exception):
    """The users file cannot be used (raised at start-up only)."""


@dataclasses.dataclass(frozen=True)
class User:
    """One line of the users file."""

    name: str
    password: str
    options: frozenset[str]

    @property
    def rights(self) -> frozenset[str]:
        """``read`` for every user, and ``write`` for those given it."""
        return frozenset({READ, WRITE}) if WRITE in self.options else frozenset({READ})

    def check_password(self, given: str, realm: str = REALM) -> bool:
        """Whether ``given`` is this user's password; compared in constant time."""
        scheme, expected = split_scheme(self.password)
        if scheme == _CLEARTEXT:
            return hmac.compare_digest(given.encode(), expected.encode())
        if scheme == _HA1:
            digest = ha1(self.name, given, realm)
            return hmac.compare_digest(digest, expected.lower())
        return False


def ha1(name: str, password: str, realm: str = REALM) -> str:
    """The hex MD5 of ``name:realm:password``, as a ``{HA1}`` password holds it."""
    text = f"{name}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


def split_scheme(password: str) -> tuple[str, str]:
    """``(SCHEME, rest)`` of a stored password; a plain one is ``{CLEARTEXT}``.

    An unknown scheme is returned as it is (nothing matches it).
    """
    if not password.startswith("{"):
        return _CLEARTEXT, password
    end = password.find("}", 1)
    if end <= 1:
        return "", password
    return password[: end + 1].upper(), password[end + 1 :]


def parse(text: str, warn: Callable[[str], None] = lambda message: None) -> dict[str, User]:
    """The users of a users file's text; ``warn`` hears of lines it had to skip or doubt."""
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            warn(f"line {number}: a user needs a name and a password; ignored")
            continue
        name, password = parts[0], parts[1]
        options = (
            frozenset(o.strip() for o in parts[2].split(",")) if len(parts) > 2 else frozenset()
        )
        unknown = sorted(options - KNOWN_OPTIONS - {""})
        if unknown:
            warn(f"line {number}: unknown options {', '.join(unknown)} for user {name!r}")
        scheme, _ = split_scheme(password)
        if scheme not in (_CLEARTEXT, _HA1):
            warn(f"line {number}: unknown password scheme {scheme or password[:12]!r} of {name!r}")
        if name in users:
            warn(f"line {number}: user {name!r} again; this line wins")
        users[name] = User(name, password, options)
    return users


class UsersFile:
    """The users of one file, read again when it changes; thread-safe.

    ``clock`` (monotonic seconds) paces the checks for changes.
    """

    def __init__(
        self,
        path: str,
        *,
        recheck: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        """Read the file now; ``UsersFileError`` if it cannot be read."""
        self.path = path
        self._recheck = recheck
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()  # guards _users, _signature, _checked
        self._users: Mapping[str, User] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked = clock()
        try:
            self._load_locked()
        except OSError as err:
            raise UsersFileError(f"Cannot read the users file {path}: {err.strerror}") from err

    def get(self, name: str) -> User | None:
        """The user called ``name`` as the file says now, or None."""
        with self._lock:
            if self._clock() - self._checked >= self._recheck:
                self._refresh_locked()
            return self._users.get(name)

    def reload(self) -> None:
        """Read the file again now (SIGHUP)."""
        with self._lock:
            self._signature = None
            self._refresh_locked()

    def count(self) -> int:
        with self._lock:
            return len(self._users)

    def _refresh_locked(self) -> None:
        """Read the file again if it changed. Needs ``_lock``."""
        self._checked = self._clock()
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if self._users:
                self._log.warning("The users file %s is gone: no user may log in", self.path)
            self._users, self._signature = {}, None
            return
        except OSError as err:
            self._log.error("Cannot look at the users file %s: %s", self.path, err.strerror)
            return
        if _signature(info) != self._signature:
            try:
                self._load_locked()
            except OSError as err:
                self._log.error(
                    "Cannot read the users file %s (%s); keeping the users read before",
                    self.path,
                    err.strerror,
                )

    def _load_locked(self) -> None:
        """Read and parse the file. Needs ``_lock``; raises OSError."""
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            info = os.fstat(handle.fileno())
            text = handle.read()
        if info.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
            self._log.warning(
                "The users file %s can be read or written by others (mode %o); it holds passwords",
                self.path,
                stat.S_IMODE(info.st_mode),
            )
        self._users = parse(text, lambda message: self._log.warning("%s: %s", self.path, message))
        self._signature = _signature(info)
        self._log.info("Read %d users from %s", len(self._users), self.path)


def _signature(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_ino, info.st_size, info.st_mtime_ns)
