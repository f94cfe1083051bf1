"""QueryConfigValues: the fields every daemon answers alike, and the lookup by name.

The master (``settings.QueueSettings``) and a standby (``standby``) each
answer with a table of getters; both start from ``common_fields`` and
``held_fields`` and look names up with ``select``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jobqueue import __version__, constants
from jobqueue.errors import ECODE_INVAL, OpPrereqError
from jobqueue.livejobs import Limits, LiveJobs

Getter = Callable[[], Any]


def common_fields() -> dict[str, Getter]:
    """The fields whose values do not depend on the daemon's role or state."""
    return {
        "version": lambda: __version__,
        "luxi_version": lambda: constants.LUXI_VERSION,
        "queue_format_version": lambda: constants.QUEUE_FORMAT_VERSION,
    }


def held_fields(live: LiveJobs, limits: Limits) -> dict[str, Getter]:
    """What the live jobs hold, each beside its limit."""
    return {
        "live_jobs": live.count,
        "max_jobs": lambda: limits.jobs,
        "live_opcodes": live.opcode_count,
        "max_opcodes": lambda: limits.opcodes,
        "live_opcode_bytes": live.input_bytes,
        "max_opcode_bytes": lambda: limits.opcode_bytes,
    }


def select(fields: list[str], values: Mapping[str, Getter]) -> list[Any]:
    """The values of ``fields``, in order; ``OpPrereqError`` naming the unknown ones."""
    unknown = [name for name in fields if name not in values]
    if unknown:
        raise OpPrereqError(f"Unknown config fields: {', '.join(unknown)}", ECODE_INVAL)
    return [values[name]() for name in fields]
