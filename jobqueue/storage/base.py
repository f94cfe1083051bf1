"""The storage contract: what the queue, the cleaner and the tools need from a store.

A store keeps jobs durably and knows nothing else about them: it hands out
ids that are never issued twice, creates and replaces whole jobs (a write
either happens completely or not at all, and is durable when it returns),
reads them back, moves finished ones to the archive, prunes old archived
ones, keeps the queue-wide settings (the drain flag and a few named ones)
and the job filter rules, offers a feed of changes made by *another*
process, and keeps the raw output of the commands jobs run (see "Command
output" below). How and where jobs are kept is the business of each store
alone (``files``: one JSON file per job; ``memory``: dictionaries, for
tests).

What a store does not do: it keeps no index of live jobs and never decides
what a job's state means. The queue owns the live jobs in memory
(``jobqueue.livejobs``) and is the one writer of a store at a time.

Thread safety: every method may be called from any thread. Writes of
different jobs may run in parallel; the caller guarantees one writer per job.

Command output
--------------

A job may have *output streams*: the bytes a command wrote to its standard
output or error, one stream per ``(op_index, stream)``, ``stream`` being
``"stdout"`` or ``"stderr"`` (``OUTPUT_STREAMS``). The rules every store keeps:

* A stream is created, empty, by ``open_output`` and only ever grows, by
  ``OutputStream.append``, while its job is live and unfinished; there is
  one writer (the job's), one open ``OutputStream`` per stream at a time.
  Bytes once readable never change, so a reader may follow a stream by
  offset.
* What ``append`` added is readable (``read_output``, ``output_sizes``)
  through every handle on the store as soon as ``append`` returns; it is
  durable once ``close`` returns. The queue closes a command's streams
  before it writes the end of its opcode, so the output of a finished job
  is complete and durable.
* Output belongs to its job: ``archive_jobs`` takes it along (it is
  readable throughout, from one place or the other), ``discard_jobs`` and
  ``prune_archive`` delete it with the job, and nothing else deletes it.
  Output of a job that no longer exists is never readable.
* Nothing bounds a stream's size here; the caller does (``--max-output-size``).

A store that cannot keep large values itself (etcd) may keep output
elsewhere, as long as these rules hold for every process that reads it
through the contract; it says where in its own docs.
"""

from __future__ import annotations

import abc
import dataclasses
import errno
import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

try:
    import orjson
except ImportError:  # no wheel for this platform: the standard library's encoder
    orjson = None  # type: ignore[assignment]

from jobqueue.errors import JobFileCorrupted, StorageError
from jobqueue.model import Job, is_json_int

#: The names of a command's output streams, in the order they are shown.
OUTPUT_STREAMS = ("stdout", "stderr")

#: Called with the id of a job that another process changed, created,
#: archived or removed; with None when anything may have changed (the feed
#: lost track, e.g. an overflow). Called from a thread of the feed's own.
ChangeCallback = Callable[[int | None], None]


#: The named settings a store keeps beside the drain flag, each a short line of text.
#: ``watcher_pause``: until when (seconds since the epoch) the cron cleaner pauses.
#: ``max_running_jobs``: the number of workers set through the daemon, in decimal.
WATCHER_PAUSE = "watcher_pause"
MAX_RUNNING_JOBS = "max_running_jobs"
SETTINGS = frozenset({WATCHER_PAUSE, MAX_RUNNING_JOBS})


def check_setting(name: str, value: str | None = None) -> None:
    """Raise ``ValueError`` for an unknown setting name or a value that is not one line."""
    if name not in SETTINGS:
        raise ValueError(f"Unknown store setting {name!r}")
    if value is not None and ("\n" in value or "\r" in value):
        raise ValueError(f"A setting is one line of text, not {value!r}")


def format_pause(until: float) -> str:
    """The stored text of a ``watcher_pause`` end time."""
    return repr(int(until)) if float(until).is_integer() else repr(float(until))


def pause_until(text: str | None, now: float) -> float | None:
    """The end of a stored ``watcher_pause`` if it is still ahead of ``now``, else None.

    Text that is not a finite number counts as no pause.
    """
    try:
        until = float(text) if text is not None else None
    except ValueError:
        return None
    if until is None or not math.isfinite(until) or until <= now:
        return None
    return until


#: One encoder for every job write (``json.dumps`` with arguments builds a new one per call).
_JOB_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_with_stdlib(data: Any) -> bytes:
    """``data`` as compact JSON and a newline, by the standard library (non-ASCII escaped)."""
    return _JOB_ENCODER.encode(data).encode("utf-8") + b"\n"


#: Dataclasses and datetimes go to the stdlib too, which refuses them as it always did.
_ORJSON_OPTIONS = (
    0
    if orjson is None
    else orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def encode_with_orjson(data: Any) -> bytes:
    """``data`` as compact JSON and a newline, by orjson (UTF-8), else as ``encode_with_stdlib``.

    orjson encodes a job several times faster; what it refuses (integers
    beyond 64 bits, keys that are not strings, lone surrogates, nesting
    deeper than 254) goes to the standard library. It writes a float that
    is not finite as null: none reaches a job (LUXI and the typed opcode
    parameters refuse them, the processor refuses results and log messages
    that are not plain JSON, see ``jobqueue.plainjson``).
    """
    try:
        return orjson.dumps(data, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return encode_with_stdlib(data)


#: How every job version is encoded: orjson where it is installed (setup.py
#: asks for it; a platform without its wheel may lack it).
encode_compact = encode_with_stdlib if orjson is None else encode_with_orjson


#: The key under which the file store numbers a job's writes (``startrecords``).
WRITE_SERIAL_KEY = "write_serial"


def encode_job(job: Job, write_serial: int | None = None) -> bytes:
    """The stored form of a job: compact JSON, one line (with its write serial if given).

    ``StorageError`` for a job that holds what JSON cannot (the processor
    refuses such values before they reach a job; this is the last line):
    its write fails like one the disk refused, and the stored version stays.
    """
    data = job.to_dict()
    if write_serial is not None:
        data[WRITE_SERIAL_KEY] = write_serial
    try:
        return encode_compact(data)
    except (TypeError, ValueError, RecursionError) as err:
        raise StorageError(f"Job {job.id} cannot be stored as JSON: {err}", errno.EINVAL) from err


def decode_job(data: bytes) -> Job:
    """Parse a stored job; ``JobFileCorrupted`` for anything that is not a job."""
    return decode_job_and_serial(data)[0]


def decode_job_and_serial(data: bytes) -> tuple[Job, int]:
    """A stored job and its write serial (0 if it has none); ``JobFileCorrupted``."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise JobFileCorrupted(f"Not valid JSON: {err}") from err
    job = Job.from_dict(raw)
    serial = raw.get(WRITE_SERIAL_KEY, 0)
    if not is_json_int(serial) or serial < 0:
        raise JobFileCorrupted(f"Invalid job data: {WRITE_SERIAL_KEY} must be a natural number")
    return job, serial


@dataclasses.dataclass
class PruneResult:
    """What one pruning of the archive did; failures are collected, not raised."""

    jobs: int = 0
    directories: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    #: Archived jobs not looked at because the time budget ran out.
    unfinished: bool = False


class ChangeFeed(abc.ABC):
    """Changes made to a store by other processes, reported per job id.

    ``start`` begins delivering to its callback from a thread of the feed's
    own; ``stop`` ends that (idempotent). Delivery is conservative: a change
    may be reported more than once or spuriously (``None`` = "anything"),
    never missed while the feed runs.
    """

    @abc.abstractmethod
    def start(self, on_change: ChangeCallback) -> None:
        """Begin reporting; raises ``StorageError`` if the store cannot be watched."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop reporting and release what the feed holds; idempotent."""


class Leadership(abc.ABC):
    """Who may write a store: at most one leader at a time, and fenced.

    A daemon ``acquire``s leadership before it writes anything. Once held, it
    can be lost (a lease not renewed in time, another process taking over):
    ``lost`` is set then, and from that moment every write through the
    store this leadership came from raises ``NotLeaderError`` and changes
    nothing, however late the process notices. ``holder`` names the leader
    for clients of a standby.
    """

    def __init__(self) -> None:
        self.lost = threading.Event()

    @abc.abstractmethod
    def acquire(self, wait: float) -> bool:
        """Become the leader, waiting up to ``wait`` seconds (0: try once); True if leading.

        Raises ``StorageError`` when the store cannot be reached.
        """

    @abc.abstractmethod
    def release(self) -> None:
        """Stop leading (idempotent); writes through this store are refused afterwards."""

    @abc.abstractmethod
    def holder(self) -> str | None:
        """The name of the current leader, None when nobody leads."""


class OutputStream(abc.ABC):
    """Appends to one output stream of one opcode; made by ``JobStore.open_output``.

    Used by one thread at a time; see "Command output" in the module docstring.
    """

    @abc.abstractmethod
    def append(self, data: bytes) -> None:
        """Add ``data`` at the end of the stream, readable by all once this returns.

        Raises ``StorageError`` when it cannot; a prefix of ``data`` may have
        been added then, and the stream should not be used any more (but
        closed).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Make everything appended durable and release the stream; idempotent.

        Raises ``StorageError`` when the output could not be made durable
        (what was appended stays readable).
        """


class JobStore(abc.ABC):
    """Durable jobs, ids, archive and settings; see the module docstring."""

    # -- ids -------------------------------------------------------------------
    @abc.abstractmethod
    def allocate_ids(self, count: int) -> list[int]:
        """``count`` new, never-before-issued ids, increasing; ``StorageError`` if none."""

    @abc.abstractmethod
    def release_unused_ids(self) -> None:
        """At a clean stop: give back ids reserved but never handed out.

        No id may be allocated afterwards. Ids are never reused either way;
        this only keeps them dense across restarts. Raises ``StorageError``.
        """

    # -- live jobs -----------------------------------------------------------
    @abc.abstractmethod
    def load_jobs(self) -> Iterator[Job]:
        """Every live job once, in no particular order.

        A stored job that cannot be parsed is set aside (never lost, never
        loaded) and logged. Also makes sure no id at or below a loaded job's
        id is ever allocated.
        """

    @abc.abstractmethod
    def create_jobs(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        """Store new jobs, each durably; one result per job (None = stored).

        A job whose result is an error is not stored (nothing of it stays).
        """

    @abc.abstractmethod
    def replace_job(self, job: Job) -> None:
        """Replace a stored live job durably; ``StorageError`` keeps the old version."""

    def record_start(self, job: Job) -> None:
        """Store durably the version of a live job whose opcode starts now; ``StorageError``.

        Like ``replace_job``, which is what this default does; a store may
        keep the version apart from the job's record until the job's next
        ``replace_job`` (the file store's start records: one device flush
        instead of two), and ``load_jobs`` and ``read_job`` return it
        meanwhile.
        """
        self.replace_job(job)

    @abc.abstractmethod
    def discard_jobs(self, job_ids: Sequence[int]) -> tuple[list[int], StorageError | None]:
        """Delete live jobs that were stored but never acknowledged to anyone.

        Returns the ids that are gone (even if not durably: they must not be
        acknowledged) and the failure that stopped the rest, None if none.
        """

    @abc.abstractmethod
    def read_job(self, job_id: int) -> Job | None:
        """A live or archived job, None if neither exists.

        Raises ``JobFileCorrupted`` for a stored job that cannot be parsed
        and ``StorageError`` when the store cannot be read.
        """

    def read_jobs(self, job_ids: Sequence[int]) -> list[Job | None]:
        """``read_job`` of each id, in order; a store may read them in fewer requests.

        Raises as ``read_job`` does, for the first job that fails.
        """
        return [self.read_job(job_id) for job_id in job_ids]

    # -- archive ---------------------------------------------------------------
    @abc.abstractmethod
    def archive_jobs(self, job_ids: Iterable[int]) -> tuple[list[int], StorageError | None]:
        """Move live jobs to the archive: the ids moved (others were not live), and a failure.

        The failure (None when all went well) is that of the first move or
        sync that failed; moving stops there. The jobs listed as moved are
        archived, the others live: never both.
        """

    @abc.abstractmethod
    def is_archived(self, job_id: int) -> bool:
        """Whether an archived copy of the job exists."""

    @abc.abstractmethod
    def archived_ids(self) -> list[int]:
        """Ids of all archived jobs, sorted."""

    @abc.abstractmethod
    def prune_archive(self, max_age: float, now: float, budget: float | None = None) -> PruneResult:
        """Delete archived jobs last changed more than ``max_age`` seconds before ``now``.

        Stops after about ``budget`` seconds (None: no limit) with
        ``unfinished`` set. Safe while the queue runs; never raises for one
        job that cannot be deleted (see ``failures``).
        """

    def tidy_local_output(self) -> PruneResult:
        """Delete this host's command output of jobs the store no longer has.

        Changes nothing shared, so a standby may call it. Only a store that
        keeps output apart from its jobs (the etcd store, on each daemon's
        own disk) has anything to do; the others prune output with the job.
        """
        return PruneResult()

    # -- queue-wide settings ------------------------------------------------------
    @abc.abstractmethod
    def is_drained(self) -> bool:
        """Whether the drain flag is set."""

    @abc.abstractmethod
    def set_drained(self, drained: bool) -> None:
        """Set or clear the drain flag durably; ``StorageError`` leaves it as it was."""

    @abc.abstractmethod
    def read_setting(self, name: str) -> str | None:
        """The value of a named setting (one of ``SETTINGS``), None if it is not set.

        Raises ``StorageError`` when the store cannot be read.
        """

    @abc.abstractmethod
    def write_setting(self, name: str, value: str | None) -> None:
        """Set a named setting durably (None clears it); ``StorageError`` leaves it as it was.

        ``value`` is one line of text (``ValueError`` otherwise, as for an
        unknown ``name``).
        """

    # -- job filter rules ------------------------------------------------------------
    # A rule is a JSON object whose ``"uuid"`` is its key: a lowercase UUID in
    # canonical form (36 characters of ``0-9a-f`` and ``-``; the caller checks
    # it, so a store may use it as a file name or a key as it is). The store
    # keeps rules whole and knows nothing else about them.

    @abc.abstractmethod
    def load_filters(self) -> list[dict[str, Any]]:
        """Every stored rule, in no particular order.

        A stored rule that cannot be parsed is logged and left out (never
        deleted). Raises ``StorageError`` when the store cannot be read.
        """

    @abc.abstractmethod
    def replace_filter(self, rule: dict[str, Any]) -> None:
        """Store ``rule`` under ``rule["uuid"]`` durably, replacing any rule stored there.

        Atomic: ``StorageError`` leaves the previous rule (or none) in place.
        """

    @abc.abstractmethod
    def delete_filter(self, uuid: str) -> bool:
        """Delete the rule stored under ``uuid`` durably; False if there was none.

        Raises ``StorageError`` when it cannot be deleted (it stays then).
        """

    # -- other processes' changes --------------------------------------------------
    @abc.abstractmethod
    def change_feed(self) -> ChangeFeed:
        """A new, unstarted feed of changes made through other handles on this store."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the store holds (connections, threads); idempotent.

        Leadership acquired through it is released too.
        """

    # -- who may write ---------------------------------------------------------------
    @abc.abstractmethod
    def leadership(self, name: str) -> Leadership:
        """This handle's leadership of the store, under ``name`` (e.g. host and pid).

        Writes through a handle whose leadership was acquired are fenced by
        it (see ``Leadership``); a handle never acquired writes unfenced
        (tests, tools that hold the store's lock by other means).
        """

    # -- command output (see "Command output" in the module docstring) ------------------
    @abc.abstractmethod
    def open_output(self, job_id: int, op_index: int, stream: str) -> OutputStream:
        """Open output stream ``stream`` of opcode ``op_index`` of live job ``job_id``.

        Creates the stream, empty, if it does not exist; otherwise appends
        after what it holds. ``stream`` is one of ``OUTPUT_STREAMS``
        (``ValueError`` otherwise). Raises ``StorageError`` when the stream
        cannot be created.
        """

    @abc.abstractmethod
    def output_sizes(self, job_id: int) -> dict[tuple[int, str], int]:
        """The size in bytes of each output stream of a live or archived job.

        Keyed by ``(op_index, stream)``; ``{}`` for a job without output or
        one that does not exist. Raises ``StorageError`` when the store
        cannot be read.
        """

    @abc.abstractmethod
    def read_output(
        self, job_id: int, op_index: int, stream: str, offset: int, max_bytes: int
    ) -> bytes:
        """Up to ``max_bytes`` bytes of an output stream, from byte ``offset`` (>= 0) on.

        Fewer bytes only where the stream ends (as of the call); ``b""`` at
        or past its end, and for a stream or job that does not exist.
        Raises ``StorageError`` when the store cannot be read.
        """
