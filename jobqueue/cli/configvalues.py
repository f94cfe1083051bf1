"""``QueryConfigValues`` from a daemon of any version jobctl may meet.

A daemon refuses the whole call when one field is unknown to it; a field
added since (``NEWER_FIELDS``) is then asked for again without, and reads
as None, so that a newer jobctl still works while an older daemon runs
(between an upgrade and its restart, say).
"""

from __future__ import annotations

from jobqueue.errors import OpPrereqError

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jobqueue.luxi.client import Client

#: Fields the first daemons did not answer.
NEWER_FIELDS = frozenset(
    {"busy_workers", "live_opcodes", "max_opcodes", "live_opcode_bytes", "max_opcode_bytes"}
)


def config_values(client: Client, names: list[str]) -> dict[str, Any]:
    """The named values; those in ``NEWER_FIELDS`` None if the daemon does not know them.

    ``OpPrereqError`` for any other field the daemon does not know.
    """
    try:
        return dict(zip(names, client.query_config_values(names), strict=True))
    except OpPrereqError:
        known = [name for name in names if name not in NEWER_FIELDS]
        if len(known) == len(names):
            raise
        values = dict(zip(known, client.query_config_values(known), strict=True))
        return {name: values.get(name) for name in names}
