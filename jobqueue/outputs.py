"""Commands' raw output on its way to the store: the per-job budget and the cut marker.

``OutputRecorder`` is what a command's logical unit writes its stdout and
stderr to (``LUContext.output``). It appends every byte to the job's output
streams in the store (``JobStore.open_output``) until the job's output
reaches ``max_bytes`` (``jobqueue-masterd --max-output-size``), counted over
all opcodes and both streams. The rest is dropped, and each stream that
lost bytes gets ``CUT_MARKER`` once, where the cut was made. After each
write ``on_output(job_id)`` tells whoever follows the job's output
(``LiveJobs.output_grew``): the job record itself does not change.

The job's log entries (capped much lower, for watchers and Ganeti's tools)
are the logical unit's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Callable

from jobqueue import constants
from jobqueue.errors import StorageError
from jobqueue.storage.base import JobStore, OutputStream

#: Written to a stream where its output was cut; ``{limit}`` is the budget in bytes.
CUT_MARKER = "\n[jobqueue: output cut here: the job's output reached {limit} bytes]\n"


class OpcodeOutput:
    """The output streams of one opcode, opened on first use; one thread uses it.

    ``write`` raises ``StorageError`` when the store fails; the caller should
    stop writing then (and still ``close``).
    """

    def __init__(
        self,
        store: JobStore,
        job_id: int,
        op_index: int,
        *,
        budget: int,
        limit: int,
        on_output: Callable[[int], None],
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._op_index = op_index
        self._budget = budget
        self._limit = limit
        self._on_output = on_output
        self._streams: dict[str, OutputStream] = {}
        self._cut: set[str] = set()

    @property
    def cut(self) -> bool:
        """Whether output of this opcode was dropped for the budget."""
        return bool(self._cut)

    def write(self, stream: str, data: bytes) -> None:
        """Append ``data`` to ``stream`` as far as the budget goes; the marker once after.

        With a limit of 0 nothing is kept, not even the marker.
        """
        if not data or self._limit <= 0:
            return
        kept = data[: max(self._budget, 0)]
        self._budget -= len(kept)
        appended = kept
        if len(kept) < len(data) and stream not in self._cut:
            self._cut.add(stream)
            appended += CUT_MARKER.format(limit=self._limit).encode()
        if appended:
            self._open(stream).append(appended)
            self._on_output(self._job_id)

    def _open(self, stream: str) -> OutputStream:
        opened = self._streams.get(stream)
        if opened is None:
            opened = self._streams[stream] = self._store.open_output(
                self._job_id, self._op_index, stream
            )
        return opened

    def close(self) -> None:
        """Close every stream (all of them, even if one fails); the first failure is raised."""
        streams, self._streams = list(self._streams.values()), {}
        failure: StorageError | None = None
        for stream in streams:
            try:
                stream.close()
            except StorageError as err:
                failure = failure or err
        if failure is not None:
            raise failure


class OutputRecorder:
    """Opens each command's output in ``store`` within the job's budget; see the module."""

    def __init__(
        self,
        store: JobStore,
        max_bytes: int = constants.DEFAULT_MAX_OUTPUT_SIZE,
        on_output: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._on_output = on_output or (lambda _job_id: None)

    def open(self, job_id: int, op_index: int) -> OpcodeOutput:
        """The output of opcode ``op_index``; what earlier opcodes kept counts against it.

        Raises ``StorageError`` when the store cannot say how much that was.
        """
        used = sum(self._store.output_sizes(job_id).values())
        return OpcodeOutput(
            self._store,
            job_id,
            op_index,
            budget=self._max_bytes - used,
            limit=self._max_bytes,
            on_output=self._on_output,
        )
