"""jobqueue-masterd: builds the object graph and runs it; nothing else.

Its command line is in ``daemonargs``, what it does as a process (logging,
forking, signals, the pid file, descriptors) in ``daemonproc``, and the
sequence of its roles on the store (standby, master) in ``ha``.

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
import dataclasses
import functools
import gc
import grp
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from jobqueue import __version__, constants, daemonargs, daemonproc, qlang, statedir
from jobqueue.admission import Admission, stored_rules
from jobqueue.archiving import Archiver
from jobqueue.children import ProcessGroups
from jobqueue.depmgr import DependencyManager
from jobqueue.errors import GenericError
from jobqueue.ha import Roles
from jobqueue.hooks import FinishHooks
from jobqueue.jobreader import JobReader, stored_status
from jobqueue.livejobs import DEFAULT_LIMITS, Limits, LiveJobs
from jobqueue.locking import LockAttemptTimeoutStrategy, LockManager
from jobqueue.lus import builtin_registry, load_plugins
from jobqueue.lus.command import RUN_AS_SUBMITTER
from jobqueue.luxi.methods import QueueApi, ReaderApi
from jobqueue.luxi.server import LuxiServer
from jobqueue.metrics import Metrics
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
from jobqueue.storage.etcdoptions import STORE_ETCD, EtcdStoreSettings
from jobqueue.storage.faults import FAULT_FILE_ENV, disk_from_environment
from jobqueue.storage.files import FileJobStore
from jobqueue.timers import Timers
from jobqueue.workerpool import WorkerPool

#: Seconds between two compactions of the etcd history while this daemon leads.
COMPACTION_INTERVAL = 60.0
log = logging.getLogger("jobqueue")


def main(argv: Sequence[str] | None = None) -> int:
    parser = daemonargs.build_parser()
    args = parser.parse_args(argv)
    if args.store == STORE_ETCD:
        try:
            args.etcd_settings = EtcdStoreSettings.from_args(args)
        except ValueError as err:
            parser.error(str(err))
    sys.setswitchinterval(daemonproc.SWITCH_INTERVAL)
    daemonproc.return_large_blocks()
    paths = StatePaths.resolve(args.state_dir)
    ready_fd: list[int] = []
    try:
        statedir.prepare(paths)
        if args.daemonize:
            daemonproc.daemonize(ready_fd)
        file_handler = daemonproc.setup_logging(args, paths)
        return _run(args, paths, ready_fd, file_handler)
    except (GenericError, OSError) as err:
        message = f"jobqueue-masterd: {startup_error(err)}\n"
        daemonproc.report(ready_fd, message)
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
    limits: Limits = DEFAULT_LIMITS,
    kill_grace: float = constants.DEFAULT_KILL_GRACE,
    processes: ProcessGroups | None = None,
    max_output_size: int = constants.DEFAULT_MAX_OUTPUT_SIZE,
    on_job_end: Callable[[Job], None] | None = None,
    strategy_factory: Callable[[], LockAttemptTimeoutStrategy] = LockAttemptTimeoutStrategy,
    clock: Callable[[], float] = time.time,
    ownership: Ownership | None = None,
    commands_run_as: str = RUN_AS_SUBMITTER,
    logger: logging.Logger | None = None,
    metrics: Metrics | None = None,
) -> Core:
    """Wire the queue and everything around it; the one place that does (tests use it too).

    The workers start only after the queue has loaded (``start_core``).
    ``live`` is the view of the jobs to keep (a standby's, taking over);
    ``metrics`` the daemon's, which outlive a term; ``ownership`` who may
    change which job (default: root and the daemon's user as admins).
    """
    metrics = metrics or Metrics()
    ownership = ownership or Ownership(daemon_uid=os.geteuid())
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
        metrics=metrics,
    )
    timers = Timers(logger=logger)

    def run_task(job_id: int) -> None:
        queue.run_task(job_id)

    def wake(job_ids: list[int]) -> None:
        queue.enqueue(job_ids)

    pool = WorkerPool("Jq", 0, run_task, logger=logger)
    admission = Admission(store, qlang.compile_filter, timers, wake, clock=clock, logger=logger)
    archiver = Archiver(store, live, ownership, clock=clock)
    queue = JobQueue(
        store,
        live,
        registry,
        locks,
        processor,
        depmgr,
        pool,
        timers,
        admission=admission,
        archiver=archiver,
        ownership=ownership,
        limits=limits,
        name=name,
        strategy_factory=strategy_factory,
        clock=clock,
        on_job_end=on_job_end,
        logger=logger,
        metrics=metrics,
    )
    reader = JobReader(
        live,
        store,
        locks,
        depmgr,
        registry.summarize,
        filter_rules=admission.rules,
        compile_filter=qlang.compile_filter,
        logger=logger,
    )
    return Core(store, live, locks, pool, timers, queue, reader)


def start_core(
    core: Core, workers: int, recovery_message: str = constants.MSG_UNCLEAN_SHUTDOWN
) -> None:
    """Load and recover the queue, then start its workers: as many as were set
    through the daemon (``SetMaxRunningJobs``), else ``workers``."""
    core.queue.start(recovery_message)
    core.queue.start_workers(core.queue.worker_count(workers))


def _run(
    args: argparse.Namespace,
    paths: StatePaths,
    ready_fd: list[int],
    file_handler: daemonproc.ReopenableFileHandler | None,
) -> int:
    fd_limit = daemonproc.raise_fd_limit()
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

        etcd = EtcdJobStore(args.etcd_settings, output_dir=paths.output_dir, logger=log)
        return _OpenedStore(etcd, True, etcd.compact_history)
    disk = disk_from_environment(os.environ)
    if disk is not None:
        log.warning("Storage fault injection enabled by %s (test-only)", FAULT_FILE_ENV)
    store = FileJobStore(
        paths.queue_dir,
        disk=disk,
        spare_reserve=args.spare_files,
        sync_batches=args.batch_sync == daemonargs.BATCH_SYNC_FILESYSTEM,
        logger=log,
    )
    return _OpenedStore(store, False, None)


def _run_on(
    opened: _OpenedStore,
    args: argparse.Namespace,
    paths: StatePaths,
    ready_fd: list[int],
    file_handler: daemonproc.ReopenableFileHandler | None,
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
        daemonproc.remove_stale_sockets(paths)
    name = f"{platform.node()} pid {os.getpid()}"
    leadership = store.leadership(name)
    live = LiveJobs(registry.summarize)
    limits = Limits(args.max_jobs, args.max_opcodes, args.max_opcode_bytes)
    metrics = Metrics()
    stop = daemonproc.install_signal_handlers(paths, file_handler)
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
            max_connections=daemonproc.connection_limit(
                args.max_connections, fd_limit, args.workers
            ),
            max_connections_per_user=args.max_connections_per_user,
            logger=log,
            metrics=metrics,
        )
        server.start()
        servers.append(server)
        daemonproc.write_pid_file(paths.pid_file)
        log.info("jobqueue-masterd %s ready on %s", __version__, paths.master_socket)
        daemonproc.report(ready_fd, "OK\n")

    processes = ProcessGroups(paths.commands_dir, logger=log)
    hooks = _finish_hooks(args, paths, registry)

    def make_term(recovery_message: str) -> Core:
        """Stop what a killed daemon left running here, then build and recover the queue."""
        if not highly_available:
            daemonproc.remove_stale_sockets(
                paths
            )  # we hold the queue's lock: nobody listens on them
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
            limits=limits,
            kill_grace=args.kill_grace,
            processes=processes,
            ownership=Ownership(daemon_uid=os.geteuid(), admin_gid=groups.admin),
            commands_run_as=args.commands_run_as,
            max_output_size=args.max_output_size,
            on_job_end=None if hooks is None else hooks.job_ended,
            logger=log,
            metrics=metrics,
        )
        gc.disable()  # loading makes many objects and no garbage; see daemonproc.settle_gc
        try:
            start_core(core, args.workers, recovery_message)
        finally:
            daemonproc.settle_gc()
        log.info("Job queue recovered; %d workers", core.queue.worker_count(args.workers))
        if opened.compact is not None:
            _compact_history_every(COMPACTION_INTERVAL, opened.compact, core.timers)
        return core

    status_of = functools.partial(stored_status, live, store)
    roles = Roles(
        store,
        leadership,
        StoreMirror(store, live, logger=log),
        StandbyQueue(store, leadership.holder, live, limits=limits, metrics=metrics),
        JobReader(
            live,
            store,
            LockManager(),
            DependencyManager(status_of),
            registry.summarize,
            filter_rules=functools.partial(stored_rules, store, log),
            compile_filter=qlang.compile_filter,
            logger=log,
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
        metrics=metrics,
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
    daemonproc.remove_quietly(paths.pid_file)
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


if __name__ == "__main__":
    sys.exit(main())
