"""The files of new jobs, durable before any of their ids is returned (``doc/storage.rst``).

One job: one write of the ``JobFileWriter`` puts its file in place and syncs
the directory. A batch: its files are written either by up to
``BATCH_WRITERS`` threads, each syncing its own file (parallel syncs share
the device's flushes), or, where the writer can, one after the other and all
made durable by one sync of the file system (``JobFileWriter.create_many``);
then the directory is synced once for the whole batch. A job whose file
could not be made durable is refused, and no file of it is left.

Where batches are made durable by one sync, concurrent calls are combined
(``groupcommit``): jobs submitted while other new files are being written
are written together next, as one batch, so that many clients each
submitting one job share the syncs as one client submitting them all would.

Thread safety: batches may be created concurrently (of different jobs);
``_lock`` guards the start and the stop of the writer threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from collections.abc import Callable, Sequence

from jobqueue.errors import StorageError
from jobqueue.model import Job
from jobqueue.storage import layout
from jobqueue.storage.base import encode_job
from jobqueue.storage.filedisk import storage_error, unlink_quietly
from jobqueue.storage.groupcommit import GroupCommit
from jobqueue.storage.jobwriter import DirectoryNotSynced, JobFileWriter
from jobqueue.storage.startrecords import JobVersions

#: A new job and its encoded file.
_File = tuple[Job, bytes]
#: Threads writing one batch of job files in parallel: a single thread waits
#: for one journal commit per file, many share them (about 6x here).
BATCH_WRITERS = 16


class NewJobFiles:
    """Writes the files of new jobs; see the module docstring.

    ``writer`` gives the store's job-file writer (started on first use);
    ``versions`` learns each new file's write serial, or forgets it again.
    """

    def __init__(
        self, queue_dir: str, writer: Callable[[], JobFileWriter], versions: JobVersions
    ) -> None:
        self._queue_dir = queue_dir
        self._writer = writer
        self._versions = versions
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._grouped = GroupCommit(self._create_now)

    def create(self, jobs: Sequence[Job]) -> list[StorageError | None]:
        """Write the jobs' files durably; None or the StorageError that refuses each job.

        The files are encoded here, by the caller, before any group commit:
        the group's leader only writes. A job that cannot be encoded is
        refused alone.
        """
        results: list[StorageError | None] = [None] * len(jobs)
        files: list[_File] = []
        for index, job in enumerate(jobs):
            try:
                files.append((job, encode_job(job, 1)))
            except StorageError as err:
                results[index] = err
        if not files:
            return results
        written = iter(
            self._grouped(files) if self._writer().syncs_batches else self._create_now(files)
        )
        return [next(written) if result is None else result for result in results]

    def _create_now(self, files: Sequence[_File]) -> list[StorageError | None]:
        if len(files) == 1:  # the write syncs the directory itself
            return [self._create_one(*files[0], sync_dir=True)]
        writer = self._writer()
        # From two files up, one sync of the file system costs less CPU and time
        # than a sync per file (``doc/performance.rst``, "Group commit").
        if writer.syncs_batches:
            results = self._create_with_one_sync(writer, files)
        else:
            results = self._create_in_parallel(writer, files)
        written = [
            job.id for (job, _), failure in zip(files, results, strict=True) if failure is None
        ]
        if written:
            try:
                writer.sync_directory()
            except OSError as err:
                failure = storage_error(f"Cannot sync {self._queue_dir}", err)
                for job_id in written:  # not durable, so never acknowledge them
                    unlink_quietly(self._path(job_id))
                    self._versions.forget(job_id)
                return [failure if res is None else res for res in results]
        return results

    def close(self) -> None:
        """Stop the writer threads (a later batch starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _path(self, job_id: int) -> str:
        return os.path.join(self._queue_dir, layout.job_file_name(job_id))

    def _create_one(self, job: Job, data: bytes, sync_dir: bool = False) -> StorageError | None:
        try:
            self._writer().create(layout.job_file_name(job.id), data, sync_dir=sync_dir)
        except DirectoryNotSynced as err:
            return storage_error(f"Cannot sync {self._queue_dir}", err)
        except OSError as err:
            return storage_error(f"Cannot write {self._path(job.id)}", err)
        self._versions.loaded(job.id, 1)
        return None

    def _create_with_one_sync(
        self, writer: JobFileWriter, files: Sequence[_File]
    ) -> list[StorageError | None]:
        """Write the jobs' files, all made durable by one file-system sync."""
        failures = writer.create_many([(layout.job_file_name(job.id), data) for job, data in files])
        results: list[StorageError | None] = []
        for (job, _), failure in zip(files, failures, strict=True):
            if failure is None:
                self._versions.loaded(job.id, 1)
                results.append(None)
            else:
                results.append(storage_error(f"Cannot write {self._path(job.id)}", failure))
        return results

    def _create_in_parallel(
        self, writer: JobFileWriter, files: Sequence[_File]
    ) -> list[StorageError | None]:
        """``_create_one`` for each job, on up to ``BATCH_WRITERS`` threads.

        Each thread takes the next job until none is left: one task per
        thread, not one per job (a future per job was a tenth of a batch
        submission's Python). Raises what a write raised other than its
        StorageError, once every thread has stopped.
        """
        results: list[StorageError | None] = [None] * len(files)
        pending = collections.deque(enumerate(files))
        writer.ready_spares(len(files))

        def drain() -> None:
            while True:
                try:
                    index, (job, data) = pending.popleft()
                except IndexError:
                    return
                results[index] = self._create_one(job, data)

        pool = self._writer_threads()
        tasks = [pool.submit(drain) for _ in range(min(BATCH_WRITERS, len(files)))]
        for task in tasks:
            task.exception()  # waits
        for task in tasks:
            task.result()  # raises the first failure
        return results

    def _writer_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that write the files of one batch in parallel (started on first use)."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=BATCH_WRITERS, thread_name_prefix="job-writer"
                )
            return self._pool
