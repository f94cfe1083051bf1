"""How the etcd store reaches etcd: endpoints, deadlines, TLS, tokens, and failures.

etcd is reached through its v3 JSON gateway (served on the client port of
every etcd since 3.4): calls over kept-alive connections of the standard
library's ``http.client`` (``etcdhttp``), watch streams through
``requests``; doc/ha.rst says why. ``EtcdConnection.call`` posts one
request to the first endpoint that answers, within a deadline
(``EtcdSettings.timeout`` unless given), so no call hangs when etcd has lost
its quorum.

A failed call raises ``StorageError`` whose message names each endpoint
tried and etcd's reason, and whose errno says what happened (the table is
in doc/ha.rst): notably ``ETIMEDOUT``, no answer in time, after which a
write may or may not have been applied, and ``EFBIG``, over etcd's size
limit, nothing written. A request never sent whole (connection or TLS
refused, or the connection closed while sending) is tried on the next
endpoint, and so is a read that etcd answers "unavailable"; a write of
unknown outcome is not retried.
"""

from __future__ import annotations

import errno
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import requests

from jobqueue.errors import StorageError
from jobqueue.storage.etcdhttp import GatewayConnections, GatewayError

#: The API path of the JSON gateway in etcd 3.4 and later.
API_PATH = "/v3/"

# gRPC status codes in the gateway's error answers.
_CODE_PERMISSION_DENIED = 7
_CODE_OUT_OF_RANGE = 11
_CODE_UNAVAILABLE = 14
_CODE_UNAUTHENTICATED = 16


@dataclass(frozen=True)
class EtcdSettings:
    """Where etcd is and how to talk to it.

    ``endpoints`` are client URLs (``http://host:2379`` or ``https://...``);
    ``timeout`` bounds every call in seconds. TLS: ``ca_file`` verifies the
    servers, ``cert_file`` and ``key_file`` are our client certificate. With
    ``user`` and ``password`` the client authenticates and sends the token.
    """

    endpoints: tuple[str, ...]
    timeout: float = 5.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        for url in self.endpoints:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
                raise ValueError(f"etcd endpoint {url!r} is not http(s)://host:port")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("an etcd client certificate needs both cert_file and key_file")
        if (self.user is None) != (self.password is None):
            raise ValueError("etcd authentication needs both user and password")
        if self.timeout <= 0:
            raise ValueError("the etcd timeout must be positive")

    @classmethod
    def from_list(cls, endpoints: str, **options: Any) -> EtcdSettings:
        """Settings from a comma-separated list of URLs (the command-line form)."""
        urls = tuple(url.strip().rstrip("/") for url in endpoints.split(",") if url.strip())
        return cls(endpoints=urls, **options)


class _Failure(NamedTuple):
    message: str
    errno: int
    never_sent: bool = False
    unavailable: bool = False
    unauthenticated: bool = False


def _parsed(data: bytes) -> dict[str, Any] | None:
    """The JSON object of an answer; None if it is not one."""
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _unreadable(text: str, write: bool) -> _Failure:
    """A 200 answer whose body is not a JSON object: whether a write was applied is unknown."""
    return _Failure(f"unreadable answer: {text[:500]}", errno.ETIMEDOUT if write else errno.EIO)


def _refusal(text: str) -> _Failure:
    """What an answer that is not a result means: etcd's reason, an errno, what may be retried."""
    try:
        detail = json.loads(text)
        reason, code = str(detail.get("error") or detail.get("message")), int(detail["code"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return _Failure(f"unexpected answer: {text[:500]}", errno.EIO)
    if code == _CODE_UNAUTHENTICATED or "user name is empty" in reason:
        return _Failure(reason, errno.EACCES, unauthenticated=True)
    if code == _CODE_PERMISSION_DENIED or "authentication failed" in reason:
        return _Failure(reason, errno.EACCES)
    if code == _CODE_OUT_OF_RANGE or "compacted" in reason:
        return _Failure(reason, errno.ESTALE)
    if "too large" in reason or "larger than max" in reason:
        return _Failure(reason, errno.EFBIG)
    if "space exceeded" in reason:
        return _Failure(reason, errno.ENOSPC)
    if "no leader" in reason:
        return _Failure(reason, errno.EAGAIN, unavailable=True)
    if code == _CODE_UNAVAILABLE or "deadline exceeded" in reason:
        return _Failure(reason, errno.ETIMEDOUT, unavailable=True)
    return _Failure(reason, errno.EIO)


class EtcdConnection:
    """One etcd cluster, reached through any of its endpoints; safe for many threads.

    ``clock`` (monotonic seconds) is passed in for the deadlines.
    """

    def __init__(self, settings: EtcdSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._current = 0  # index of the endpoint tried first; under _lock
        self._gateway = GatewayConnections(settings.ca_file, settings.cert_file, settings.key_file)
        self._token: str | None = None  # sent with every request once authenticated
        self._auth_lock = threading.Lock()

    def new_session(self) -> requests.Session:
        """An HTTP session with our TLS settings, for a watch stream.

        The environment is ignored: REQUESTS_CA_BUNDLE would override our CA
        file, and no proxy stands between us and etcd. Without a CA file it
        trusts the system's CAs, as calls do (``etcdhttp``).
        """
        session = requests.Session()
        session.trust_env = False
        system = ssl.get_default_verify_paths()
        session.verify = self.settings.ca_file or system.cafile or system.capath or True
        if self.settings.cert_file and self.settings.key_file:
            session.cert = (self.settings.cert_file, self.settings.key_file)
        return session

    def endpoint_order(self) -> list[str]:
        """The endpoints, starting with the one that answered last."""
        with self._lock:
            first = self._current
        endpoints = self.settings.endpoints
        return [endpoints[(first + step) % len(endpoints)] for step in range(len(endpoints))]

    def mark_failed(self, endpoint: str) -> None:
        """Try another endpoint first from now on, unless someone already moved on."""
        endpoints = self.settings.endpoints
        with self._lock:
            if endpoints[self._current] == endpoint:
                self._current = (self._current + 1) % len(endpoints)

    def call(
        self, path: str, body: Mapping[str, Any], *, write: bool, timeout: float | None = None
    ) -> dict[str, Any]:
        """POST ``body`` to the gateway's ``path``; the JSON answer.

        Raises StorageError when no endpoint answers well before the deadline.
        """
        limit = self.settings.timeout if timeout is None else timeout
        deadline = self.clock() + limit
        if self.settings.user and self._token is None:
            self.authenticate(deadline)
        return self._post(path, body, write=write, deadline=deadline, reauthenticate=True)

    def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        write: bool,
        deadline: float,
        reauthenticate: bool,
    ) -> dict[str, Any]:
        failures: list[str] = []
        code = errno.ECONNREFUSED
        payload = json.dumps(body).encode()
        api_path = API_PATH + path.lstrip("/")
        for endpoint in self.endpoint_order() * 2:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            token = self._token
            headers = {"Authorization": token} if token else {}
            try:
                status, data = self._gateway.post(endpoint, api_path, payload, headers, remaining)
            except GatewayError as exc:
                failure = _Failure(exc.message, exc.errno, never_sent=not exc.sent)
            else:
                answer = _parsed(data) if status == 200 else None
                if answer is not None:
                    return answer
                text = data.decode("utf-8", "replace")
                failure = _unreadable(text, write) if status == 200 else _refusal(text)
            failures.append(f"{endpoint}: {failure.message}")
            code = failure.errno
            if failure.unauthenticated and reauthenticate and self.settings.user:
                reauthenticate = False
                self.authenticate(deadline, refused=token)
                continue
            self.mark_failed(endpoint)
            if not (failure.never_sent or (failure.unavailable and not write)):
                raise StorageError(_message(path, write, failures, failure.errno), failure.errno)
        if self.clock() >= deadline:
            code = errno.ETIMEDOUT
            failures.append("no answer before the deadline")
        raise StorageError(_message(path, write, failures, code), code)

    def authenticate(self, deadline: float | None = None, refused: str | None = None) -> None:
        """Get a token for ``settings.user``; every later request sends it.

        ``refused``: the token etcd turned down (None: no token was sent).
        Threads refused at once wait for one authentication: a thread that
        finds the token already replaced when its turn comes asks no new one
        (etcd checks a password slowly, on purpose). Raises StorageError:
        EACCES when etcd refuses the user or password, ETIMEDOUT when the
        deadline passes, waiting included.
        """
        if not self.settings.user:
            return
        deadline = deadline or self.clock() + self.settings.timeout
        if not self._auth_lock.acquire(timeout=max(0.0, deadline - self.clock())):
            raise StorageError(
                "etcd /auth/authenticate failed: another thread's authentication "
                "did not end before the deadline",
                errno.ETIMEDOUT,
            )
        try:
            if self._token is not None and self._token != refused:
                return  # renewed by another thread while this one waited
            self._token = None
            body = {"name": self.settings.user, "password": self.settings.password}
            answer = self._post(
                "/auth/authenticate", body, write=False, deadline=deadline, reauthenticate=False
            )
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise StorageError("etcd /auth/authenticate answered no token", errno.EIO)
            self._token = token
        finally:
            self._auth_lock.release()

    @property
    def token(self) -> str | None:
        """The authentication token sent with each request, if any."""
        return self._token

    def close(self) -> None:
        self._gateway.close()

    def stream(
        self,
        session: requests.Session,
        endpoint: str,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        idle_timeout: float,
    ) -> requests.Response:
        """POST ``body`` and return the answer as a stream that ends after ``idle_timeout``
        of silence.

        Raises requests.RequestException when the endpoint cannot be reached
        or refuses; StorageError when a new token is needed and not given.
        """
        sent = dict(headers)
        if self.token:
            sent["Authorization"] = self.token
        connect = min(idle_timeout, self.settings.timeout)
        response = session.post(
            f"{endpoint}{API_PATH}{path.lstrip('/')}",
            json=body,
            headers=sent,
            stream=True,
            timeout=(connect, idle_timeout),
        )
        if response.status_code != requests.codes.ok:
            text = response.text[:500]
            response.close()
            if self.settings.user and ("auth token" in text or "user name is empty" in text):
                self.authenticate(refused=sent.get("Authorization"))
            raise requests.HTTPError(f"{path} refused by {endpoint}: {text}")
        return response


def _message(path: str, write: bool, failures: list[str], code: int) -> str:
    unknown = write and code == errno.ETIMEDOUT
    outcome = " (the write may or may not have been applied)" if unknown else ""
    return f"etcd {path} failed{outcome}: " + "; ".join(failures)
