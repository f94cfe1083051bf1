"""How the etcd store reaches etcd: endpoints, deadlines, TLS, tokens, and failures.

etcd is reached through its v3 JSON gateway (served on the client port of
every etcd since 3.4) with the ``etcd3gw`` client; doc/ha.rst says why this
client. ``EtcdConnection.call`` posts one request to the first endpoint
that answers, within a deadline (``EtcdSettings.timeout`` unless given), so
no call hangs when etcd has lost its quorum.

A failed call raises ``StorageError`` whose message names each endpoint
tried and etcd's reason, and whose errno says what happened (the table is
in doc/ha.rst): notably ``ETIMEDOUT``, no answer in time, after which a
write may or may not have been applied, and ``EFBIG``, over etcd's size
limit, nothing written. A request never sent (connection or TLS refused) is
tried on the next endpoint, and so is a read that etcd answers
"unavailable"; a write of unknown outcome is not retried.
"""

from __future__ import annotations

import errno
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import requests
from etcd3gw import exceptions as gw_errors
from etcd3gw.client import Etcd3Client

from jobqueue.errors import StorageError

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


def _classify(exc: gw_errors.Etcd3Exception) -> _Failure:
    """Turn what etcd3gw raised into a message, an errno and what may be retried."""
    cause = exc.__context__
    if isinstance(cause, requests.ConnectTimeout):
        return _Failure("cannot connect in time", errno.ETIMEDOUT, never_sent=True)
    if isinstance(cause, requests.Timeout):
        return _Failure("no answer in time", errno.ETIMEDOUT)
    if isinstance(cause, requests.exceptions.SSLError):
        return _Failure(f"TLS refused ({cause})", errno.EACCES, never_sent=True)
    if isinstance(cause, requests.ConnectionError):
        if "NewConnectionError" in repr(cause):
            return _Failure("cannot connect", errno.ECONNREFUSED, never_sent=True)
        return _Failure(f"connection lost ({cause})", errno.ETIMEDOUT)
    try:
        detail = json.loads(exc.detail_text or "")
        reason, code = str(detail.get("error") or detail.get("message")), int(detail["code"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return _Failure(f"unexpected answer: {exc.detail_text or exc}", errno.EIO)
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
        self._session = self.new_session()
        self._auth_lock = threading.Lock()

    def new_session(self) -> requests.Session:
        """An HTTP session with our TLS settings (watches use one of their own).

        The environment is ignored: REQUESTS_CA_BUNDLE would override our CA
        file, and no proxy stands between us and etcd.
        """
        session = requests.Session()
        session.trust_env = False
        if self.settings.ca_file:
            session.verify = self.settings.ca_file
        if self.settings.cert_file and self.settings.key_file:
            session.cert = (self.settings.cert_file, self.settings.key_file)
        return session

    def _client(self, endpoint: str, timeout: float) -> Etcd3Client:
        parts = urllib.parse.urlsplit(endpoint)
        assert parts.hostname is not None and parts.port is not None
        return Etcd3Client(
            host=parts.hostname,
            port=parts.port,
            protocol=parts.scheme,
            timeout=timeout,
            api_path=API_PATH,
            session=self._session,
        )

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
        if self.settings.user and "Authorization" not in self._session.headers:
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
        for endpoint in self.endpoint_order() * 2:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            try:
                client = self._client(endpoint, remaining)
                answer: dict[str, Any] = client.post(client.get_url(path), json=body)
                return answer
            except gw_errors.Etcd3Exception as exc:
                failure = _classify(exc)
            failures.append(f"{endpoint}: {failure.message}")
            code = failure.errno
            if failure.unauthenticated and reauthenticate and self.settings.user:
                reauthenticate = False
                self.authenticate(deadline)
                continue
            self.mark_failed(endpoint)
            if not (failure.never_sent or (failure.unavailable and not write)):
                raise StorageError(_message(path, write, failures, failure.errno), failure.errno)
        if self.clock() >= deadline:
            code = errno.ETIMEDOUT
            failures.append("no answer before the deadline")
        raise StorageError(_message(path, write, failures, code), code)

    def authenticate(self, deadline: float | None = None) -> None:
        """Get a token for ``settings.user``; every later request sends it.

        Raises StorageError (EACCES) when etcd refuses the user or password.
        """
        if not self.settings.user:
            return
        body = {"name": self.settings.user, "password": self.settings.password}
        with self._auth_lock:
            self._session.headers.pop("Authorization", None)
            answer = self._post(
                "/auth/authenticate",
                body,
                write=False,
                deadline=deadline or self.clock() + self.settings.timeout,
                reauthenticate=False,
            )
            self._session.headers["Authorization"] = str(answer["token"])

    @property
    def token(self) -> str | None:
        """The authentication token sent with each request, if any."""
        token = self._session.headers.get("Authorization")
        return str(token) if token else None

    def close(self) -> None:
        self._session.close()

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
                self.authenticate()
            raise requests.HTTPError(f"{path} refused by {endpoint}: {text}")
        return response


def _message(path: str, write: bool, failures: list[str], code: int) -> str:
    unknown = write and code == errno.ETIMEDOUT
    outcome = " (the write may or may not have been applied)" if unknown else ""
    return f"etcd {path} failed{outcome}: " + "; ".join(failures)
