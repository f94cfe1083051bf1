"""The daemon as a process: logging, forking, signals, the pid file, descriptors, GC.

Everything here is about the operating system's view of ``jobqueue-masterd``
and nothing about jobs; ``daemon.py`` calls it in order.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import logging
import os
import resource
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from jobqueue.luxi import server as luxi_server
from jobqueue.luxi.listeners import ADMIN_RESERVE
from jobqueue.paths import StatePaths

log = logging.getLogger("jobqueue")


PID_FILE_MODE = 0o644


LOG_FILE_MODE = 0o640


#: Descriptors kept for the daemon itself beyond its clients: job files,
#: the log, inotify, handler threads' reads...
BASE_FD_RESERVE = 100


#: ...and per worker: a running command's pipes and selector, a job write.
FD_RESERVE_PER_WORKER = 6


LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


#: Seconds a thread may hold the interpreter lock while others wait for it.
#: Python's default (5 ms) lets threads encoding big answers delay every
#: handoff a submission needs (socket loop, handler, worker) by that much.
SWITCH_INTERVAL = 0.001


class ReopenableFileHandler(logging.FileHandler):
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


def setup_logging(args: argparse.Namespace, paths: StatePaths) -> ReopenableFileHandler | None:
    level = logging.DEBUG if args.debug else logging.INFO
    log_file = args.log_file or (paths.log_file if args.daemonize else None)
    handler: logging.Handler
    file_handler = None
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = file_handler = ReopenableFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return file_handler


def daemonize(ready_fd_holder: list[int]) -> None:
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


def report(ready_fd: list[int], message: str) -> None:
    if ready_fd:
        os.write(ready_fd[0], message.encode())
        os.close(ready_fd.pop())


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
    # Root and the daemon's user may open a few past the limit on each socket.
    reserve = (
        BASE_FD_RESERVE
        + 2 * (luxi_server.ACCEPT_BATCH + ADMIN_RESERVE)
        + FD_RESERVE_PER_WORKER * workers
    )
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


#: Blocks at least this large are mapped on their own and unmapped when freed.
LARGE_BLOCK = 256 * 1024
#: ``mallopt``'s parameter number for that size in glibc's ``malloc.h``.
_M_MMAP_THRESHOLD = -3
#: The environment variable through which an operator sets that size instead.
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def return_large_blocks() -> bool:
    """Have glibc give big freed blocks back to the system; whether it was set here.

    glibc maps a block of 128 KiB or more on its own, but once such a block
    is freed it raises that size to the block's, so from then on blocks of
    a few megabytes (a big answer's chunks, a large job's encoding) come from
    the heap, and a heap gives its memory back only from its top. After a
    storm of big answers the daemon's RSS stayed at its peak for good. A
    fixed size keeps every block over ``LARGE_BLOCK`` mapped and returned on
    free. Nothing is done where the C library is not glibc, or when the
    operator set ``MALLOC_MMAP_THRESHOLD_`` (which glibc reads itself).
    """
    if MMAP_THRESHOLD_ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK))


def settle_gc() -> None:
    """Keep the cyclic garbage collector off what start-up loaded; run it less often.

    What is loaded by now (modules, the job index) lives long, so it is
    frozen out of every later collection. With the default threshold a full
    collection ran about every 30 log lines of a busy job and walked the
    whole heap: it was nearly all of WaitForJobChange's p99 (8 ms, 2-3 ms
    without). Reference counting still frees what is frozen, unless it ends
    in a reference cycle; job records hold none (``tests/test_daemonproc_gc.py``).
    From then on, what a slow full collection leaves alive is frozen too
    (``FreezeSlowCollections``).
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    if not any(isinstance(callback, FreezeSlowCollections) for callback in gc.callbacks):
        gc.callbacks.append(FreezeSlowCollections(SLOW_FULL_COLLECTION))
    gc.enable()


#: Seconds a full collection may take before what it found alive is frozen.
SLOW_FULL_COLLECTION = 0.05


class FreezeSlowCollections:
    """A ``gc.callbacks`` entry: freezes what a full collection slower than ``slow`` left.

    Jobs submitted after start are not frozen, and a full collection walks
    every one of their opcodes: with two million queued (a hundred jobs of
    20,000 opcodes) each took up to 4 s, during which no thread of the
    daemon ran, and collections were about 40 % of the time to submit them.
    A full collection has just freed every unreachable cycle, so what is
    left is alive; frozen, it is never walked again and the next collections
    are short. With many live jobs replaced steadily, a freeze comes about
    once per turnover of them. The price: a cycle among objects frozen alive
    that later becomes garbage is never freed. Job records hold none, so
    that is only what was in flight at that moment (a request, an exception
    being handled). Measured: 100,000 jobs through a queue of 10,000 to
    30,000 live ones froze 4 times; unfreezing then freed 5 objects.

    Slowness is the collecting thread's CPU time, not the wall clock, so
    that other threads running meanwhile do not count. Runs in whichever
    thread collects, holding the interpreter lock; it must not log (the
    logging lock may be held by that very thread).
    """

    def __init__(self, slow: float, clock: Callable[[], float] = time.thread_time) -> None:
        self._slow = slow
        self._clock = clock
        self._began: float | None = None
        self.freezes = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._began = self._clock()
            return
        began, self._began = self._began, None
        if began is not None and self._clock() - began >= self._slow:
            gc.freeze()
            self.freezes += 1


class StopRequest:
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


def install_signal_handlers(
    paths: StatePaths, file_handler: ReopenableFileHandler | None
) -> StopRequest:
    stop = StopRequest()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.now.is_set():  # third signal: leave at once
            log.warning("Signal %d again; exiting immediately", signum)
            for path in (paths.master_socket, paths.query_socket, paths.pid_file):
                remove_quietly(path)
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


def write_pid_file(path: str) -> None:
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


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
