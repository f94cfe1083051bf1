"""Where the etcd store keeps what, and how big a job may be there.

Every key of one queue lives under its prefix (doc/ha.rst, "Key layout")::

    <prefix>/version             the layout's version, "1"
    <prefix>/leader              the master's name; bound to its lease
    <prefix>/serial              the highest job id reserved, decimal
    <prefix>/settings/<name>     a queue setting (settings/drain: the drain flag)
    <prefix>/filters/<uuid>      one job filter rule, JSON
    <prefix>/jobs/<id>           one live job: exactly the bytes of a job file
    <prefix>/archive/<id>        one archived job: the same bytes, moved
    <prefix>/archive-time/<id>   when a batch was archived (see below)
    <prefix>/corrupt/<id>        a live job that could not be parsed, set aside

``<id>`` is zero-padded to ``ID_WIDTH`` digits so that key order is id order.

Each archiving transaction also writes one ``archive-time`` record, keyed by
the batch's first id and holding the time of the move: it shares the
transaction's revision with the batch's archive keys, which never change
afterwards, so an archived key's ``mod_revision`` leads to the time it was
archived without reading the job.

The size rule (``fit_job``) is the one place that decides what happens to a
job bigger than etcd takes in one request: see its docstring and doc/ha.rst.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from typing import Any

from jobqueue.errors import StorageError
from jobqueue.model import Job
from jobqueue.storage.base import encode_compact, encode_job

#: The layout's version, kept at ``<prefix>/version``.
LAYOUT_VERSION = b"1"
#: Digits of a job id in a key (more for ids beyond them; order then breaks).
ID_WIDTH = 10
#: etcd's default --max-request-bytes.
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
#: Bytes of a request that are not the job itself: keys, compares, framing.
#: The largest job is ``max_request_bytes - REQUEST_MARGIN``, so that it
#: can still be archived (one put, one delete, one compare, one record).
REQUEST_MARGIN = 4096
#: Framing of one operation or compare in etcd's request, counted generously.
_OP_OVERHEAD = 32
#: A generous estimate of the bytes one compare (and its read when refused) adds.
COMPARE_COST = _OP_OVERHEAD + 256
#: The log type and the start of the message of the entry that replaces
#: trimmed log entries.
TRIM_LOG_TYPE = "message"
TRIM_MARKER = "[jobqueue] "
#: Room for that entry when choosing what to drop (checked after anyway).
_NOTICE_ROOM = 256


class Keys:
    """The keys of one queue under ``prefix`` (e.g. ``/jobqueue/prod``)."""

    def __init__(self, prefix: str) -> None:
        cleaned = prefix.strip().rstrip("/")
        if not cleaned.startswith("/") or "//" in cleaned:
            raise ValueError(f"etcd prefix {prefix!r} must be an absolute path like /jobqueue/NAME")
        self.root = cleaned.encode("utf-8") + b"/"
        self.version = self.root + b"version"
        self.leader = self.root + b"leader"
        self.serial = self.root + b"serial"
        self.settings = self.root + b"settings/"
        self.jobs = self.root + b"jobs/"
        self.archive = self.root + b"archive/"
        self.archive_time = self.root + b"archive-time/"
        self.corrupt = self.root + b"corrupt/"
        self.filters = self.root + b"filters/"
        # Moved by every removal of jobs never acknowledged; creations expect it unmoved.
        self.withdrawn = self.root + b"withdrawn"
        # Moved by every change of a setting or filter rule, which expects it unmoved.
        self.controls = self.root + b"controls"

    def job(self, job_id: int) -> bytes:
        return self.jobs + _padded(job_id)

    def archived(self, job_id: int) -> bytes:
        return self.archive + _padded(job_id)

    def archived_at(self, first_job_id: int) -> bytes:
        return self.archive_time + _padded(first_job_id)

    def set_aside(self, job_key: bytes) -> bytes:
        return self.corrupt + job_key[len(self.jobs) :]

    def setting(self, name: str) -> bytes:
        return self.settings + name.encode("utf-8")

    def filter_rule(self, uuid: str) -> bytes:
        return self.filters + uuid.encode("ascii")

    def job_id_in(self, key: bytes, under: bytes) -> int | None:
        """The id in ``<under><id>``; None for any other key."""
        if not key.startswith(under):
            return None
        tail = key[len(under) :]
        return int(tail) if tail.isdigit() and len(tail) < 20 else None

    def changed_job(self, key: bytes) -> int | None:
        """The job a change of ``key`` is about (live or archived); None for other keys."""
        for under in (self.jobs, self.archive):
            job_id = self.job_id_in(key, under)
            if job_id is not None:
                return job_id
        return None


def _padded(job_id: int) -> bytes:
    return b"%0*d" % (ID_WIDTH, job_id)


def op_cost(key: bytes, value: bytes = b"") -> int:
    """A generous estimate of the bytes one put (or delete, without value) adds to a request."""
    return len(key) + len(value) + _OP_OVERHEAD


def request_cost(
    puts: Mapping[bytes, bytes], deletes: Iterable[bytes] = (), compares: int = 1
) -> int:
    """A generous estimate of the bytes etcd counts for a transaction (its size limit)."""
    cost = sum(op_cost(key, value) for key, value in puts.items())
    cost += sum(op_cost(key) for key in deletes)
    return cost + compares * COMPARE_COST + REQUEST_MARGIN // 4


def too_large(job: Job, size: int, limit: int, what: str = "") -> StorageError:
    """The refusal of a job over ``limit``: StorageError with errno EFBIG; nothing is written."""
    return StorageError(
        f"Job {job.id} is too large for the etcd store{what}: {size} bytes, the limit is"
        f" {limit} bytes (the etcd servers' --max-request-bytes less {REQUEST_MARGIN});"
        " nothing was stored",
        errno.EFBIG,
    )


def fit_job(job: Job, limit: int) -> tuple[bytes, int]:
    """The stored form of ``job`` in at most ``limit`` bytes, and how many log entries it lost.

    The size rule: a job that fits is stored whole. A bigger one loses its
    oldest log entries (across opcodes, in serial order) until it fits, and
    one entry in their place says how many were dropped; it keeps the serial
    and time of the newest dropped entry, so serials still increase and a
    client that had seen that entry is not shown the notice again. The job
    object itself is not changed. Raises StorageError (EFBIG) when the job
    is too large even without any log entry: its opcodes and results alone
    exceed the limit, and nothing is written.
    """
    data = encode_job(job)
    if len(data) <= limit:
        return data, 0
    stored = job.to_dict()
    entries = [
        (index, position, entry)
        for index, op in enumerate(stored["ops"])
        for position, entry in enumerate(op["log"])
    ]
    need = len(data) - limit + _NOTICE_ROOM
    dropped = 0
    while True:
        freed = 0
        while dropped < len(entries) and freed < need:
            # Its bytes as encode_job writes them; the newline stands for its comma.
            freed += len(encode_compact(entries[dropped][2]))
            dropped += 1
        if dropped == 0:
            raise too_large(job, len(data), limit, " even without its log")
        data = encode_job(Job.from_dict(_trimmed(stored, entries, dropped, limit)))
        if len(data) <= limit:
            return data, dropped
        if dropped == len(entries):
            raise too_large(job, len(data), limit, " even without its log")
        need = len(data) - limit


def _trimmed(
    stored: dict[str, Any], entries: list[tuple[int, int, Any]], dropped: int, limit: int
) -> dict[str, Any]:
    """``stored`` without its first ``dropped`` log entries and with the notice in their place."""
    last_index, _, last_entry = entries[dropped - 1]
    gone: dict[int, int] = {}  # opcode index -> entries dropped from its start
    for index, _, _ in entries[:dropped]:
        gone[index] = gone.get(index, 0) + 1
    notice = [
        last_entry[0],
        last_entry[1],
        TRIM_LOG_TYPE,
        f"{TRIM_MARKER}{dropped} older log entries were dropped: the job is larger than"
        f" the etcd store's limit of {limit} bytes",
    ]
    ops = []
    for index, op in enumerate(stored["ops"]):
        log = op["log"][gone.get(index, 0) :]
        if index == last_index:
            log = [notice, *log]
        ops.append({**op, "log": log})
    return {**stored, "ops": ops}
