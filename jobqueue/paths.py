"""Where things live under the state directory, found the same way by all tools.

Resolution order for the state directory: an explicit argument
(``--state-dir``), then ``JOBQUEUE_STATE_DIR``, then ``/var/lib/jobqueue`` for
root and ``$XDG_STATE_HOME/jobqueue`` (default ``~/.local/state/jobqueue``)
for anyone else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from jobqueue import constants

STATE_DIR_ENV = "JOBQUEUE_STATE_DIR"


def default_state_dir(environ: Mapping[str, str] | None = None, euid: int | None = None) -> str:
    """Return the state directory to use when none was given explicitly."""
    env = os.environ if environ is None else environ
    if env.get(STATE_DIR_ENV):
        return env[STATE_DIR_ENV]
    if (os.geteuid() if euid is None else euid) == 0:
        return "/var/lib/jobqueue"
    xdg = env.get("XDG_STATE_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(xdg, "jobqueue")


class StatePaths:
    """Every path of the layout, derived from one state directory.

    A plain class, not a dataclass: the CLI imports this module, and
    ``dataclasses`` (through ``inspect``) would slow every ``jobctl`` start.
    """

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatePaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"StatePaths({self.root!r})"

    @classmethod
    def resolve(cls, state_dir: str | None = None) -> StatePaths:
        """Build the layout for ``state_dir`` or the default state directory."""
        return cls(os.path.abspath(state_dir or default_state_dir()))

    @property
    def queue_dir(self) -> str:
        return os.path.join(self.root, constants.QUEUE_DIR)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, constants.RUN_DIR)

    @property
    def commands_dir(self) -> str:
        return os.path.join(self.run_dir, constants.COMMANDS_DIR)

    @property
    def output_dir(self) -> str:
        """The output of the commands this daemon runs, when the queue is kept in etcd."""
        return os.path.join(self.root, constants.OUTPUT_DIR)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.root, constants.LOG_DIR)

    @property
    def master_socket(self) -> str:
        return os.path.join(self.run_dir, constants.MASTER_SOCKET)

    @property
    def query_socket(self) -> str:
        return os.path.join(self.run_dir, constants.QUERY_SOCKET)

    @property
    def daemon_lock(self) -> str:
        """Locked by the daemon of this state directory when the queue is kept elsewhere."""
        return os.path.join(self.run_dir, constants.DAEMON_LOCK)

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, constants.PID_FILE)

    @property
    def log_file(self) -> str:
        return os.path.join(self.log_dir, constants.DAEMON_LOG)
