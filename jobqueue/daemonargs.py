"""The command line of ``jobqueue-masterd``: its options and their checks."""

from __future__ import annotations

import argparse

from jobqueue import __version__, constants
from jobqueue.hooks import DEFAULT_TIMEOUT as DEFAULT_HOOK_TIMEOUT
from jobqueue.lus.command import RUN_AS_DAEMON, RUN_AS_SUBMITTER
from jobqueue.luxi import server as luxi_server
from jobqueue.luxi.listeners import ADMIN_RESERVE
from jobqueue.storage.etcdoptions import add_etcd_arguments
from jobqueue.storage.spares import DEFAULT_RESERVE as DEFAULT_SPARE_RESERVE

#: ``--batch-sync`` choices.
BATCH_SYNC_FILESYSTEM = "filesystem"
BATCH_SYNC_FILES = "files"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobqueue-masterd",
        description="The jobqueue master daemon: owns the queue in STATE_DIR and serves "
        "LUXI clients on STATE_DIR/run/master.sock and query.sock.",
    )
    add = parser.add_argument
    add(
        "--state-dir",
        metavar="DIR",
        help="state directory (default: $JOBQUEUE_STATE_DIR, else /var/lib/jobqueue for root, "
        "else $XDG_STATE_HOME/jobqueue)",
    )
    add(
        "--workers",
        type=_positive_int,
        default=constants.DEFAULT_WORKERS,
        help="jobs running an opcode at once, unless 'jobctl queue set-workers' stored a number"
        " (default: %(default)s)",
    )
    add(
        "--max-jobs",
        type=_positive_int,
        default=constants.DEFAULT_MAX_JOBS,
        help="live jobs before submissions fail with JobQueueFull (default: %(default)s)",
    )
    add(
        "--max-opcodes",
        type=_positive_int,
        default=constants.DEFAULT_MAX_OPCODES,
        help="opcodes the live jobs may hold in all before submissions fail with JobQueueFull;"
        " a job of more is refused outright (default: %(default)s)",
    )
    add(
        "--max-opcode-bytes",
        type=_positive_size,
        default=constants.DEFAULT_MAX_OPCODE_BYTES,
        metavar="BYTES",
        help="bytes of JSON the live jobs' opcode inputs may take in all, e.g. 100M or 1G,"
        " before submissions fail with JobQueueFull (default: 256M)",
    )
    add(
        "--socket-group",
        metavar="NAME",
        help="group whose members may use the master socket (besides root and the daemon's user)",
    )
    add(
        "--query-socket-group",
        metavar="NAME",
        help="group of run/query.sock, mode 0660, whose members may read every job "
        "(default: the socket group, else the daemon's group)",
    )
    add(
        "--query-socket-public",
        action="store_true",
        help="make run/query.sock 0666: every local user may read every job, inputs and output",
    )
    add(
        "--admin-group",
        metavar="NAME",
        help="members may cancel, kill, reprioritise and archive any job and change the queue "
        "(drain, auto-archive, prune), like root and the daemon's user",
    )
    add(
        "--commands-run-as",
        choices=[RUN_AS_SUBMITTER, RUN_AS_DAEMON],
        default=RUN_AS_SUBMITTER,
        help="under a root daemon, run each command as the user who submitted its job "
        "(default), or as root, which makes the socket group equal to root (Ganeti's model)",
    )
    add(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE and register the opcodes in its PAIRS (repeatable)",
    )
    add(
        "--log-file",
        metavar="FILE",
        help="log to FILE (reopened on SIGHUP); default: stderr, or log/jobqueue-masterd.log "
        "with --daemonize",
    )
    add("--debug", action="store_true", help="log debug messages")
    add(
        "--daemonize",
        action="store_true",
        help="fork into the background once the sockets are ready",
    )
    add(
        "--shutdown-timeout",
        type=float,
        default=constants.DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGTERM, wait this long for running opcodes (default: %(default)s)",
    )
    add(
        "--kill-grace",
        type=float,
        default=constants.DEFAULT_KILL_GRACE,
        metavar="SECONDS",
        help="between SIGTERM and SIGKILL when a running command is killed (default: %(default)s)",
    )
    add(
        "--max-message-size",
        type=_positive_int,
        default=constants.DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="largest request accepted (default: %(default)s)",
    )
    add(
        "--client-timeout",
        type=float,
        default=constants.DEFAULT_CLIENT_TIMEOUT,
        metavar="SECONDS",
        help="close connections idle this long (default: %(default)s)",
    )
    add(
        "--max-answer-size",
        type=_positive_int,
        default=luxi_server.DEFAULT_MAX_ANSWER_SIZE,
        metavar="BYTES",
        help="largest answer sent; a larger one fails with AnswerTooLarge (ask for fewer jobs "
        "or fields) (default: %(default)s)",
    )
    add(
        "--max-pending-output",
        type=_positive_int,
        default=luxi_server.DEFAULT_OUTPUT_BUDGET,
        metavar="BYTES",
        help="answers held for clients that have not read them yet; past it read-only requests "
        "wait their turn (default: %(default)s)",
    )
    add(
        "--send-timeout",
        type=float,
        default=luxi_server.DEFAULT_SEND_TIMEOUT,
        metavar="SECONDS",
        help="close a connection whose client takes none of its answer for this long "
        "(default: %(default)s)",
    )
    add(
        "--max-connections",
        type=_positive_int,
        default=luxi_server.DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="clients served at once on each socket; more are refused at once; lowered at "
        "start if the descriptor limit leaves less room (default: %(default)s)",
    )
    add(
        "--max-connections-per-user",
        type=_positive_int,
        default=None,
        metavar="N",
        help="connections one user may hold on each socket; root and the daemon's user are "
        f"not held to it and may open {ADMIN_RESERVE} past --max-connections "
        "(default: a quarter of --max-connections)",
    )
    add(
        "--max-output-size",
        type=_size,
        default=constants.DEFAULT_MAX_OUTPUT_SIZE,
        metavar="BYTES",
        help="command output kept on disk per job, e.g. 100M or 2G; more is cut, with a "
        "marker (default: 1G)",
    )
    add(
        "--hooks-dir",
        metavar="DIR",
        help="run the executables in DIR whenever a job ends (see doc/jobqueue-masterd.rst)",
    )
    add(
        "--hook-timeout",
        type=float,
        default=DEFAULT_HOOK_TIMEOUT,
        metavar="SECONDS",
        help="kill a finish hook still running after this long (default: %(default)s)",
    )
    add(
        "--spare-files",
        type=_count,
        default=DEFAULT_SPARE_RESERVE,
        metavar="N",
        help="empty files the file store keeps ready in queue/ for new jobs, made in the "
        "background, so that a burst of submissions makes none (default: %(default)s)",
    )
    add(
        "--batch-sync",
        choices=[BATCH_SYNC_FILESYSTEM, BATCH_SYNC_FILES],
        default=BATCH_SYNC_FILESYSTEM,
        help="how the file store makes two or more new jobs durable: one sync of the "
        "file system holding the queue (default; it also writes out other programs' pending "
        "data on that file system; concurrent submissions are combined), or a sync of "
        "each file",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add_etcd_arguments(parser)
    return parser


def _positive_int(text: str) -> int:
    """An argparse type; its error names what was expected (argparse adds the option)."""
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return int(text)


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(text: str) -> int:
    """An argparse type: bytes, or a number with K, M, G or T (powers of 1024)."""
    number, unit = text.strip(), ""
    if number[-1:].upper() in _SIZE_UNITS:
        number, unit = number[:-1], number[-1].upper()
    if not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes, or with K, M, G or T (such as 100M), got {text!r}"
        )
    return int(number) * _SIZE_UNITS[unit]


def _positive_size(text: str) -> int:
    """An argparse type: ``_size``, at least 1 byte."""
    size = _size(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte, got {text!r}")
    return size
