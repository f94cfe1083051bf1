"""Hostile clients: a hypothesis fuzzer and slow senders against the real daemon.

The fuzzer sends batches of random and mutated LUXI messages on one
connection each: wrong types in every argument position of every method,
unknown methods, mutated opcodes, huge numbers, deep nesting, NUL and ETX
inside strings, invalid UTF-8, random bytes, frames split at random and
a partial frame left behind. Every complete frame must get exactly one
well-formed answer, in order; a failure is always one of our own error
classes, never the catch-all ``GenericError`` of an unexpected exception,
and the daemon logs no traceback. After each batch a normal client is
served and the daemon's open file descriptors and threads return to their
baseline.

The slow-client test holds many connections that each send one byte a
second while a normal client's round trips are timed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import simplejson
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from jobqueue import constants, errors
from jobqueue.lus.command import base_environment
from jobqueue.luxi import protocol
from jobqueue.storage.filecreate import BATCH_WRITERS
from tests.daemon_helper import Daemon, read_response, request, wait_until
from tests.luxi_samples import DELAY0, VALID_CALLS
from tests.soak.support import SoakReport, pick, seeded_rng, soak_timeout

pytestmark = [pytest.mark.soak, pytest.mark.timeout(soak_timeout())]

MAX_MESSAGE = 256 * 1024
#: The server's request-handler pool size (``LuxiServer(handler_threads=...)``).
HANDLER_THREADS = 16
SEED_OPS: list[dict[str, Any]] = [
    DELAY0,
    {"OP_ID": "OP_TEST_JQUEUE", "log_messages": ["x"]},
    {"OP_ID": "OP_TEST_DUMMY", "result": 1, "messages": ["m"]},
    {"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "env": {"A": "b"}, "timeout": 5},
    {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["echo", "{item}"], "items": ["a"]},
]
#: Valid calls; those that change a job aim at one that does not exist. The
#: number of workers is left alone: changing it changes the daemon's threads.
SEED_ARGS: dict[str, list[Any]] = {
    **{method: args for method, args in VALID_CALLS.items() if method != "SetMaxRunningJobs"},
    "WaitForJobChange": [1, ["status"], None, None, 0.2],
    "CancelJob": [999999, False],
    "ChangeJobPriority": [999999, 10],
    "ChangeJobStartTime": [999999, None],
    "ArchiveJob": [999999],
}
#: The only programs a fuzzed opcode may make the daemon run.
HARMLESS = {"true", "false", "echo"}
SAFE_PATH = base_environment(0)["PATH"]
FIELD_NAMES = ["id", "status", "opresult", "oplog", "summary", "bogus"]

# -- message strategies ----------------------------------------------------------------
nasty_text = st.text(
    alphabet=st.sampled_from(
        ["\x00", "\x03", "\n", "=", "\\", '"', "é", "\u2028", "\U0001f600", "\ud800", "²", "1"]
    ),
    max_size=20,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**30, -(10**30), 10**400, 1e308, -1e-308, "1" * 5000]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    nasty_text,
    st.sampled_from(FIELD_NAMES + list(SEED_ARGS) + [str(status) for status in constants.Status]),
)
junk = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _frame(message: Any) -> bytes:
    return simplejson.dumps(message).encode("ascii") + b"\n\x03"


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@st.composite
def wrong_type_call(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(sorted(SEED_ARGS)))
    args = list(SEED_ARGS[method])
    position = draw(st.integers(0, len(args)))
    value = draw(junk)
    if position == len(args):
        args.append(value)  # one argument too many
    else:
        args[position] = value
    return _frame({"method": method, "args": args, "version": constants.LUXI_VERSION})


@st.composite
def junk_call(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(sorted(SEED_ARGS)) | st.text(max_size=30) | nasty_text)
    message: dict[str, Any] = {"method": method, "args": draw(st.lists(junk, max_size=6))}
    if draw(st.booleans()):
        message["version"] = draw(junk)
    if draw(st.booleans()):
        message[draw(st.text(max_size=8))] = draw(junk)
    return _frame(draw(st.sampled_from([message, message["args"], method, None])))


@st.composite
def mutated_opcode(draw: st.DrawFn) -> bytes:
    op = dict(draw(st.sampled_from(SEED_OPS)))
    mutation = draw(st.sampled_from(["set", "add", "drop", "common"]))
    if mutation == "set":
        op[draw(st.sampled_from(sorted(op)))] = draw(junk)
    elif mutation == "add":
        op[draw(st.text(max_size=10))] = draw(junk)
    elif mutation == "drop":
        op.pop(draw(st.sampled_from(sorted(op))))
    else:
        name = draw(st.sampled_from(["priority", "depends", "comment", "debug_level", "dry_run"]))
        op[name] = draw(junk)
    _make_harmless(op)
    method = draw(st.sampled_from(["SubmitJob", "SubmitManyJobs", "SubmitJobToDrainedQueue"]))
    args = [[[op]]] if method == "SubmitManyJobs" else [[op]]
    return _frame({"method": method, "args": args})


def _make_harmless(op: dict[str, Any]) -> None:
    """Never let a fuzzed opcode run a real program (or fan out to many jobs)."""
    if op.get("OP_ID") not in ("OP_COMMAND_RUN", "OP_COMMAND_FANOUT"):
        return
    env = op.get("env")
    if isinstance(env, dict):
        env.pop("PATH", None)
    argv = op.get("argv")
    if isinstance(argv, list) and argv and isinstance(argv[0], str):
        program = argv[0]
        if (
            "/" in program
            or "{" in program
            or (program not in HARMLESS and shutil.which(program, path=SAFE_PATH) is not None)
        ):
            argv[0] = "true"
    items = op.get("items")
    if isinstance(items, list):
        del items[3:]


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from([50, 500, 800, 900, 950, 970, 990, 1000, 2000, 30000]))
    kind = draw(st.sampled_from(["result", "arg", "fields", "message"]))
    if kind == "result":
        text = (
            '{"method": "SubmitJob", "args": [[{"OP_ID": "OP_TEST_DUMMY", "result": '
            + _nested(depth)
            + "}]]}"
        )
    elif kind == "arg":
        method = draw(st.sampled_from(sorted(SEED_ARGS)))
        text = '{"method": "' + method + '", "args": [' + _nested(depth) + "]}"
    elif kind == "fields":
        text = '{"method": "QueryJobs", "args": [null, ' + _nested(depth, '"id"') + "]}"
    else:
        text = _nested(depth, '{"method": "QueryJobs", "args": [null, ["id"]]}')
    return text.encode("ascii") + b"\x03"


@st.composite
def raw_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["binary", "bad-utf8", "raw-control", "numbers", "oversize"]))
    if kind == "binary":
        return draw(st.binary(max_size=64)) + b"\x03"
    if kind == "bad-utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
        return b'{"method": "QueryJobs\x00' + bad + b'", "args": [null, ["id"]]}\x03'
    if kind == "raw-control":  # a raw NUL or ETX inside a JSON string splits or breaks it
        char = draw(st.sampled_from([b"\x00", b"\x03", b"\x01"]))
        return b'{"method": "Query' + char + b'Jobs", "args": [null, ["id"]]}\x03'
    if kind == "numbers":
        number = draw(st.sampled_from([b"1e999", b"-1e999", b"NaN", b"Infinity", b"1" * 5000]))
        return b'{"method": "CancelJob", "args": [' + number + b"]}\x03"
    return b'{"method": "' + b"x" * (MAX_MESSAGE + 10) + b'"}\x03'


messages = st.one_of(wrong_type_call(), junk_call(), mutated_opcode(), deep_nesting(), raw_bytes())


@dataclasses.dataclass
class Batch:
    """Messages sent on one connection, cut into chunks, maybe with a partial frame at the end."""

    payload: bytes
    cuts: list[int]
    partial: bytes


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    payload = b"".join(draw(st.lists(messages, min_size=1, max_size=6)))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(payload) - 1)), max_size=4)))
    partial = draw(st.sampled_from([b"", b'{"method": "QueryJo', b"\xff\xfe"]))
    return Batch(payload, cuts, partial)


def connection_closed(sock: socket.socket) -> bool:
    """Whether the peer closed (a reset, if it left our data unread, counts)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class Answers:
    """Reads the answers on one connection in order, however they are chunked."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = protocol.FrameBuffer(constants.DEFAULT_MAX_MESSAGE_SIZE)
        self._frames: list[bytes] = []

    def next(self) -> Any:
        while not self._frames:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("the daemon closed the connection before answering")
            self._frames.extend(self._buffer.feed(data))
        return simplejson.loads(self._frames.pop(0))


# -- the daemon's resources ------------------------------------------------------------
def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    """What the daemon's descriptors point at, for failure messages."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return sorted(targets)


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class HostileRun:
    """Sends batches to one daemon and checks what must hold after each."""

    def __init__(self, daemon: Daemon) -> None:
        assert daemon.proc is not None
        self.daemon = daemon
        self.pid = daemon.proc.pid
        self.path = daemon.paths.master_socket
        self.normal = daemon.client()
        self.messages = 0
        self.batches = 0
        self.log_offset = len(daemon.log())
        self.normal_client_round_trip()
        self._start_job_writers()
        self.base_threads = self._saturate_handler_threads()
        self._fd_polls: list[int] = []
        self.base_fds = wait_until(self._settled_fd_count, 10, "the fd count to settle")
        self.base_targets = fd_targets(self.pid)
        self.max_fd_drift = self.max_thread_drift = 0

    def _start_job_writers(self) -> None:
        """Make the worker pool start the threads of workers that step aside, and the
        file store its job-writer threads where it syncs batches file by file; both
        start them on demand and keep them.

        Batches that would keep every writer busy are run until one adds no thread.
        """
        batch = [[DELAY0]] * BATCH_WRITERS

        def run_batch() -> None:
            for _, job_id in self.normal.submit_many_jobs(batch):
                assert self.normal.wait_for_job(int(job_id)) == "success"

        self._until_threads_settle(run_batch)
        self.normal.close()

    def _saturate_handler_threads(self) -> int:
        """Make the server start all its request-handler threads; return the thread count.

        The handler pool grows on demand and never shrinks, so the baseline is
        taken with the pool full: rounds of concurrent slow queries (many
        unknown ids) until a round adds no thread.
        """
        slow_query = request("QueryJobs", list(range(10**9, 10**9 + 8000)), ["oplog"])

        def query() -> None:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(60)
                sock.connect(self.path)
                sock.sendall(slow_query)
                assert Answers(sock).next()["success"] is True

        def run_queries() -> None:
            clients = [threading.Thread(target=query) for _ in range(HANDLER_THREADS + 4)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()

        return self._until_threads_settle(run_queries)

    def _until_threads_settle(self, round_of_work: Callable[[], None]) -> int:
        """Run ``round_of_work`` until a round adds no daemon thread; the thread count."""
        previous = -1
        for _ in range(10):
            round_of_work()
            count = threads(self.pid)
            if count == previous:
                return count
            previous = count
        raise AssertionError(f"the daemon's thread count does not settle ({previous})")

    def _settled_fd_count(self) -> int | None:
        """The fd count once 20 polls in a row read the same (closed connections gone)."""
        self._fd_polls = [*self._fd_polls[-19:], open_fds(self.pid)]
        settled = len(self._fd_polls) == 20 and len(set(self._fd_polls)) == 1
        return self._fd_polls[-1] if settled else None

    def send(self, batch: Batch) -> None:
        data = batch.payload + batch.partial
        frames = batch.payload.count(constants.LUXI_EOM)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(90)
            sock.connect(self.path)
            start = 0
            try:
                for cut in [*batch.cuts, len(data)]:
                    sock.sendall(data[start:cut])
                    start = max(start, cut)
            except BrokenPipeError:  # closed after an oversized frame; its answer is waiting
                assert len(data) > MAX_MESSAGE
            answers = Answers(sock)
            for _ in range(frames):
                answer = answers.next()
                self._check_answer(answer)
                if not answer["success"] and "exceeds the maximum size" in str(answer["result"]):
                    assert connection_closed(sock), "still open after an oversized frame"
                    break
        self.messages += frames
        self.batches += 1

    @staticmethod
    def _check_answer(answer: Any) -> None:
        assert isinstance(answer, dict) and set(answer) == {"success", "result"}, answer
        assert isinstance(answer["success"], bool), answer
        if not answer["success"]:
            assert errors.is_encoded_error(answer["result"]), answer
            assert answer["result"][0] != "GenericError", f"unexpected error: {answer}"

    def normal_client_round_trip(self) -> None:
        """A well-behaved client is served (and the drain flag a batch may have set is reset)."""
        self.normal.set_drain_flag(False)
        assert self.normal.query_config_values(["drain_flag"]) == [False]
        self.normal.close()

    def back_to_baseline(self) -> None:
        """Bounded poll until fds and threads are at most their baseline; record the drift."""
        seen = [0, 0]

        def settled() -> bool:
            seen[:] = [open_fds(self.pid), threads(self.pid)]
            return seen[0] <= self.base_fds and seen[1] <= self.base_threads

        try:
            wait_until(settled, 20, "the daemon's fds and threads to return to their baseline")
        except AssertionError as err:
            raise AssertionError(
                f"{err}: {seen[0]} fds (baseline {self.base_fds}), {seen[1]} threads "
                f"(baseline {self.base_threads}); fds now: {fd_targets(self.pid)}, "
                f"at baseline: {self.base_targets}"
            ) from None
        finally:
            self.max_fd_drift = max(self.max_fd_drift, seen[0] - self.base_fds)
            self.max_thread_drift = max(self.max_thread_drift, seen[1] - self.base_threads)

    def check_log(self) -> None:
        """No ERROR or CRITICAL record: no unexpected exception, no failed task or connection."""
        log = self.daemon.log()[self.log_offset :]
        bad = [line for line in log.splitlines() if re.search(r" (ERROR|CRITICAL) ", line)]
        assert not bad, "the daemon logged errors:\n" + "\n".join(bad[:20])


def test_fuzzed_messages(
    daemon_factory: Callable[..., Daemon], soak_report: SoakReport, tmp_path: Path
) -> None:
    started = time.monotonic()
    fuzz_seed, _ = seeded_rng("LUXI fuzzer")
    daemon = daemon_factory(
        "--max-message-size",
        str(MAX_MESSAGE),
        "--shutdown-timeout",
        "1",
        "--kill-grace",
        "1",
    ).start()
    run = HostileRun(daemon)

    @seed(fuzz_seed)
    @settings(
        max_examples=pick(300, 3000),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=batches())
    def fuzz(batch: Batch) -> None:
        run.send(batch)
        run.normal_client_round_trip()
        run.back_to_baseline()

    fuzz()
    run.check_log()
    assert run.messages >= pick(300, 3000)
    assert daemon.stop() == 0
    soak_report.record(
        tmp_path,
        started,
        test="LUXI fuzzer",
        seed=fuzz_seed,
        rounds=run.batches,
        malformed=run.messages,
        **{"fd drift": run.max_fd_drift, "thread drift": run.max_thread_drift},
    )


def test_slow_clients_do_not_delay_others(
    daemon_factory: Callable[..., Daemon], soak_report: SoakReport, tmp_path: Path
) -> None:
    started = time.monotonic()
    count, seconds = pick(50, 500), pick(3, 60)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * count + 200:  # before the daemon starts: it inherits the limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * count + 200), hard))
    daemon = daemon_factory().start()
    run = HostileRun(daemon)
    message = request("QueryConfigValues", ["drain_flag"])
    assert seconds < len(message), "the slow requests must stay incomplete while timed"
    slow = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(daemon.paths.master_socket)
        slow.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        """One byte a second on every slow connection."""
        for position in range(seconds):
            for sock in slow:
                sock.sendall(message[position : position + 1])
            if stop.wait(1.0):
                return

    sender = threading.Thread(target=trickle, name="slow-senders")
    sender.start()
    round_trips: list[float] = []
    client = daemon.client()
    try:
        while sender.is_alive():
            begin = time.monotonic()
            assert client.query_config_values(["drain_flag"]) == [False]
            round_trips.append(time.monotonic() - begin)
    finally:
        stop.set()
        sender.join()
    client.close()
    # The slow requests were kept, not dropped: each is answered once it is complete.
    for sock in slow:
        sock.sendall(message[seconds:])
    for sock in slow:
        assert read_response(sock) == {"success": True, "result": [False]}
        sock.close()
    run.back_to_baseline()
    worst = max(round_trips)
    print(f"slow clients: {count} connections, {len(round_trips)} round trips, worst {worst:.3f}s")
    assert len(round_trips) >= seconds
    # Far below the slow clients' trickle (one byte a second), with room for a loaded machine.
    assert worst < min(2.0, seconds / 2), f"a normal round trip took {worst:.3f}s"
    assert daemon.stop() == 0
    soak_report.record(
        tmp_path,
        started,
        test="slow clients",
        rounds=len(round_trips),
        **{"fd drift": run.max_fd_drift, "thread drift": run.max_thread_drift},
    )


def test_fuzz_environment_is_sane() -> None:
    """The harmless programs exist where commands look for them, or the fuzzer is moot."""
    assert all(shutil.which(program, path=SAFE_PATH) for program in HARMLESS)
