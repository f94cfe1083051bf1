"""The names of the file store's queue directory, in one place (see ``doc/storage.rst``)::

    job-N                 one live job, JSON
    output/N/             the command output of live job N (see ``fileoutput``)
    archive/<N//10000>/   archived jobs, job-N each, and output-N beside it
    corrupt/              job files that could not be loaded, moved aside at load
    serial version drain  the id reservation, the format version, the drain flag
    filters/<uuid>        one job filter rule each, JSON
    lock                  flock'ed by the daemon that owns the queue
    watcher_pause, max_running_jobs  named settings (one line of text; ``base.SETTINGS``)
    .<name>.<pid>.<n>.tmp a write in progress (removed at start)
    .spare-<n>            a spare file: scratch space for the next write (reused at start)
    .start-<n>            a start file: an opcode's start, newer than its job-N (``startrecords``)

Only the file store's modules (``files`` and the ``file*`` helpers it owns) use these.
"""

from __future__ import annotations

import re
from typing import Final

ARCHIVE_DIR: Final = "archive"
CORRUPT_DIR: Final = "corrupt"
SERIAL_FILE: Final = "serial"
VERSION_FILE: Final = "version"
DRAIN_FILE: Final = "drain"
FILTERS_DIR: Final = "filters"
LOCK_FILE: Final = "lock"
TEMP_SUFFIX: Final = ".tmp"
JOB_FILE_PREFIX: Final = "job-"
SPARE_PREFIX: Final = ".spare-"
START_PREFIX: Final = ".start-"
OUTPUT_DIR: Final = "output"
ARCHIVED_OUTPUT_PREFIX: Final = "output-"
JOBS_PER_ARCHIVE_DIR: Final = 10_000

# Canonical names only: job-0 and job-007 name no job (they are moved aside at load).
_JOB_NAME = re.compile(re.escape(JOB_FILE_PREFIX) + r"([1-9][0-9]*)")
_JOB_LIKE = re.compile(re.escape(JOB_FILE_PREFIX) + r"[0-9]+")
_SPARE_NAME = re.compile(re.escape(SPARE_PREFIX) + r"([0-9]+)")
_START_NAME = re.compile(re.escape(START_PREFIX) + r"([0-9]+)")
_OUTPUT_NAME = re.compile(re.escape(ARCHIVED_OUTPUT_PREFIX) + r"([1-9][0-9]*)")


def _number_in(pattern: re.Pattern[str], name: str) -> int | None:
    """The number ``pattern`` (one group of digits) finds in the whole ``name``, else None."""
    match = pattern.fullmatch(name)
    return None if match is None else int(match.group(1))


def job_file_name(job_id: int) -> str:
    """``job-N``."""
    return f"{JOB_FILE_PREFIX}{job_id}"


def job_id_of(name: str) -> int | None:
    """The id in a ``job-N`` name (N a positive decimal without leading zeros), else None."""
    return _number_in(_JOB_NAME, name)


def looks_like_job(name: str) -> bool:
    """Whether ``name`` is ``job-<digits>``, canonical or not (``job-007`` is, ``job-x`` not)."""
    return _JOB_LIKE.fullmatch(name) is not None


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_filter_name(name: str) -> bool:
    """Whether ``name`` is the file name of a filter rule (its canonical UUID)."""
    return _UUID.fullmatch(name) is not None


def archive_subdir(job_id: int) -> str:
    """The archive sub-directory name that holds ``job_id``."""
    return str(job_id // JOBS_PER_ARCHIVE_DIR)


def setting_file_name(name: str) -> str:
    """The file of a named setting: its name, in the queue directory."""
    return name


def temp_file_name(name: str, pid: int, number: int) -> str:
    """``.<name>.<pid>.<n>.tmp``: the temporary file of one write of ``name``."""
    return f".{name}.{pid}.{number}{TEMP_SUFFIX}"


def spare_file_name(number: int) -> str:
    """``.spare-<n>``."""
    return f"{SPARE_PREFIX}{number}"


def spare_number_of(name: str) -> int | None:
    """The number in a ``.spare-<n>`` name, None for any other name."""
    return _number_in(_SPARE_NAME, name)


def is_spare_name(name: str) -> bool:
    """Whether ``name`` is a spare file's."""
    return spare_number_of(name) is not None


def start_file_name(number: int) -> str:
    """``.start-<n>``."""
    return f"{START_PREFIX}{number}"


def start_number_of(name: str) -> int | None:
    """The number in a ``.start-<n>`` name, None for any other name."""
    return _number_in(_START_NAME, name)


def is_start_name(name: str) -> bool:
    """Whether ``name`` is a start file's."""
    return start_number_of(name) is not None


def output_dir_name(job_id: int) -> str:
    """``output-N``: an archived job's output directory, beside its ``job-N``."""
    return f"{ARCHIVED_OUTPUT_PREFIX}{job_id}"


def output_job_id(name: str) -> int | None:
    """The id in an ``output-N`` name, None for any other name."""
    return _number_in(_OUTPUT_NAME, name)
