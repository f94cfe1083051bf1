"""Shared parts of the soak tests: the bounded/long switch, the report, the seed."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Any

#: ``JOBQUEUE_SOAK=long`` selects the long variants (``make soak``).
SOAK_ENV = "JOBQUEUE_SOAK"
SEED_ENV = "JOBQUEUE_SOAK_SEED"

COLUMNS = (
    "test",
    "seed",
    "rounds",
    "jobs",
    "kills",
    "faults",
    "malformed",
    "jobs lost",
    "corrupt files",
    "fd drift",
    "thread drift",
    "rss peak MiB",
    "p99 ms",
    "log KiB",
    "seconds",
)


def is_long() -> bool:
    return os.environ.get(SOAK_ENV, "").strip().lower() == "long"


def pick(bounded: Any, long: Any) -> Any:
    """The bounded or the long value of a knob, as ``JOBQUEUE_SOAK`` says."""
    return long if is_long() else bounded


def soak_timeout() -> int:
    """Seconds a soak test may take (pytest-timeout), bounded or long."""
    return int(pick(150, 3600))


def seeded_rng(name: str) -> tuple[int, random.Random]:
    """A seed (``JOBQUEUE_SOAK_SEED`` or a fresh one), printed, and its generator."""
    text = os.environ.get(SEED_ENV)
    seed = int(text) if text else random.SystemRandom().randrange(2**32)
    print(f"\n{name}: seed {seed} (rerun with {SEED_ENV}={seed})")
    return seed, random.Random(seed)


@dataclasses.dataclass
class SoakReport:
    """One row of counters per soak test."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def mode(self) -> str:
        return "long" if is_long() else "bounded"

    def record(self, tmp_path: Path, started: float, **row: Any) -> None:
        """Add a row (elapsed seconds since ``started`` added) and write the table so far."""
        row["seconds"] = round(time.monotonic() - started, 1)
        self.rows.append(row)
        (tmp_path / "soak-summary.txt").write_text(self.table() + "\n")
        print(f"\n{self.table()}")

    def table(self) -> str:
        cells = [[str(row.get(column, "-")) for column in COLUMNS] for row in self.rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
        lines = [
            " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)),
            "-+-".join("-" * w for w in widths),
        ]
        lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
        return "\n".join(lines)
