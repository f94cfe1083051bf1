"""Finish hooks: the executables of ``--hooks-dir``, run whenever a job ends.

The queue calls ``FinishHooks.job_ended`` as it writes a job's end (once
per job, from the writing thread, with the job's lock held), which only
notes what is needed and queues it: the queue never waits for a hook. A
runner thread of this module's own runs, for each ended job in turn, every
executable of the directory in name order, each with the job's facts in
its environment (``hook_environment``), ``/dev/null`` as input, the
directory as working directory, in a session of its own, for at most
``timeout`` seconds (then its process group is killed). What a hook prints
goes to the daemon's log, as does a failure; nothing a hook does changes
the job.

A name starting with ``.`` or ending with ``~`` is skipped, as is anything
not a regular executable file. The directory is read again for every job,
so hooks can be added or removed while the daemon runs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pwd
import shlex
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import IO

from jobqueue import errors
from jobqueue.constants import Status
from jobqueue.model import Job, Submitter

#: Seconds a hook may run by default (``--hook-timeout``).
DEFAULT_TIMEOUT = 30.0
#: Ended jobs waiting for their hooks; more are dropped (and logged) rather than kept.
MAX_PENDING = 10_000
#: Bytes of a hook's output copied to the daemon's log.
MAX_LOGGED_OUTPUT = 64 * 1024
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Summarize = Callable[[dict[str, object]], str]


@dataclasses.dataclass(frozen=True)
class JobEnd:
    """What the hooks are told about a job that ended."""

    job_id: int
    status: str
    #: The user who submitted the job (a name, else a uid); "" when the job records
    #: none (stored before submitters were) or the daemon itself submitted it.
    submitter: str
    #: One part per opcode, "; " between them: a command's shell-quoted command line,
    #: else the opcode's summary (``TEST_DELAY(1.0)``).
    summary: str
    #: Why it did not succeed ("" when it did).
    error: str

    @classmethod
    def of(cls, job: Job, summarize: Summarize) -> JobEnd:
        return cls(
            job_id=job.id,
            status=job.status.value,
            submitter=_user_of(job.submitter),
            summary="; ".join(_describe(op.input, summarize) for op in job.ops),
            error=_error_of(job),
        )


def _user_of(submitter: Submitter | None) -> str:
    if submitter is None or submitter.uid is None:
        return ""
    try:
        return pwd.getpwuid(submitter.uid).pw_name
    except KeyError:
        return str(submitter.uid)


def _describe(op_input: dict[str, object], summarize: Summarize) -> str:
    argv = op_input.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(arg, str) for arg in argv):
        return shlex.join(argv)
    return summarize(op_input)


def _error_of(job: Job) -> str:
    """The result of the first opcode that did not succeed, as text."""
    for op in job.ops:
        if op.status == Status.SUCCESS:
            continue
        if errors.is_encoded_error(op.result):
            return str(errors.decode_error(op.result))
        return "" if op.result is None else str(op.result)
    return ""


def hook_environment(end: JobEnd, extra: Mapping[str, str]) -> dict[str, str]:
    """A hook's whole environment: a minimal base, ``extra``, then the job's facts."""
    user = pwd.getpwuid(os.geteuid())
    return {
        "PATH": _SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        **extra,
        "JOBQUEUE_JOB_ID": str(end.job_id),
        "JOBQUEUE_JOB_STATUS": end.status,
        "JOBQUEUE_JOB_SUBMITTER": end.submitter,
        "JOBQUEUE_JOB_SUMMARY": end.summary,
        "JOBQUEUE_JOB_ERROR": end.error,
    }


def list_hooks(directory: str) -> list[str]:
    """The hooks to run, in name order; see the module docstring for what counts."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return []
    return [
        entry.path
        for entry in entries
        if not entry.name.startswith(".")
        and not entry.name.endswith("~")
        and entry.is_file()
        and os.access(entry.path, os.X_OK)
    ]


class FinishHooks:
    """See the module docstring; ``start`` the runner, ``stop`` it at shutdown.

    ``extra_env`` is added to every hook's environment (the state directory).
    ``_lock`` guards ``_pending``, ``_dropped`` and ``_stopping``.
    """

    def __init__(
        self,
        directory: str,
        summarize: Summarize,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        extra_env: Mapping[str, str] | None = None,
        max_pending: int = MAX_PENDING,
        logger: logging.Logger | None = None,
    ) -> None:
        self.directory = directory
        self._summarize = summarize
        self._timeout = timeout
        self._extra_env = dict(extra_env or {})
        self._max_pending = max_pending
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: collections.deque[JobEnd] = collections.deque()
        self._dropped = 0
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="finish-hooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def job_ended(self, job: Job) -> None:
        """Queue the hooks of a job that just ended; never blocks, never raises for a hook."""
        end = JobEnd.of(job, self._summarize)
        with self._changed:
            if self._stopping:
                return
            if len(self._pending) >= self._max_pending:
                self._dropped += 1
                return
            self._pending.append(end)
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued job's hooks have run; False if ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and not self._busy, timeout)

    def stop(self, grace: float) -> None:
        """Give the queued hooks up to ``grace`` seconds, then stop the runner.

        A hook still running then finishes or times out; the jobs not begun
        are named in the log.
        """
        self.wait_idle(grace)
        with self._changed:
            self._stopping = True
            left = [end.job_id for end in self._pending]
            self._pending.clear()
            self._changed.notify_all()
        if left:
            self._log.warning("Finish hooks not run at shutdown for jobs %s", left)
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._busy = False
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                end, dropped, self._dropped = self._pending.popleft(), self._dropped, 0
                self._busy = True
            if dropped:
                self._log.warning("Finish hooks skipped for %d jobs: too many pending", dropped)
            for path in list_hooks(self.directory):
                self._run_one(path, end)

    def _run_one(self, path: str, end: JobEnd) -> None:
        """Run one hook for one job; log its output and how it ended. Never raises."""
        name = os.path.basename(path)
        try:
            with tempfile.TemporaryFile() as output:
                code = self._execute(path, end, output)
                output.seek(0)
                text = output.read(MAX_LOGGED_OUTPUT).decode("utf-8", "replace")
        except OSError as err:
            self._log.warning("Finish hook %s for job %d failed: %s", name, end.job_id, err)
            return
        for line in text.splitlines():
            self._log.info("Finish hook %s for job %d: %s", name, end.job_id, line)
        if code is None:
            self._log.warning(
                "Finish hook %s for job %d timed out after %ss; killed",
                name,
                end.job_id,
                self._timeout,
            )
        elif code != 0:
            self._log.warning("Finish hook %s for job %d exited with %d", name, end.job_id, code)

    def _execute(self, path: str, end: JobEnd, output: IO[bytes]) -> int | None:
        """Run ``path`` to its end or timeout; its return code, None if it timed out."""
        proc = subprocess.Popen(
            [path],
            env=hook_environment(end, self._extra_env),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        try:
            return proc.wait(self._timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            return None
