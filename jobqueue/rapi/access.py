"""Who may do what: HTTP basic authentication, read and write rights, same-origin writes.

Rights are Ganeti's: every resource needs ``read`` to be read, and
``write`` to be changed (POST, PUT, DELETE) or, for ``GET
/2/jobs/[id]/wait``, which blocks server resources, to be read too. A user
of the users file has ``read``, and ``write`` when given it (``write``
implies ``read``). Unlike Ganeti, which lets anyone read unless told
``--require-authentication``, every request needs a user unless
``--allow-anonymous-read`` is given: job inputs and logs may hold secrets.
Credentials that are sent are always checked, also where none are needed.

Basic authentication gives a browser no protection of its own against
cross-site requests, so a request that changes something is refused when
the browser says it comes from another site: an ``Origin`` header naming
another origin than the one asked, or ``Sec-Fetch-Site`` other than
``same-origin`` or ``none``. Clients that are not browsers send neither.

Answers: 401 with ``WWW-Authenticate: Basic realm="..."`` for missing or
wrong credentials, 403 for a user without the right, 403 for a cross-site
change.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import urllib.parse
from collections.abc import Mapping

from jobqueue.rapi.answers import HttpError
from jobqueue.rapi.users import READ, REALM, WRITE, User, UsersFile

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_SITE = frozenset({"same-origin", "none"})


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who sent a request: a user of the users file, or nobody (anonymous)."""

    user: User | None

    @property
    def name(self) -> str:
        return self.user.name if self.user is not None else "-"

    @property
    def rights(self) -> frozenset[str]:
        if self.user is None:
            return frozenset({READ})  # only ever let in with --allow-anonymous-read
        return self.user.rights

    @property
    def can_write(self) -> bool:
        return WRITE in self.rights


class Gate:
    """Decides each request from its method, headers and the right it needs."""

    def __init__(
        self,
        users: UsersFile,
        *,
        anonymous_read: bool = False,
        realm: str = REALM,
        logger: logging.Logger | None = None,
    ) -> None:
        self._users = users
        self._anonymous_read = anonymous_read
        self._realm = realm
        self._log = logger or logging.getLogger(__name__)

    def admit(self, method: str, needed: str, headers: Mapping[str, str], host: str) -> Caller:
        """The caller of a request needing right ``needed``; ``HttpError`` if refused.

        ``host`` is the request's ``Host`` header, for the same-origin check.
        """
        if method not in SAFE_METHODS:
            check_same_origin(headers, host)
        credentials = headers.get("Authorization")
        if credentials is None:
            if self._anonymous_read and needed == READ:
                return Caller(None)
            raise self._challenge("Authentication required")
        user = self._authenticate(credentials)
        if needed not in user.rights:
            self._log.info("User %r lacks the %s right", user.name, needed)
            raise HttpError(403, f"User {user.name!r} may not do this (it needs {needed} access)")
        return Caller(user)

    def _authenticate(self, credentials: str) -> User:
        parts = credentials.strip().split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "basic":
            raise self._challenge("Only HTTP basic authentication is supported")
        try:
            text = base64.b64decode(parts[1].encode("ascii"), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeError, ValueError):
            raise self._challenge("Malformed credentials") from None
        name, colon, password = text.partition(":")
        user = self._users.get(name) if colon else None
        if user is None or not user.check_password(password, self._realm):
            self._log.warning("Failed login as %r", name[:64])
            raise self._challenge("Wrong user name or password")
        return user

    def _challenge(self, message: str) -> HttpError:
        return HttpError(401, message, {"WWW-Authenticate": f'Basic realm="{self._realm}"'})


def check_same_origin(headers: Mapping[str, str], host: str) -> None:
    """Refuse (403) a change a browser says another site asked for."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in _SAME_SITE:
        raise HttpError(403, "Cross-site request refused")
    origin = headers.get("Origin")
    if origin is None:
        return
    parsed = urllib.parse.urlsplit(origin)
    if origin == "null" or not parsed.netloc or parsed.netloc.lower() != host.lower():
        raise HttpError(403, "Cross-site request refused")
