"""Reading a daemon's queue directory straight from disk, for invariant checks.

Job files are replaced atomically, so reading them while the daemon runs
sees whole versions; these helpers fail with the offending file named.
"""

from __future__ import annotations

import os
from pathlib import Path

from jobqueue.errors import JobFileCorrupted
from jobqueue.model import Job
from jobqueue.storage import layout
from jobqueue.storage.base import decode_job


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


def read_job(path: Path) -> Job:
    """Parse one job file; AssertionError naming it if it is not a well-formed job."""
    try:
        job = decode_job(path.read_bytes())
    except JobFileCorrupted as err:
        raise AssertionError(f"{path} is corrupt: {err}") from err
    assert f"{layout.JOB_FILE_PREFIX}{job.id}" == path.name, f"{path} holds job {job.id}"
    return job


def load_jobs(queue_dir: Path) -> dict[int, Job]:
    """Parse every job file (see ``job_paths``); fail on the first bad one."""
    return {job_id: read_job(path) for job_id, path in job_paths(queue_dir).items()}


def file_bytes(queue_dir: Path) -> dict[str, bytes]:
    """Content of every regular file under the queue dir by relative path, but the lock
    and the spare files (scratch space of the writes, whose content means nothing)."""
    contents: dict[str, bytes] = {}
    for root, _dirs, names in os.walk(queue_dir):
        for name in names:
            path = Path(root, name)
            relative = str(path.relative_to(queue_dir))
            if relative != layout.LOCK_FILE and not layout.is_spare_name(name):
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
