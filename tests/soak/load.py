"""Client threads that load the real daemon, and a ledger of what they were told.

Each thread loops over random actions (single and batched submissions with
relative and absolute dependencies, command and delay opcodes, cancels,
queries, the odd auto-archive) while ``up`` is set. A call that fails in
transport (the daemon was killed) simply did not happen: only ids that came
back in an answer go into the ledger. Every opcode carries a unique
``comment`` tag, so the files can later be matched to the submissions that
were acknowledged: an id issued twice would show up as a foreign tag.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
import threading
from typing import Any

from jobqueue import errors
from jobqueue.constants import FINALIZED
from jobqueue.luxi.client import Client

ALL_FINAL = sorted(str(status) for status in FINALIZED)
#: Share of batched submissions with 32 to 40 jobs (one file-system sync: doc/storage.rst).
LARGE_BATCH_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Submitted:
    """One acknowledged job: its id, its tag and the dependencies it was meant to have."""

    job_id: int
    tag: str
    depends: list[list[Any]]


def _op_menu(rng: random.Random, op_tag: str) -> dict[str, Any]:
    """A random opcode; one that submits a child job tags it ``<op_tag>/child``."""
    choice = rng.random()
    if choice < 0.3:
        op: dict[str, Any] = {"OP_ID": "OP_TEST_DELAY", "duration": rng.choice([0, 0.01, 0.05])}
    elif choice < 0.4:
        op = {"OP_ID": "OP_TEST_DELAY", "duration": 0.01, "repeat": 3}
    elif choice < 0.55:
        op = {"OP_ID": "OP_COMMAND_RUN", "argv": ["true"]}
    elif choice < 0.7:
        op = {"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", "echo out; echo err >&2"]}
    elif choice < 0.75:
        op = {"OP_ID": "OP_COMMAND_RUN", "argv": ["false"]}
    elif choice < 0.85:
        op = {"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", "sleep 0.1"], "locks": ["shared"]}
    elif choice < 0.9:
        child = {"OP_ID": "OP_TEST_DELAY", "duration": 0, "comment": f"{op_tag}/child"}
        op = {"OP_ID": "OP_TEST_DUMMY", "submit_jobs": [[child]]}
    else:
        op = {"OP_ID": "OP_TEST_JQUEUE", "log_messages": ["a", "b"]}
    return op


class Ledger:
    """What the clients were told; every method takes ``_lock``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acked: dict[int, Submitted] = {}
        self.duplicate_acks: list[int] = []
        self.refusals: collections.Counter[str] = collections.Counter()
        self.transport_errors = 0

    def ack(self, submitted: Submitted) -> None:
        with self._lock:
            if submitted.job_id in self.acked:
                self.duplicate_acks.append(submitted.job_id)
            self.acked[submitted.job_id] = submitted

    def refused(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] += 1

    def lost_connection(self) -> None:
        with self._lock:
            self.transport_errors += 1

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def reached(self, count: int) -> bool:
        """Whether at least ``count`` jobs were acknowledged."""
        return self.count() >= count

    def refusal_count(self) -> int:
        with self._lock:
            return sum(self.refusals.values())

    def refused_at_least(self, count: int) -> bool:
        """Whether at least ``count`` calls were refused."""
        return self.refusal_count() >= count

    def snapshot(self) -> dict[int, Submitted]:
        with self._lock:
            return dict(self.acked)

    def some_ids(self, rng: random.Random, count: int) -> list[int]:
        with self._lock:
            ids = list(self.acked)
        return rng.sample(ids, min(count, len(ids)))


class LoadClients:
    """``threads`` client threads on ``socket_path``; run while ``up`` is set, end on ``stop``."""

    def __init__(self, socket_path: str, ledger: Ledger, seed: int, *, threads: int = 16) -> None:
        self.socket_path = socket_path
        self.ledger = ledger
        self.up = threading.Event()
        self.stop = threading.Event()
        self._seed = seed
        self._tags = itertools.count()
        self._tag_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(number,), name=f"load-{number}", daemon=True)
            for number in range(threads)
        ]
        self.failures: list[BaseException] = []

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        """Stop the threads and wait for them; re-raise the first unexpected failure."""
        self.stop.set()
        self.up.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        if self.failures:
            raise self.failures[0]

    def _tag(self, number: int) -> str:
        with self._tag_lock:
            return f"t{number}-{next(self._tags)}"

    def _run(self, number: int) -> None:
        rng = random.Random(self._seed * 1000 + number)
        client: Client | None = None
        while not self.stop.is_set():
            if not self.up.wait(0.5) or self.stop.is_set():
                continue
            try:
                if client is None:
                    client = Client(self.socket_path, timeout=30)
                self._act(client, rng, number)
            except (errors.NoMasterError, errors.ConnectionClosed, errors.RequestTimeout):
                self.ledger.lost_connection()
                if client is not None:
                    client.close()
                client = None
            except errors.JobQueueError as err:  # e.g. a StorageError during faults
                self.ledger.refused(type(err).__name__)
            except BaseException as err:  # anything else is a test failure
                self.failures.append(err)
                self.stop.set()
        if client is not None:
            client.close()

    def _job(self, rng: random.Random, number: int) -> tuple[str, list[dict[str, Any]]]:
        tag = self._tag(number)
        ops = [_op_menu(rng, f"{tag}#{index}") for index in range(rng.choice([1, 1, 2, 3]))]
        for index, op in enumerate(ops):
            op["comment"] = f"{tag}#{index}"
        return tag, ops

    def _absolute_dependency(self, rng: random.Random) -> list[list[Any]]:
        ids = self.ledger.some_ids(rng, 1) if rng.random() < 0.4 else []
        return [[ids[0], rng.choice([[], ALL_FINAL, ["success"]])]] if ids else []

    def _act(self, client: Client, rng: random.Random, number: int) -> None:
        choice = rng.random()
        if choice < 0.35:
            tag, ops = self._job(rng, number)
            depends = self._absolute_dependency(rng)
            if depends:
                ops[0]["depends"] = depends
            self.ledger.ack(Submitted(client.submit_job(ops), tag, depends))
        elif choice < 0.75:
            self._submit_many(client, rng, number)
        elif choice < 0.85:
            for job_id in self.ledger.some_ids(rng, 1):
                client.cancel_job(job_id, rng.random() < 0.5)
        elif choice < 0.87:
            client.auto_archive_jobs(-1, 5)
        else:
            ids = self.ledger.some_ids(rng, 5)
            rows = client.query_jobs(ids, ["id", "status"])
            assert [row[0] for row in rows] == ids, f"QueryJobs lost jobs: {rows} for {ids}"

    def _submit_many(self, client: Client, rng: random.Random, number: int) -> None:
        jobs, tags, meant = [], [], []
        # Now and then a batch large enough for one sync of the file system.
        size = rng.randint(32, 40) if rng.random() < LARGE_BATCH_SHARE else rng.randint(2, 4)
        for index in range(size):
            tag, ops = self._job(rng, number)
            depends = self._absolute_dependency(rng)
            relative = index > 0 and rng.random() < 0.7
            if relative:
                depends = [[-1, rng.choice([[], ALL_FINAL, ["success"]])], *depends]
            if depends:
                ops[0]["depends"] = depends
            jobs.append(ops)
            tags.append(tag)
            meant.append(depends)
        results = client.submit_many_jobs(jobs)
        assert len(results) == len(jobs), results
        ids = [job_id if ok else None for ok, job_id in results]
        for index, ((ok, job_id), tag, depends) in enumerate(
            zip(results, tags, meant, strict=True)
        ):
            if not ok:
                self.ledger.refused(f"[false, {str(job_id).rsplit(': ', 1)[-1]}]")
                continue
            resolved = [[ids[index + dep] if dep < 0 else dep, want] for dep, want in depends]
            self.ledger.ack(Submitted(job_id, tag, resolved))
