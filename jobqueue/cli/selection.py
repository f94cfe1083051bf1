"""Query filters that select jobs, built as Ganeti query-language lists.

``["=", "id", 1]`` compares a field, ``["|", a, b, ...]`` and
``["&", a, b, ...]`` combine filters; None means "every job".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from jobqueue.constants import FINALIZED, Status

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    Filter = list[Any] | None
    T = TypeVar("T")

#: Job statuses selected by the shorthand options of ``list``, ``cancel``, ...
QUEUED = (Status.QUEUED.value,)
WAITING = (Status.WAITING.value,)
PENDING = (Status.QUEUED.value, Status.WAITING.value)
RUNNING = (Status.RUNNING.value,)
ERROR = (Status.ERROR.value,)
FINISHED = tuple(status.value for status in Status if status in FINALIZED)


def any_of(field: str, values: Sequence[Any]) -> Filter:
    """``field`` equals one of ``values``; None when there are none."""
    if not values:
        return None
    return ["|", *(["=", field, value] for value in values)]


def all_of(*filters: Filter) -> Filter:
    """Every non-None filter must hold; None when none is given."""
    present = [item for item in filters if item is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return ["&", *present]


def unique(values: Iterable[T]) -> list[T]:
    """``values`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(values))


def job_filter(job_ids: Sequence[int], statuses: Sequence[str]) -> Filter:
    """Select jobs by id (any of them) and by status (any of them)."""
    return all_of(any_of("id", list(job_ids)), any_of("status", unique(statuses)))
