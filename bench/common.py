"""What every section shares: result rows, run settings, work directories, statistics.

A section is a function ``(Context) -> Iterator[Row]``. It yields rows as it
measures them, so a failure half-way keeps what was measured before it. It
stores the figures other sections compare against in ``Context.values``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: Scratch space on the same file system as a checkout's state directory;
#: ignored by git.
WORK_ROOT = BENCH_DIR / ".work"
#: Unix socket paths longer than this do not fit ``sockaddr_un`` on Linux.
MAX_SOCKET_PATH = 100


@dataclasses.dataclass
class Row:
    """One line of the result table.

    ``skipped`` holds the reason when the figure could not be measured; the
    table then prints the reason instead of the value columns.
    """

    section: str
    metric: str
    value: float | None = None
    unit: str = ""
    compared_with: str = ""
    ratio: float | None = None
    target: str = ""
    verdict: str = "-"
    skipped: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the row as plain JSON-ready data."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Counts and durations of one run; ``quick`` and ``full`` are the two presets."""

    mode: str
    disk_seconds: float
    disk_threads: tuple[int, ...]
    submit_single_jobs: int
    submit_batches: int
    submit_seconds: float
    submit_batch_size: int
    submit_clients: int
    e2e_jobs: int
    e2e_workers: tuple[int, ...]
    e2e_repeats: int
    peer_timeout: float
    watch_changes: int
    watch_interval: float
    watch_waiters: int
    scale_counts: tuple[int, ...]
    latency_levels: tuple[int, ...]
    latency_samples: int
    cli_runs: int
    ha_failovers: int
    daemon_workers: int = 25
    #: The masters' lease in the failover figure (``bench.ha``); the promise
    #: is a takeover within this plus 2 s.
    ha_lease_ttl: int = 5

    def more_runs_fit(self, first_run_seconds: float) -> bool:
        """Whether a figure runs again after a first run this long.

        A slow first run (over a quarter of ``peer_timeout``) says enough
        on its own and keeps the whole bench in budget.
        """
        return first_run_seconds < self.peer_timeout / 4

    @classmethod
    def quick(cls) -> Settings:
        """Small counts: the whole run stays well under five minutes."""
        return cls(
            mode="quick",
            disk_seconds=3.0,
            disk_threads=(1, 16),
            submit_single_jobs=400,
            submit_batches=10,
            submit_seconds=5.0,
            submit_batch_size=100,
            submit_clients=16,
            e2e_jobs=500,
            e2e_workers=(2, 25),
            e2e_repeats=3,
            peer_timeout=120.0,
            watch_changes=200,
            watch_interval=0.005,
            watch_waiters=100,
            scale_counts=(10_000,),
            latency_levels=(0, 10_000),
            latency_samples=100,
            cli_runs=10,
            ha_failovers=5,
        )

    @classmethod
    def full(cls) -> Settings:
        """The issue's numbers: the whole run stays under twenty minutes."""
        return cls(
            mode="full",
            disk_seconds=8.0,
            disk_threads=(1, 16),
            submit_single_jobs=2_000,
            submit_batches=30,
            submit_seconds=15.0,
            submit_batch_size=100,
            submit_clients=16,
            e2e_jobs=2_000,
            e2e_workers=(2, 25),
            e2e_repeats=3,
            peer_timeout=300.0,
            watch_changes=1_000,
            watch_interval=0.005,
            watch_waiters=500,
            scale_counts=(10_000, 100_000),
            latency_levels=(0, 10_000, 50_000, 100_000),
            latency_samples=200,
            cli_runs=20,
            ha_failovers=20,
        )


@dataclasses.dataclass
class Context:
    """State handed to every section: the settings and figures measured so far."""

    settings: Settings
    work_root: Path = WORK_ROOT
    values: dict[str, float] = dataclasses.field(default_factory=dict)

    def scratch_dir(self, prefix: str) -> ScratchDir:
        """Return a fresh scratch directory, removed when the ``with`` block ends."""
        return ScratchDir(self.work_root, prefix)


class ScratchDir:
    """A temporary directory under the work root, short enough for a Unix socket.

    Falls back to the system temporary directory when the work root's path is
    too long to hold ``<dir>/state/run/master.sock``.
    """

    def __init__(self, root: Path, prefix: str) -> None:
        self._root = root
        self._prefix = prefix
        self.path = Path()

    def __enter__(self) -> Path:
        self._root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._root))
        if len(str(self.path)) + len("/state/run/master.sock") > MAX_SOCKET_PATH:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = Path(tempfile.mkdtemp(prefix=self._prefix))
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (0..1) of ``samples``, nearest-rank.

    Raises ValueError on an empty sequence.
    """
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    """Return the median of ``samples`` (mean of the middle two for even counts)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def compare(
    row: Row,
    reference: float | None,
    label: str,
    minimum: float | None = None,
    strictly: bool = False,
) -> Row:
    """Fill in the comparison columns of ``row`` against ``reference``.

    With ``minimum``, the verdict is PASS when ``value / reference >= minimum``
    (``>`` when ``strictly``). A missing reference leaves the ratio empty and
    the verdict ``-``.
    """
    if minimum is not None:
        row.target = f"ratio {'>' if strictly else '>='} {minimum:g}"
    if reference is None or row.value is None:
        row.compared_with = f"{label}: not measured"
        return row
    row.compared_with = f"{label} ({format_number(reference)})"
    row.ratio = row.value / reference if reference else math.inf
    if minimum is not None:
        passed = row.ratio > minimum if strictly else row.ratio >= minimum
        row.verdict = "PASS" if passed else "MISS"
    return row


def compare_ratio_max(row: Row, reference: float | None, label: str, maximum: float) -> Row:
    """Fill in the comparison columns; PASS when ``value / reference <= maximum``."""
    row.target = f"ratio <= {maximum:g}"
    if reference is None or row.value is None:
        row.compared_with = f"{label}: not measured"
        return row
    row.compared_with = f"{label} ({format_number(reference)})"
    row.ratio = row.value / reference if reference else math.inf
    row.verdict = "PASS" if row.ratio <= maximum else "MISS"
    return row


def at_most(row: Row, limit: float) -> Row:
    """Set an absolute target on ``row``: PASS when its value is at most ``limit``."""
    row.target = f"<= {format_number(limit)} {row.unit}".rstrip()
    if row.value is not None:
        row.verdict = "PASS" if row.value <= limit else "MISS"
    return row


def format_number(value: float) -> str:
    """Format a figure with about four significant digits, no exponent below 1e9."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.4g}"
    return f"{value:.3g}"


def skipped(section: str, reason: str, metric: str = "") -> Row:
    """Return the row that stands for a figure (or a section) not measured."""
    return Row(section=section, metric=metric, skipped=reason)


def latency_rows(
    section: str, name: str, seconds: Sequence[float], detail: dict[str, Any] | None = None
) -> Iterator[Row]:
    """Yield p50 and p99 rows (in milliseconds) for a list of latencies in seconds."""
    for label, fraction in (("p50", 0.50), ("p99", 0.99)):
        yield Row(
            section=section,
            metric=f"{name} {label}",
            value=percentile(seconds, fraction) * 1000,
            unit="ms",
            detail=dict(detail or {}, samples=len(seconds)),
        )


def cpu_count() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
