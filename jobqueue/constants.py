"""The shared vocabulary: statuses, priorities, limits and file names.

Everything here is a plain value; no module-level state.
"""

from __future__ import annotations

import enum

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final


class Status(enum.StrEnum):
    """Status of a job or of one of its opcodes (both share the strings)."""

    QUEUED = "queued"
    WAITING = "waiting"
    CANCELING = "canceling"
    RUNNING = "running"
    CANCELED = "canceled"
    SUCCESS = "success"
    ERROR = "error"


#: A job or opcode in one of these will never change again.
FINALIZED: Final = frozenset({Status.CANCELED, Status.SUCCESS, Status.ERROR})
#: Accepted by the queue but not yet running.
PENDING: Final = frozenset({Status.QUEUED, Status.WAITING, Status.CANCELING})

# Priorities: lower number runs first, like Unix nice values.
PRIO_HIGHEST: Final = -20
PRIO_LOWEST: Final = 19
PRIO_HIGH: Final = -10
PRIO_NORMAL: Final = 0
PRIO_LOW: Final = 10
PRIO_DEFAULT: Final = PRIO_NORMAL
#: The priorities a client may submit or change to; the rest are reached only
#: through lock-wait escalation.
PRIO_SUBMIT_VALID: Final = frozenset({PRIO_HIGH, PRIO_NORMAL, PRIO_LOW})
PRIO_NAMES: Final = {"high": PRIO_HIGH, "normal": PRIO_NORMAL, "low": PRIO_LOW}

# Log entry types written by the queue and the built-in LUs.
ELOG_MESSAGE: Final = "message"
ELOG_STDOUT: Final = "stdout"
ELOG_STDERR: Final = "stderr"

# Fixed texts clients and tests match on.
MSG_CANCELED: Final = "Job canceled by request"
MSG_UNCLEAN_SHUTDOWN: Final = "Unclean master daemon shutdown"
MSG_FAILED_OVER: Final = "Master failed over: the master running this job stopped leading"
MSG_KILLED_AT_SHUTDOWN: Final = "Killed at daemon shutdown: still running after --shutdown-timeout"
MSG_PRECEDING_FAILED: Final = "Preceding opcode failed"
MSG_NOT_RETRIED: Final = (
    "Not retried: the opcode ran to its end, and running it again would repeat what it did"
)
MSG_DRAINED: Final = "Job queue is drained, refusing job"
MSG_SHUTTING_DOWN: Final = "Job queue is shutting down, refusing job"

#: WaitForJobChange answer when nothing changed before the timeout.
JOB_NOTCHANGED: Final = "nochange"

# Layout under the state directory (inside queue/, see jobqueue.storage.layout).
QUEUE_DIR: Final = "queue"
RUN_DIR: Final = "run"
COMMANDS_DIR: Final = "commands"
LOG_DIR: Final = "log"
#: Command output the daemon keeps on its own host when the queue is in etcd.
OUTPUT_DIR: Final = "output"
MASTER_SOCKET: Final = "master.sock"
QUERY_SOCKET: Final = "query.sock"
PID_FILE: Final = "jobqueue-masterd.pid"
DAEMON_LOCK: Final = "jobqueue-masterd.lock"
DAEMON_LOG: Final = "jobqueue-masterd.log"

#: On-disk format version written to queue/version: 2 added start records
#: (``.start-<n>`` files, ``doc/storage.rst``), which a daemon reading only 1
#: would miss. A queue of version 1 is read, and marked 2 by its owner.
QUEUE_FORMAT_VERSION: Final = 2
QUEUE_FORMATS_READ: Final = frozenset({1, 2})
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700

# Limits and defaults.
DEFAULT_WORKERS: Final = 25
#: The most workers ``SetMaxRunningJobs`` accepts.
MAX_WORKERS: Final = 1000
DEFAULT_MAX_JOBS: Final = 50_000
#: Opcodes the live jobs may hold in all: a waiting opcode costs the daemon
#: about 1 KiB of memory (``doc/performance.rst``), so about 0.5 GiB.
DEFAULT_MAX_OPCODES: Final = 500_000
#: Bytes of JSON the live jobs' opcode inputs may take in all (their values'
#: size, which the opcode count does not bound).
DEFAULT_MAX_OPCODE_BYTES: Final = 256 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
DEFAULT_CLIENT_TIMEOUT: Final = 300.0
DEFAULT_SHUTDOWN_TIMEOUT: Final = 60.0
DEFAULT_KILL_GRACE: Final = 10.0
#: The server never blocks a WaitForJobChange call for longer than this.
WFJC_MAX_TIMEOUT: Final = 60.0
#: Per-opcode cap on captured command output (lines, and bytes as written).
COMMAND_LOG_MAX_LINES: Final = 10_000
COMMAND_LOG_MAX_BYTES: Final = 1024 * 1024
#: A longer line (or output without newlines) is logged in pieces of this size.
COMMAND_LOG_MAX_LINE_BYTES: Final = 64 * 1024
#: Default of ``--max-output-size``: raw output kept on disk per job (all opcodes, both streams).
DEFAULT_MAX_OUTPUT_SIZE: Final = 1024 * 1024 * 1024
#: The most output bytes of one stream a ReadJobOutput answer carries.
OUTPUT_READ_MAX: Final = 1024 * 1024
#: The most bytes an OP_COMMAND_RUN may pass to its command's standard input.
COMMAND_STDIN_MAX: Final = 64 * 1024

#: The LUXI protocol version we announce (Ganeti's 2.6 numbering is 2060000).
LUXI_VERSION: Final = 2060000
#: Message terminator on the wire.
LUXI_EOM: Final = b"\x03"
