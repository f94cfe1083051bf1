"""A scripted LUXI server for the CLI and cleaner tests (``test_cli_*``,
``test_cleaner``, ``test_controls_e2e``, ``test_shell_e2e``): ``FakeLuxi`` listens
on a real Unix socket and answers every request from a table: method name ->
result, or a callable receiving the request's arguments. A callable may raise a
``jobqueue.errors`` exception, which goes back encoded, as the daemon would send
it. Requests are recorded in order. ``JobTable`` answers job queries as the daemon
would, the ``luxi`` and ``short_dir`` fixtures give a running fake, and
``run_jobctl`` runs the real ``jobctl`` in a subprocess against it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from jobqueue import constants, errors
from jobqueue.luxi import protocol
from tests.daemon_helper import REPO_ROOT

#: Bound on every wait of the fake, so a bug fails instead of hanging.
WAIT = 10.0

Answer = Any


class FakeLuxi:
    """A LUXI server answering from ``self.answers``; one thread per connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.answers: dict[str, Answer] = {}
        self.calls: list[tuple[str, list[Any]]] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(16)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def methods(self) -> list[str]:
        """The methods called so far, in order."""
        with self._lock:
            return [method for method, _ in self.calls]

    def args_of(self, method: str) -> list[list[Any]]:
        """The arguments of every call of ``method``, in order."""
        with self._lock:
            return [args for name, args in self.calls if name == method]

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = protocol.FrameBuffer(constants.DEFAULT_MAX_MESSAGE_SIZE)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for frame in buffer.feed(data):
                    conn.sendall(self._answer(protocol.parse_request(frame)))

    def _answer(self, request: protocol.Request) -> bytes:
        with self._lock:
            self.calls.append((request.method, request.args))
            answer = self.answers.get(request.method, _unknown_method)
        try:
            result = answer(*request.args) if callable(answer) else answer
        except errors.GenericError as err:
            return protocol.encode_response(False, errors.encode_error(err))
        return protocol.encode_response(True, result)

    def stop(self) -> None:
        """Stop accepting and wait for the accepting thread to end."""
        self._stopping.set()
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._accepter.join(WAIT)
        assert not self._accepter.is_alive()


def _unknown_method(*args: Any) -> Any:
    raise errors.GenericError("Unknown method")


def in_order(*results: Any) -> Callable[..., Any]:
    """An answer giving ``results`` one per call; the last repeats.

    A result that is an exception instance is raised instead.
    """
    queue = list(results)
    lock = threading.Lock()

    def answer(*args: Any) -> Any:
        with lock:
            result = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(result, BaseException):
            raise result
        return result

    return answer


def query_answer(
    fields: list[str], rows: list[list[Any]], kinds: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Query answer with every value normal; ``kinds`` overrides field kinds."""
    kinds = kinds or {}
    return {
        "fields": [
            {"name": name, "title": name.capitalize(), "kind": kinds.get(name, "text"), "doc": name}
            for name in fields
        ],
        "data": [[[0, value] for value in row] for row in rows],
    }


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A fresh directory with a short path (Unix socket paths are limited)."""
    path = tempfile.mkdtemp(prefix="jq", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def luxi(short_dir: str) -> Iterator[FakeLuxi]:
    """A running fake daemon whose socket is ``<short_dir>/s``."""
    server = FakeLuxi(os.path.join(short_dir, "s"))
    yield server
    server.stop()


def run_jobctl(
    socket_path: str | None,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str = REPO_ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run the real jobctl (``python -m jobqueue.cli.main``) and capture everything."""
    command = [sys.executable, "-m", "jobqueue.cli.main"]
    if socket_path is not None:
        command += ["--socket", socket_path]
    full_env = {**os.environ, "TZ": "UTC", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*command, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def matches(qfilter: Any, job: dict[str, Any]) -> bool:
    """Evaluate the part of the query language jobctl sends: ``|``, ``&`` and ``=``."""
    if qfilter is None:
        return True
    operator, *operands = qfilter
    if operator == "|":
        return any(matches(item, job) for item in operands)
    if operator == "&":
        return all(matches(item, job) for item in operands)
    if operator == "=":
        field, value = operands
        return bool(job.get(field) == value)
    raise AssertionError(f"jobctl sent an unexpected filter operator {operator!r}")


#: The job fields the daemon offers (section 11 of the reference).
JOB_FIELDS = [
    "id",
    "status",
    "priority",
    "ops",
    "opresult",
    "opstatus",
    "oplog",
    "opstart",
    "opexec",
    "opend",
    "oppriority",
    "received_ts",
    "start_ts",
    "end_ts",
    "summary",
    "comment",
    "submitter",
    "hold",
    "not_before",
    "retry",
    "attempt",
    "attempts",
    "timeout",
]
NUMBER_FIELDS = {"id", "priority"}


class JobTable:
    """Answers Query/QueryJobs/QueryFields for jobs like the daemon would."""

    def __init__(
        self, jobs: Sequence[dict[str, Any]], archived: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.live = {job["id"]: job for job in jobs}
        self.archived = {job["id"]: job for job in archived}

    def field_defs(self, names: list[str]) -> list[dict[str, Any]]:
        defs = []
        for name in names:
            if name in JOB_FIELDS:
                kind = "number" if name in NUMBER_FIELDS else "other"
                title = "ID" if name == "id" else name.replace("_", " ").title().replace(" ", "")
                defs.append({"name": name, "title": title, "kind": kind, "doc": f"The {name}"})
            else:
                defs.append(
                    {
                        "name": name,
                        "title": name,
                        "kind": "unknown",
                        "doc": f"Unknown field '{name}'",
                    }
                )
        return defs

    def _cell(self, job: dict[str, Any], name: str) -> list[Any]:
        if name not in JOB_FIELDS:
            return [1, None]
        if job.get(name) is None:
            return [3, None]
        return [0, job[name]]

    def query(
        self, what: str, fields: list[str], qfilter: Any, archived: bool = False
    ) -> dict[str, Any]:
        assert what == "job"
        jobs = dict(self.live)
        if archived:
            jobs.update(self.archived)
        rows = [
            [self._cell(job, name) for name in fields]
            for _, job in sorted(jobs.items())
            if matches(qfilter, job)
        ]
        return {"fields": self.field_defs(fields), "data": rows}

    def query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> list[list[Any]]:
        unknown = [name for name in fields if name not in JOB_FIELDS]
        if unknown:
            raise errors.OpPrereqError(f"Unknown output fields selected: {', '.join(unknown)}")
        everything = {**self.archived, **self.live}
        ids = sorted(self.live) if job_ids is None else job_ids
        rows = []
        for job_id in ids:
            job = everything.get(job_id)
            if job is None:
                rows.append([job_id if name == "id" else None for name in fields])
            else:
                rows.append([job.get(name) for name in fields])
        return rows

    def query_fields(self, what: str, fields: list[str] | None) -> dict[str, Any]:
        assert what == "job"
        return {"fields": self.field_defs(sorted(JOB_FIELDS) if fields is None else fields)}

    def install(self, server: FakeLuxi) -> None:
        server.answers["Query"] = self.query
        server.answers["QueryJobs"] = self.query_jobs
        server.answers["QueryFields"] = self.query_fields
