"""The way to the master: LUXI calls in a small thread pool, one client per thread.

The project's ``Client`` blocks and serialises its calls, so each pool
thread keeps its own (made on first use, on the master socket). A call's
failure is raised as the ``jobqueue.errors`` class the client raised; the
resources turn it into an HTTP error (``answers.from_luxi``).

Long polls (``WaitForJobChange``) hold a thread for their whole wait, so at
most ``threads - QUICK_RESERVE`` of them run at once (the others wait for a
turn): quick calls always find a thread. Half of those turns are kept for
the dashboard's job streams (``watch=True``, open to readers) and half for
``GET /2/jobs/[id]/wait`` (writers), so readers' streams, however many,
never hold up a writer's wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from jobqueue.luxi.client import Client

T = TypeVar("T")

#: Threads kept free of long polls for quick calls.
QUICK_RESERVE = 4
#: Seconds a quick call may take before it fails with RequestTimeout.
CALL_TIMEOUT = 60.0


class Master:
    """LUXI calls to the master at ``socket_path``, from the event loop.

    ``make_client(path, timeout)`` builds a client (tests may replace it).
    Start and use it from one event loop; ``close`` from that loop's thread.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        threads: int = 16,
        make_client: Callable[[str, float], Client] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._make_client = make_client or (lambda path, timeout: Client(path, timeout=timeout))
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="luxi-call"
        )
        self._local = threading.local()
        self._clients_lock = threading.Lock()  # guards _clients
        self._clients: list[Client] = []
        turns = max(2, threads - QUICK_RESERVE)
        self._long_polls = asyncio.Semaphore(turns - turns // 2)
        self._watches = asyncio.Semaphore(turns // 2)

    async def call(self, call: Callable[[Client], T]) -> T:
        """Run ``call(client)`` in a pool thread and return its result (or raise its error)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, call)

    async def long_poll(self, call: Callable[[Client], T], *, watch: bool = False) -> T:
        """Like ``call``, for calls that block for a while (WaitForJobChange); ``watch``
        for a dashboard's stream, which takes its turns apart (see the module docstring)."""
        async with self._watches if watch else self._long_polls:
            return await self.call(call)

    def _run(self, call: Callable[[Client], T]) -> T:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._make_client(self.socket_path, CALL_TIMEOUT)
            with self._clients_lock:
                self._clients.append(client)
        return call(client)

    def close(self) -> None:
        """Close every connection; calls still running finish or fail on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def rows_as_dicts(fields: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    """QueryJobs-style rows as one dict per row, keyed by ``fields``."""
    return [dict(zip(fields, row, strict=True)) for row in rows]


def query_as_dicts(fields: list[str], answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``Query`` answer's rows as dicts; a value that is not there (status > 0) is None."""
    return [
        {
            name: value if status == 0 else None
            for name, (status, value) in zip(fields, row, strict=True)
        }
        for row in answer["data"]
    ]
