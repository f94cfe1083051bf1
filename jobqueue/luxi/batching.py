"""Single-job submissions of many clients, submitted and answered in batches.

A ``SubmitJob`` call does not get a handler thread of its own. The loop
queues it here (``add``: the caller's ``JobSubmission`` and the future of
its answer); one runner, a thread of the server's handler pool while there
is work, takes every call waiting, submits their jobs to the queue in one
``QueueApi.submit_each`` (one check of the queue's state, one allocation of
ids, one durable write for all their files), encodes each call's answer and
gives all of them back to the loop in one hand-off. Calls arriving while a
batch is being written wait for the next one, so the size of a batch follows
the load. (A second runner preparing the next batch during the write was
measured slower: the two contend for the interpreter lock.)

Gathering: when the last batch had two callers or more, the next one waits
for those callers to call again, until ``GATHER_SECONDS`` after they were
answered at most, as PostgreSQL's ``commit_delay`` with ``commit_siblings``
does. Without it, many clients fall into groups that take turns, each batch
waiting for the other's write; with it they meet in one batch, and one
write and one hand-off serve them all. It stops once ``GATHER_AT_MOST``
calls wait: with more clients, two groups taking turns do better, one
group's calls being read and prepared while the other's are written. A
single client never waits (its last batch had one caller), and the runner
never waits with nothing to submit: it stops, and the first call to come
starts one that gathers.

Large requests: a call whose request is over ``LARGEST_BATCHED`` bytes is
submitted alone, by a runner of large calls (a second thread of the pool
while there are any) that takes them one at a time, in order. So a client
sending huge jobs neither holds up the small calls that would have shared
its batch nor takes more than one handler thread, however many
connections it opens. (Its file's write may still share a sync with
theirs.)

Why: with a thread per call, each submission crossed threads four times
(loop, handler, the group commit's leader, loop) and waited for a free
handler; those hand-offs, not the disk, set the rate of many clients each
submitting one job (``doc/performance.rst``, "SubmitJob in batches").

Bounded: a connection has at most one request in flight, so at most one
waiting call per open connection, and those of clients that went away
since (their jobs are still submitted, as a thread per call did). One
call's refusal (bad options, a missing right, even an unexpected error in
checking it) is that call's answer alone; a batch that fails as a whole
answers each of its calls with the error, logged once. One stopped by a
``BaseException`` (not ours to swallow) answers its calls with a
``LuxiError`` and passes it on, and the calls waiting behind it get a new
runner.

Thread safety: ``add`` is called from the loop thread; the runners take
calls under ``_lock``, which also guards whether each of them runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from jobqueue.errors import LuxiError
from jobqueue.luxi.connection import Answer, Connection
from jobqueue.submission import JobSubmission

#: How long after their answers the last batch's callers may take to call
#: again and still be waited for. Shorter than the write a batch shares (two
#: device flushes, about 1.5 ms on the benchmark's machine), so a caller that
#: does not come back costs the next batch less than its write.
GATHER_SECONDS = 0.001
#: The gathering stops once this many calls wait. Measured (16, 8 and 4
#: clients, ``doc/performance.rst``): gathering all 16 clients into one batch
#: lost the overlap of two groups; 8 kept it, and gained with fewer clients.
GATHER_AT_MOST = 8
#: A request larger than this (bytes) does not join a batch: it is submitted
#: alone, by the runner of large calls. Its checking
#: and encoding would otherwise hold up every small call of its batch
#: (measured: beside a client sending jobs of 2,000 opcodes, another's
#: one-opcode ``SubmitJob`` took 25 ms at the median instead of 1 ms; 8 ms now).
LARGEST_BATCHED = 64 * 1024

# A call waiting for its batch: who asked, where the answer goes, the job,
# and the queue (a standby taking over may change it between calls).
_Call = tuple[Connection, "asyncio.Future[Answer]", JobSubmission, Any]
_Answered = tuple["asyncio.Future[Answer]", Answer]


class SubmissionBatches:
    """Batches of single-job submissions; see the module docstring.

    ``executor`` lends the runner its thread; ``encode`` turns a job id
    into its answer; ``failure(connection, error)`` turns a refusal into
    one (and logs what was unexpected); ``gather`` is how long after their
    answers the last batch's callers are waited for (seconds), and
    ``gather_at_most`` how many calls end the wait; a request of more than
    ``largest_batched`` bytes is submitted alone.
    """

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        encode: Callable[[int], Answer],
        failure: Callable[[Connection, Exception], Answer],
        gather: float = GATHER_SECONDS,
        gather_at_most: int = GATHER_AT_MOST,
        largest_batched: int = LARGEST_BATCHED,
    ) -> None:
        self._executor = executor
        self._encode = encode
        self._failure = failure
        self._gather = gather
        self._gather_at_most = gather_at_most
        self._largest_batched = largest_batched
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)  # the last batch's callers are back
        self._batched = _Lane()
        self._large = _Lane()
        # Connections of the last batch that have not called again (empty: no
        # gathering), and until when (monotonic seconds) they are waited for.
        self._returning: set[Connection] = set()
        self._gather_until = 0.0

    def add(
        self,
        connection: Connection,
        answer: asyncio.Future[Answer],
        submission: JobSubmission,
        queue: Any,
        size: int = 0,
    ) -> None:
        """Queue one call (loop thread); its answer arrives through ``answer``.

        A request of more than ``largest_batched`` bytes (``size``) is
        submitted alone instead.
        """
        large = size > self._largest_batched
        lane = self._large if large else self._batched
        with self._lock:
            lane.calls.append((connection, answer, submission, queue))
            start, lane.running = not lane.running, True
            if self._returning:
                self._returning.discard(connection)
                if self._gathered():
                    self._returned.notify()
        if start:
            self._start(lane, self._submit_large if large else self._submit_waiting)

    def _start(self, lane: _Lane, submit_next: Callable[[], bool]) -> None:
        """Lend ``lane`` a runner's thread; if the executor is shutting down, answer ``lane``."""
        try:
            self._executor.submit(self._run, lane, submit_next)
        except RuntimeError as err:
            with self._lock:
                lane.running = False
                calls, lane.calls = lane.calls, []
            self._answer_all(calls, LuxiError(str(err)))

    def _run(self, lane: _Lane, submit_next: Callable[[], bool]) -> None:
        """A runner: ``submit_next`` until no call waits in ``lane``."""
        try:
            while submit_next():
                pass
        except BaseException:  # never left marked as running; calls left get another runner
            with self._lock:
                lane.running = bool(lane.calls)
                restart = lane.running
            if restart:
                self._start(lane, submit_next)
            raise

    def _submit_large(self) -> bool:
        """Submit the first large call waiting, alone; False (and no longer running) if none."""
        with self._lock:
            if not self._large.calls:
                self._large.running = False
                return False
            call = self._large.calls.pop(0)
        self._submit_safely([call])
        return True

    def _submit_waiting(self) -> bool:
        """Submit every call waiting; False (and no longer running) if none did."""
        with self._lock:
            if not self._batched.calls:
                self._batched.running = False
                return False
            self._gather_returning()
            calls, self._batched.calls = self._batched.calls, []
            self._returning = {call[0] for call in calls} if len(calls) > 1 else set()
        try:
            self._submit_safely(calls)
        finally:
            with self._lock:
                self._gather_until = time.monotonic() + self._gather
        return True

    def _gather_returning(self) -> None:
        """Wait (``_lock`` held) for the last batch's callers, until ``_gather_until``."""
        self._returning.difference_update(call[0] for call in self._batched.calls)
        remaining = self._gather_until - time.monotonic()
        if remaining > 0 and not self._gathered():
            self._returned.wait(remaining)

    def _gathered(self) -> bool:
        """Whether the gathering is over (``_lock`` held): everyone back, or enough waiting."""
        return not self._returning or len(self._batched.calls) >= self._gather_at_most

    def _submit_safely(self, calls: list[_Call]) -> None:
        try:
            self._submit(calls)
        except Exception as err:  # a bug: these calls fail, later ones are still served
            self._answer_all(calls, err)
        except BaseException as err:  # not for us to stop: answered, then passed on
            self._answer_all(calls, LuxiError(f"Submission interrupted ({type(err).__name__})"))
            raise

    def _submit(self, calls: list[_Call]) -> None:
        answers: list[_Answered] = []
        for queue, group in _by_queue(calls):
            try:
                results = queue.submit_each([submission for _, _, submission, _ in group])
            except Exception as err:  # logged once, with its traceback; every call answered
                answers += self._failed(group, err)
                continue
            for (connection, answer, _, _), result in zip(group, results, strict=True):
                if isinstance(result, Exception):
                    answers.append((answer, self._failure(connection, result)))
                else:
                    answers.append((answer, self._encode(result)))
        _deliver(answers)

    def _answer_all(self, calls: list[_Call], err: Exception) -> None:
        _deliver(self._failed(calls, err))

    def _failed(self, calls: list[_Call], err: Exception) -> list[_Answered]:
        """Every call answered with ``err``, reported (logged) for the first one only."""
        first = self._failure(calls[0][0], err)
        return [(answer, first) for _, answer, _, _ in calls]


class _Lane:
    """Calls waiting for one runner, and whether it runs (``_lock`` guards both)."""

    __slots__ = ("calls", "running")

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.running = False


def _by_queue(calls: list[_Call]) -> list[tuple[Any, list[_Call]]]:
    """The calls grouped by the queue they go to, in order (almost always one group)."""
    groups: list[tuple[Any, list[_Call]]] = []
    for call in calls:
        if groups and groups[-1][0] is call[3]:
            groups[-1][1].append(call)
        else:
            groups.append((call[3], [call]))
    return groups


def _deliver(answers: list[_Answered]) -> None:
    """Complete the answers' futures in their loop, in one hand-off."""
    if not answers:
        return
    loop = answers[0][0].get_loop()
    try:
        loop.call_soon_threadsafe(_complete, answers)
    except RuntimeError:  # the loop is gone: nobody is waiting
        pass


def _complete(answers: list[_Answered]) -> None:
    for answer, data in answers:
        if not answer.done():  # not if its client went away
            answer.set_result(data)
