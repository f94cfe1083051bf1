"""jobqueue-masterd: builds the object graph, handles signals, nothing else.

Start-up order matters: raise the descriptor limit, refuse a state
directory others could have written into (``statedir``), take the queue
lock (a second daemon fails here), remove the socket files a killed daemon
left behind, check the on-disk version, stop the commands a killed daemon
left running, load and recover jobs, and only then create the sockets, so a
socket that exists always belongs to a daemon that is ready.

Descriptors: the soft ``RLIMIT_NOFILE`` is raised to the hard limit, and a
reserve of it is kept for the daemon's own files, pipes and commands: each
socket serves at most ``--max-connections`` clients, fewer if the limit
leaves less room (``connection_limit``).

Testing aid: when the environment variable ``JOBQUEUE_FAULT_FILE`` names a
control file, job storage goes through ``jobqueue.storage.faults.FaultyDisk``, which
fails disk writes with ENOSPC or EIO while that file asks for it. It exists
for the fault tests only and must never be set in production (see
``doc/reliability.rst``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import grp
import io
import logging
import os
import platform
import resource
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NamedTuple

from jobqueue import __version__, constants, statedir
from jobqueue.children import ProcessGroups
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import GenericError
from jobqueue.ha import Roles
from jobqueue.hooks import DEFAULT_TIMEOUT as DEFAULT_HOOK_TIMEOUT
from jobqueue.hooks import FinishHooks
from jobqueue.jobreader import JobReader, stored_status
from jobqueue.livejobs import LiveJobs
from jobqueue.locking import LockAttemptTimeoutStrategy, LockManager
from jobqueue.lus import builtin_registry, load_plugins
from jobqueue.lus.command import RUN_AS_DAEMON, RUN_AS_SUBMITTER
from jobqueue.luxi import server as luxi_server
from jobqueue.luxi.methods import QueueApi, ReaderApi
from jobqueue.luxi.server import LuxiServer
from jobqueue.model import Job
from jobqueue.opcodes import Registry
from jobqueue.outputs import OutputRecorder
from jobqueue.ownership import Ownership
from jobqueue.paths import StatePaths
from jobqueue.processor import Processor
from jobqueue.queue import JobQueue
from jobqueue.queuelock import QueueLock
from jobqueue.standby import StandbyQueue, StoreMirror
from jobqueue.storage.base import JobStore
from jobqueue.storage.etcdoptions import STORE_ETCD, EtcdStoreSettings, add_etcd_arguments
from jobqueue.storage.faults import FAULT_FILE_ENV, disk_from_environment
from jobqueue.storage.files import FileJobStore
from jobqueue.timers import Timers
from jobqueue.workerpool import WorkerPool

PID_FILE_MODE = 0o644
LOG_FILE_MODE = 0o640
#: Seconds between two compactions of the etcd history while this daemon leads.
COMPACTION_INTERVAL = 60.0
#: Descriptors kept for the daemon itself beyond its clients: job files,
#: the log, inotify, handler threads' reads...
BASE_FD_RESERVE = 100
#: ...and per worker: a running command's pipes and selector, a job write.
FD_RESERVE_PER_WORKER = 6
LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
log = logging.getLogger("jobqueue")


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
        help="worker threads running jobs (default: %(default)s)",
    )
    add(
        "--max-jobs",
        type=_positive_int,
        default=constants.DEFAULT_MAX_JOBS,
        help="live jobs before submissions fail with JobQueueFull (default: %(default)s)",
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
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add_etcd_arguments(parser)
    return parser


def _positive_int(text: str) -> int:
    """An argparse type; its error names what was expected (argparse adds the option)."""
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


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


class _ReopenableFileHandler(logging.FileHandler):
    """A file handler that SIGHUP can make reopen its file (after logrotate).

    The file is never opened through a symbolic link.
    """

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, LOG_FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def reopen(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.close()
            self.stream = self._open()


def _setup_logging(args: argparse.Namespace, paths: StatePaths) -> _ReopenableFileHandler | None:
    level = logging.DEBUG if args.debug else logging.INFO
    log_file = args.log_file or (paths.log_file if args.daemonize else None)
    handler: logging.Handler
    file_handler = None
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = file_handler = _ReopenableFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return file_handler


def _daemonize(ready_fd_holder: list[int]) -> None:
    """Fork twice; the original process exits once the daemon reports ready."""
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode("utf-8", "replace")
        if message.startswith("OK"):
            os._exit(0)
        sys.stderr.write(message or "jobqueue-masterd: failed to start\n")
        os._exit(1)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    ready_fd_holder.append(write_fd)


def _report(ready_fd: list[int], message: str) -> None:
    if ready_fd:
        os.write(ready_fd[0], message.encode())
        os.close(ready_fd.pop())


#: Seconds a thread may hold the interpreter lock while others wait for it.
#: Python's default (5 ms) lets threads encoding big answers delay every
#: handoff a submission needs (socket loop, handler, worker) by that much.
SWITCH_INTERVAL = 0.001


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.store == STORE_ETCD:
        try:
            args.etcd_settings = EtcdStoreSettings.from_args(args)
        except ValueError as err:
            parser.error(str(err))
    sys.setswitchinterval(SWITCH_INTERVAL)
    paths = StatePaths.resolve(args.state_dir)
    ready_fd: list[int] = []
    try:
        statedir.prepare(paths)
        if args.daemonize:
            _daemonize(ready_fd)
        file_handler = _setup_logging(args, paths)
        return _run(args, paths, ready_fd, file_handler)
    except (GenericError, OSError) as err:
        message = f"jobqueue-masterd: {startup_error(err)}\n"
        _report(ready_fd, message)
        sys.stderr.write(message)
        return 1


def startup_error(err: GenericError | OSError) -> str:
    """One line for an error that stops the start: the path(s) and the reason, no errno."""
    if not isinstance(err, OSError):
        return str(err.args[0]) if err.args else type(err).__name__
    names = [os.fsdecode(name) for name in (err.filename, err.filename2) if name is not None]
    reason = err.strerror or str(err)
    return f"{' -> '.join(names)}: {reason}" if names else reason


@dataclasses.dataclass(frozen=True)
class Core:
    """The daemon's job-handling objects, as ``build_core`` wires them."""

    store: JobStore
    live: LiveJobs
    locks: LockManager
    pool: WorkerPool
    timers: Timers
    queue: JobQueue
    reader: JobReader

    def stop(self) -> None:
        """Stop the threads (after the queue's shutdown sequence)."""
        self.queue.shutdown()
        self.timers.stop()


def build_core(
    store: JobStore,
    registry: Registry,
    *,
    live: LiveJobs | None = None,
    name: str | None = None,
    max_jobs: int = constants.DEFAULT_MAX_JOBS,
    kill_grace: float = constants.DEFAULT_KILL_GRACE,
    processes: ProcessGroups | None = None,
    max_output_size: int = constants.DEFAULT_MAX_OUTPUT_SIZE,
    on_job_end: Callable[[Job], None] | None = None,
    strategy_factory: Callable[[], LockAttemptTimeoutStrategy] = LockAttemptTimeoutStrategy,
    clock: Callable[[], float] = time.time,
    ownership: Ownership | None = None,
    commands_run_as: str = RUN_AS_SUBMITTER,
    logger: logging.Logger | None = None,
) -> Core:
    """Wire the queue and everything around it; the one place that does (tests use it too).

    The workers start only after the queue has loaded (``start_core``).
    ``live`` is the view of the jobs to keep (a standby's, taking over).
    """
    live = live or LiveJobs(registry.summarize)
    locks = LockManager()
    depmgr = DependencyManager(functools.partial(stored_status, live, store))
    output = OutputRecorder(store, max_output_size, live.output_grew)
    processor = Processor(
        registry,
        locks,
        kill_grace=kill_grace,
        processes=processes,
        commands_run_as=commands_run_as,
        output=output,
        logger=logger,
    )
    timers = Timers(logger=logger)

    def run_task(job_id: int) -> None:
        queue.run_task(job_id)

    pool = WorkerPool("Jq", 0, run_task, logger=logger)
    queue = JobQueue(
        store,
        live,
        registry,
        locks,
        processor,
        depmgr,
        pool,
        timers,
        max_jobs=max_jobs,
        name=name,
        strategy_factory=strategy_factory,
        clock=clock,
        ownership=ownership,
        on_job_end=on_job_end,
        logger=logger,
    )
    reader = JobReader(live, store, locks, depmgr, registry.summarize, logger=logger)
    return Core(store, live, locks, pool, timers, queue, reader)


def start_core(
    core: Core, workers: int, recovery_message: str = constants.MSG_UNCLEAN_SHUTDOWN
) -> None:
    """Load and recover the queue, then start ``workers`` worker threads."""
    core.queue.start(recovery_message)
    core.pool.resize(workers)


def _run(
    args: argparse.Namespace,
    paths: StatePaths,
    ready_fd: list[int],
    file_handler: _ReopenableFileHandler | None,
) -> int:
    fd_limit = raise_fd_limit()
    socket_gid, query_gid, admin_gid = (
        _group_id(name) for name in (args.socket_group, args.query_socket_group, args.admin_group)
    )
    registry = builtin_registry()
    load_plugins(registry, args.plugin, log)
    groups = _Groups(socket_gid, query_gid, admin_gid)
    opened = _open_store(args, paths)
    try:
        return _run_on(opened, args, paths, ready_fd, file_handler, registry, groups, fd_limit)
    finally:
        opened.store.close()


class _Groups(NamedTuple):
    """The gids the options name (None: not given)."""

    socket: int | None
    query: int | None
    admin: int | None


class _OpenedStore(NamedTuple):
    store: JobStore
    #: Several daemons share it: one leads, the others stand by.
    highly_available: bool
    #: What to call every COMPACTION_INTERVAL seconds while leading, if anything.
    compact: Callable[[], object] | None


def _open_store(args: argparse.Namespace, paths: StatePaths) -> _OpenedStore:
    """The store the options name: files under the state directory, or etcd."""
    if args.store == STORE_ETCD:
        from jobqueue.storage.etcd import EtcdJobStore  # only etcd's users load its client

        etcd = EtcdJobStore(args.etcd_settings, logger=log)
        return _OpenedStore(etcd, True, etcd.compact_history)
    disk = disk_from_environment(os.environ)
    if disk is not None:
        log.warning("Storage fault injection enabled by %s (test-only)", FAULT_FILE_ENV)
    return _OpenedStore(FileJobStore(paths.queue_dir, disk=disk, logger=log), False, None)


def _run_on(
    opened: _OpenedStore,
    args: argparse.Namespace,
    paths: StatePaths,
    ready_fd: list[int],
    file_handler: _ReopenableFileHandler | None,
    registry: Registry,
    groups: _Groups,
    fd_limit: int,
) -> int:
    """Serve the store as standby and master (etcd) or as its one daemon (files)."""
    store, highly_available = opened.store, opened.highly_available
    # The queue is elsewhere (etcd); this state directory is still one daemon's alone.
    state_lock = QueueLock(paths.daemon_lock) if highly_available else None
    if state_lock is not None:
        state_lock.acquire()
        remove_stale_sockets(paths)
    name = f"{platform.node()} pid {os.getpid()}"
    leadership = store.leadership(name)
    live = LiveJobs(registry.summarize)
    stop = _install_signal_handlers(paths, file_handler)
    servers: list[LuxiServer] = []

    def serve(queue: QueueApi, reader: ReaderApi) -> None:
        """Answer with these from now on; the first call opens the sockets."""
        if servers:
            servers[0].set_services(queue, reader)
            return
        server = LuxiServer(
            queue,
            reader,
            master_path=paths.master_socket,
            query_path=paths.query_socket,
            socket_group=groups.socket,
            query_group=groups.query,
            query_public=args.query_socket_public,
            max_message_size=args.max_message_size,
            max_answer_size=args.max_answer_size,
            output_budget=args.max_pending_output,
            client_timeout=args.client_timeout,
            send_timeout=args.send_timeout,
            max_connections=connection_limit(args.max_connections, fd_limit, args.workers),
            logger=log,
        )
        server.start()
        servers.append(server)
        _write_pid_file(paths.pid_file)
        log.info("jobqueue-masterd %s ready on %s", __version__, paths.master_socket)
        _report(ready_fd, "OK\n")

    processes = ProcessGroups(paths.commands_dir, logger=log)
    hooks = _finish_hooks(args, paths, registry)

    def make_term(recovery_message: str) -> Core:
        """Stop what a killed daemon left running here, then build and recover the queue."""
        if not highly_available:
            remove_stale_sockets(paths)  # we hold the queue's lock: nobody listens on them
        for leftover in processes.stop_leftovers(args.kill_grace):
            log.warning(
                "Stopped the leftover command of job %d (process group %d)",
                leftover.job_id,
                leftover.pgid,
            )
        core = build_core(
            store,
            registry,
            live=live,
            name=name,
            max_jobs=args.max_jobs,
            kill_grace=args.kill_grace,
            processes=processes,
            ownership=Ownership(daemon_uid=os.geteuid(), admin_gid=groups.admin),
            commands_run_as=args.commands_run_as,
            max_output_size=args.max_output_size,
            on_job_end=None if hooks is None else hooks.job_ended,
            logger=log,
        )
        gc.disable()  # loading makes many objects and no garbage; see _settle_gc
        try:
            start_core(core, args.workers, recovery_message)
        finally:
            _settle_gc()
        log.info("Job queue recovered; %d workers", args.workers)
        if opened.compact is not None:
            _compact_history_every(COMPACTION_INTERVAL, opened.compact, core.timers)
        return core

    status_of = functools.partial(stored_status, live, store)
    roles = Roles(
        store,
        leadership,
        StoreMirror(store, live, logger=log),
        StandbyQueue(store, leadership.holder, live, max_jobs=args.max_jobs),
        JobReader(
            live, store, LockManager(), DependencyManager(status_of), registry.summarize, logger=log
        ),
        make_term=make_term,
        serve=serve,
        standby_allowed=highly_available,
        recovery_message=(
            constants.MSG_FAILED_OVER if highly_available else constants.MSG_UNCLEAN_SHUTDOWN
        ),
        shutdown_timeout=args.shutdown_timeout,
        kill_grace=args.kill_grace,
        logger=log,
    )
    try:
        roles.run(stop)
    finally:
        for server in servers:
            server.stop()
        leadership.release()
        if hooks is not None:
            hooks.stop(args.hook_timeout)
        if state_lock is not None:
            state_lock.release()
    _remove(paths.pid_file)
    log.info("jobqueue-masterd stopped")
    return 0


def _compact_history_every(
    interval: float, compact_history: Callable[[], object], timers: Timers
) -> None:
    """While a term lasts, have the store compact its history every ``interval`` s."""

    def compact() -> None:
        try:
            compact_history()
        except GenericError as err:
            log.warning("Cannot compact the etcd history: %s", err)
        timers.call_later(interval, compact)

    timers.call_later(interval, compact)


def _group_id(name: str | None) -> int | None:
    """The gid of group ``name`` (None for None); ``GenericError`` if there is no such group."""
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise GenericError(f"Unknown group {name!r}") from None


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("Cannot raise the descriptor limit from %d to %d: %s", soft, hard, err)
    return int(hard if soft == resource.RLIM_INFINITY else soft)


def connection_limit(wanted: int, fd_limit: int, workers: int) -> int:
    """Clients per socket: ``wanted``, or fewer so both sockets leave the daemon its reserve."""
    # Each socket may have a burst of connections accepted before they are counted.
    reserve = BASE_FD_RESERVE + 2 * luxi_server.ACCEPT_BATCH + FD_RESERVE_PER_WORKER * workers
    room = max(1, (fd_limit - reserve) // 2)
    if room < wanted:
        log.warning(
            "Serving at most %d clients per socket, not %d: the descriptor limit is %d and "
            "%d are kept for the daemon (raise LimitNOFILE or ulimit -n)",
            room,
            wanted,
            fd_limit,
            reserve,
        )
        return room
    return wanted


def remove_stale_sockets(paths: StatePaths) -> None:
    """Remove the socket files a daemon killed before it could remove them (we hold the lock)."""
    for path in (paths.master_socket, paths.query_socket):
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
                log.info("Removed the stale socket %s of a daemon that did not stop cleanly", path)
        except FileNotFoundError:
            pass


def _finish_hooks(
    args: argparse.Namespace, paths: StatePaths, registry: Registry
) -> FinishHooks | None:
    """The started runner of ``--hooks-dir``, None without it."""
    if not args.hooks_dir:
        return None
    directory = os.path.abspath(args.hooks_dir)
    if not os.path.isdir(directory):
        raise GenericError(f"--hooks-dir {directory}: no such directory")
    hooks = FinishHooks(
        directory,
        registry.summarize,
        timeout=args.hook_timeout,
        extra_env={"JOBQUEUE_STATE_DIR": paths.root},
        logger=log,
    )
    hooks.start()
    log.info("Finish hooks: the executables in %s", directory)
    return hooks


def _settle_gc() -> None:
    """Keep the cyclic garbage collector off what start-up loaded; run it less often.

    What is loaded by now (modules, the job index) lives as long as the
    daemon, so it is frozen out of every later collection. With the default
    threshold a full collection ran about every 30 log lines of a busy job
    and walked the whole heap: it was nearly all of WaitForJobChange's p99
    (8 ms, 2-3 ms without). Reference counting still frees everything.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    gc.enable()


class _StopRequest:
    """What SIGTERM and SIGINT asked for, set by the handlers, read by the main thread.

    The first signal asks for an orderly stop (``requested``), the second to
    stop the running jobs at once and then stop in order (``now``); a third
    one exits on the spot.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.now = threading.Event()
        self.signum = signal.SIGTERM

    def again(self) -> str:
        """How to send the next stop signal, for the log."""
        return "press Ctrl-C again" if self.signum == signal.SIGINT else "signal again"


def _install_signal_handlers(
    paths: StatePaths, file_handler: _ReopenableFileHandler | None
) -> _StopRequest:
    stop = _StopRequest()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.now.is_set():  # third signal: leave at once
            log.warning("Signal %d again; exiting immediately", signum)
            for path in (paths.master_socket, paths.query_socket, paths.pid_file):
                _remove(path)
            os._exit(1)
        if stop.requested.is_set():
            log.warning("Signal %d again; stopping the running jobs now", signum)
            stop.now.set()
            return
        log.info("Signal %d received; shutting down", signum)
        stop.signum = signal.Signals(signum)
        stop.requested.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        if file_handler is not None:
            file_handler.reopen()
            log.info("Log file reopened")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    return stop


def _write_pid_file(path: str) -> None:
    """Write our pid atomically; mode 0644 whatever the umask (others must not rewrite it).

    The temporary file is created anew (``O_EXCL``, ``O_NOFOLLOW``): whatever
    was left under its name is removed first, never written through.
    """
    temp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, PID_FILE_MODE)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        os.fchmod(fd, PID_FILE_MODE)  # O_CREAT's mode is filtered by the umask
        handle.write(f"{os.getpid()}\n")
    os.replace(temp, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


if __name__ == "__main__":
    sys.exit(main())
