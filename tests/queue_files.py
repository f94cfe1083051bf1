"""Reading a daemon's queue directory straight from disk, for invariant checks.

Job files are replaced atomically, so reading them while the daemon runs
sees whole versions; these helpers fail with the offending file named. A
live job's newest version may be a start record (``startrecords``): the
helpers read those too, as ``doc/storage.rst`` tells a reader to.
"""

from __future__ import annotations

import os
from pathlib import Path

from jobqueue.errors import JobFileCorrupted
from jobqueue.model import Job
from jobqueue.storage import layout, startrecords
from jobqueue.storage.base import decode_job_and_serial

#: Per job, the write serial and version of its newest start record.
Records = dict[int, tuple[int, bytes]]


def job_paths(queue_dir: Path) -> dict[int, Path]:
    """Every job file, live (``job-N``) and archived (``archive/K/job-N``), by id.

    Fails if one id has files in two places.
    """
    found: dict[int, Path] = {}
    candidates = list(queue_dir.glob("job-*")) + list(queue_dir.glob("archive/*/job-*"))
    for path in candidates:
        job_id = layout.job_id_of(path.name)
        if job_id is None:
            continue
        assert job_id not in found, f"job {job_id} is both in {found[job_id]} and {path}"
        found[job_id] = path
    return found


def start_records(queue_dir: Path) -> Records:
    """The start records of a queue directory, the newest per job."""
    found = startrecords.read_records(str(queue_dir))
    records = startrecords.newest_records(found).items()
    return {job_id: (record.serial, record.version) for job_id, record in records}


def read_job(path: Path, records: Records | None = None) -> Job:
    """Parse one job file; AssertionError naming it if it is not a well-formed job.

    A live job's start record is taken instead where it is newer (``records``:
    those of its directory, read now if not given).
    """
    try:
        job, write_serial = decode_job_and_serial(path.read_bytes())
        if path.parent.parent.name != layout.ARCHIVE_DIR:
            records = start_records(path.parent) if records is None else records
            job = startrecords.newer_of(job, write_serial, records.get(job.id))[0]
    except JobFileCorrupted as err:
        raise AssertionError(f"{path} is corrupt: {err}") from err
    assert f"{layout.JOB_FILE_PREFIX}{job.id}" == path.name, f"{path} holds job {job.id}"
    return job


def load_jobs(queue_dir: Path) -> dict[int, Job]:
    """Parse every job file (see ``job_paths``); fail on the first bad one."""
    records = start_records(queue_dir)
    return {job_id: read_job(path, records) for job_id, path in job_paths(queue_dir).items()}


def file_bytes(queue_dir: Path) -> dict[str, bytes]:
    """Content of every regular file under the queue dir by relative path, but the lock,
    the spare files (scratch space of the writes, whose content means nothing) and the
    start files (which ``load_jobs`` reads with the job files)."""
    contents: dict[str, bytes] = {}
    for root, _dirs, names in os.walk(queue_dir):
        for name in names:
            path = Path(root, name)
            relative = str(path.relative_to(queue_dir))
            scratch = layout.is_spare_name(name) or layout.is_start_name(name)
            if relative != layout.LOCK_FILE and not scratch:
                contents[relative] = path.read_bytes()
    return contents


def temp_files(queue_dir: Path) -> list[str]:
    """Leftover temporary files of interrupted or failed writes."""
    return sorted(
        str(path.relative_to(queue_dir)) for path in queue_dir.rglob(f"*{layout.TEMP_SUFFIX}")
    )


def corrupt_files(queue_dir: Path) -> list[str]:
    """Names of the files the daemon moved aside as unparseable."""
    corrupt = queue_dir / layout.CORRUPT_DIR
    return sorted(os.listdir(corrupt)) if corrupt.is_dir() else []


def set_fault(control: Path, text: str) -> None:
    """Replace the fault control file atomically (``FaultyDisk`` reads it)."""
    temp = control.with_name(control.name + ".new")
    temp.write_text(text + "\n")
    os.replace(temp, control)


def clear_fault(control: Path) -> None:
    control.unlink(missing_ok=True)
