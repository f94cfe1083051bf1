"""RQ on a private Redis with ``appendfsync always``: run N no-op jobs on W workers.

Run with the benchmark virtualenv's interpreter (it needs ``rq`` and ``redis``)::

    python rq_noop.py --jobs 2000 --workers 25 --work-dir DIR

Starts ``redis-server`` on a Unix socket in DIR (no TCP port, no RDB
snapshots, ``appendonly yes``, ``appendfsync always``), forks W processes each
running an RQ worker of the chosen class (``fork``: RQ's default ``Worker``,
one work-horse process per job; ``simple``: ``SimpleWorker``, jobs run in the
worker process), enqueues every job in one pipeline with ``enqueue_many``, and
polls the finished and failed registries until all jobs are in. The clock runs
from the enqueue to the poll that sees the last job finished. Redis and the
workers are stopped before exiting; the result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from multiprocessing.process import BaseProcess
from typing import Any

from peer_cli import base_parser, report
from redis import Redis
from rq import Queue, SimpleWorker, Worker

QUEUE_NAME = "bench"
WORKER_CLASSES = {"fork": Worker, "simple": SimpleWorker}


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = base_parser(__doc__)
    parser.add_argument("--worker-class", choices=sorted(WORKER_CLASSES), default="fork")
    parser.add_argument("--redis-server", default="redis-server")
    return parser.parse_args()


def start_redis(
    command: str, work_dir: str, timeout: float = 15.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a durable private redis-server; return it and its socket path.

    Raises RuntimeError when it does not answer PING within ``timeout``.
    """
    socket_path = os.path.join(work_dir, "redis.sock")
    server = subprocess.Popen(
        [
            command,
            "--port",
            "0",
            "--unixsocket",
            socket_path,
            "--unixsocketperm",
            "700",
            "--dir",
            work_dir,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(work_dir, "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {server.returncode}")
        try:
            if os.path.exists(socket_path) and Redis(unix_socket_path=socket_path).ping():
                return server, socket_path
        except OSError:
            pass
        except Exception as error:  # redis.ConnectionError and friends while starting
            if "Connection" not in type(error).__name__ and "Busy" not in type(error).__name__:
                raise
        time.sleep(0.02)
    server.kill()
    raise RuntimeError("redis-server did not answer in time")


def stop_redis(server: subprocess.Popen[bytes]) -> None:
    """Stop redis-server, killing it if it does not exit promptly."""
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_worker(socket_path: str, class_name: str) -> None:
    """Body of one worker process: work the queue until told to stop."""
    connection = Redis(unix_socket_path=socket_path)
    worker = WORKER_CLASSES[class_name](
        [Queue(QUEUE_NAME, connection=connection)], connection=connection
    )
    worker.work(logging_level="WARNING")


def start_workers(
    count: int, socket_path: str, class_name: str, timeout: float = 60.0
) -> list[BaseProcess]:
    """Fork ``count`` workers and wait until all have registered with Redis."""
    context = multiprocessing.get_context("fork")
    workers: list[BaseProcess] = [
        context.Process(target=run_worker, args=(socket_path, class_name), daemon=True)
        for _ in range(count)
    ]
    for process in workers:
        process.start()
    connection = Redis(unix_socket_path=socket_path)
    deadline = time.monotonic() + timeout
    while Worker.count(connection=connection) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("RQ workers did not register in time")
        time.sleep(0.02)
    return workers


def stop_workers(workers: list[BaseProcess]) -> None:
    """Ask every worker for a warm shutdown; kill those still alive after 10 s."""
    for process in workers:
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(5)


def measure(socket_path: str, jobs: int, timeout: float) -> dict[str, Any]:
    """Enqueue ``jobs`` no-ops in one pipeline and wait for all of them to end."""
    connection = Redis(unix_socket_path=socket_path)
    queue = Queue(QUEUE_NAME, connection=connection)
    batch = [Queue.prepare_data("noop_tasks.noop") for _ in range(jobs)]
    began = time.perf_counter()
    queue.enqueue_many(batch)
    submitted = time.perf_counter()
    deadline = time.monotonic() + timeout
    finished = failed = 0
    while finished + failed < jobs and time.monotonic() < deadline:
        time.sleep(0.005)
        finished = queue.finished_job_registry.count
        failed = queue.failed_job_registry.count
    ended = time.perf_counter()
    return {
        "completed": finished,
        "errors": failed,
        "seconds": ended - began,
        "submit_seconds": submitted - began,
        "jobs_per_s": finished / (ended - began),
    }


def main() -> int:
    """Run the measurement; exit status 1 when not every job finished in time."""
    args = parse_args()
    server, socket_path = start_redis(args.redis_server, args.work_dir)
    workers: list[BaseProcess] = []
    try:
        fsync_policy = Redis(unix_socket_path=socket_path).config_get("appendfsync")
        workers = start_workers(args.workers, socket_path, args.worker_class)
        result = measure(socket_path, args.jobs, args.timeout)
    finally:
        stop_workers(workers)
        stop_redis(server)
    result.update(
        peer="rq-redis",
        jobs=args.jobs,
        workers=args.workers,
        worker_class=args.worker_class,
        appendfsync=fsync_policy.get("appendfsync"),
    )
    completed = result["completed"]
    return report("rq", result, completed, args.jobs, completed == args.jobs)


if __name__ == "__main__":
    sys.exit(main())
