"""What every command gets: where the daemon is, a lazy client, the streams."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from jobqueue.luxi.client import Client

ClientFactory = Callable[[str], "Client"]


def _default_client(path: str) -> Client:
    """A client on the daemon's socket ``path``; imports the LUXI client only now."""
    from jobqueue.luxi.client import Client

    return Client(path)


class Context:
    """The daemon's address, a connection opened on first use, and the streams.

    ``socket_path`` is the explicit ``--socket``; when None it is derived
    from ``state_dir`` (or the default state directory) on first use.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        state_dir: str | None = None,
        *,
        client_factory: ClientFactory = _default_client,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._state_dir = state_dir
        self._client_factory = client_factory
        self._client: Client | None = None
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    @property
    def socket_path(self) -> str:
        """The daemon's socket: ``--socket``, else the state directory's master socket."""
        if self._socket_path is None:
            from jobqueue.paths import StatePaths

            self._socket_path = StatePaths.resolve(self._state_dir).master_socket
        return self._socket_path

    @property
    def client(self) -> Client:
        """The connection to the daemon, opened on first use."""
        if self._client is None:
            self._client = self._client_factory(self.socket_path)
        return self._client

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def out(self, line: str = "", *, flush: bool = False) -> None:
        """Print ``line`` on stdout; ``flush`` for output a reader waits for."""
        self.stdout.write(line + "\n")
        if flush:
            self.stdout.flush()

    def err(self, line: str) -> None:
        """Print ``line`` on stderr (after what stdout holds so far)."""
        self.stdout.flush()
        self.stderr.write(line + "\n")
        self.stderr.flush()
