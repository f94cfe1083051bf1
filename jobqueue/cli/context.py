"""What every command gets: where the daemon is, a lazy client, the streams."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from jobqueue.luxi.client import Client
    from jobqueue.paths import StatePaths

ClientFactory = Callable[[str], "Client"]
#: Where ``make run`` keeps the daemon's state, relative to the checkout.
LOCAL_STATE = "state"
DEFAULT_WIDTH = 80


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
        self.socket_given = socket_path is not None
        self._socket_path = socket_path
        self._state_dir = state_dir
        self._client_factory = client_factory
        self._client: Client | None = None
        self.on_query_socket = False
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def _paths(self) -> StatePaths:
        from jobqueue.paths import StatePaths

        return StatePaths.resolve(self._state_dir)

    @property
    def socket_path(self) -> str:
        """The daemon's socket: ``--socket``, else the state directory's master socket."""
        if self._socket_path is None:
            self._socket_path = self._paths().master_socket
        return self._socket_path

    @property
    def client(self) -> Client:
        """The connection to the daemon, opened on first use."""
        if self._client is None:
            self._client = self._client_factory(self.socket_path)
        return self._client

    def use_query_socket(self) -> bool:
        """Switch to the read-only query socket; False if that is not for us to do.

        Only a socket jobctl chose itself is replaced, and only once.
        """
        if self.socket_given or self.on_query_socket:
            return False
        self.close()
        self._socket_path = self._paths().query_socket
        self.on_query_socket = True
        return True

    def no_daemon_hints(self) -> list[str]:
        """Lines after "Cannot reach ...": where the socket came from, and a likely one."""
        if self.socket_given:
            return []
        from jobqueue.paths import STATE_DIR_ENV

        local = os.path.join(LOCAL_STATE, "run", os.path.basename(self.socket_path))
        if os.path.exists(local) and os.path.abspath(local) != self.socket_path:
            return [
                f"Hint: ./{local} exists; use it with --state-dir ./{LOCAL_STATE}"
                f" or export {STATE_DIR_ENV}=$PWD/{LOCAL_STATE}"
            ]
        if self._state_dir:
            return []
        if os.environ.get(STATE_DIR_ENV):
            return [
                f"Hint: the state directory comes from {STATE_DIR_ENV};"
                " give the daemon's with --state-dir DIR"
            ]
        return [
            f"Hint: neither --state-dir nor {STATE_DIR_ENV} is set, so the default state"
            f" directory was used; give the daemon's with --state-dir DIR or {STATE_DIR_ENV}=DIR"
        ]

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def is_terminal(self) -> bool:
        """Whether standard output is a terminal (people, not a script, read it)."""
        try:
            return self.stdout.isatty()
        except (AttributeError, ValueError):
            return False

    def terminal_width(self) -> int:
        """Columns of the terminal: ``$COLUMNS``, else what the terminal says, else 80."""
        try:
            return max(int(os.environ["COLUMNS"]), 20)
        except (KeyError, ValueError):
            pass
        try:
            return os.get_terminal_size(self.stdout.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return DEFAULT_WIDTH

    def colours(self) -> bool:
        """Whether colours are wanted: not with ``NO_COLOR`` set, nor on a dumb terminal."""
        return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def out(self, line: str = "", *, flush: bool = False) -> None:
        """Print ``line`` on stdout; ``flush`` for output a reader waits for."""
        self.stdout.write(line + "\n")
        if flush:
            self.stdout.flush()

    def write_bytes(self, data: bytes, *, to_stderr: bool = False) -> None:
        """Write raw bytes to stdout (or stderr) as they are, after any text written."""
        stream = self.stderr if to_stderr else self.stdout
        if to_stderr:
            self.stdout.flush()
        stream.flush()
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:  # a text-only stream (tests): decoded as well as it goes
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()

    def err(self, line: str) -> None:
        """Print ``line`` on stderr (after what stdout holds so far)."""
        self.stdout.flush()
        self.stderr.write(line + "\n")
        self.stderr.flush()
