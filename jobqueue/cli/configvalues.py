"""``QueryConfigValues`` from a daemon of any version jobctl may meet.

A daemon refuses the whole call when one field is unknown to it. The
fields added since the first daemons come in generations
(``NEWER_FIELDS``, oldest first); when a call is refused, it is asked
again without the newest generation, then without the next, and so on,
and the fields left out read as None. So a newer jobctl still works while
an older daemon runs (between an upgrade and its restart, say), and gets
every field that daemon knows.
"""

from __future__ import annotations

from jobqueue.errors import OpPrereqError

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jobqueue.luxi.client import Client

#: Fields the first daemons did not answer, by the generation that added them.
NEWER_FIELDS: tuple[frozenset[str], ...] = (
    frozenset({"busy_workers"}),
    frozenset({"live_opcodes", "max_opcodes", "live_opcode_bytes", "max_opcode_bytes"}),
)


def config_values(client: Client, names: list[str]) -> dict[str, Any]:
    """The named values; those of ``NEWER_FIELDS`` None if the daemon does not know them.

    ``OpPrereqError`` for any other field the daemon does not know.
    """
    left_out: set[str] = set()
    generations = list(NEWER_FIELDS)
    while True:
        asked = [name for name in names if name not in left_out]
        try:
            values = dict(zip(asked, client.query_config_values(asked), strict=True))
        except OpPrereqError:
            newer = set(names) - left_out
            while generations and not (newer & generations[-1]):
                generations.pop()
            if not generations:
                raise
            left_out |= generations.pop()
            continue
        return {name: values.get(name) for name in names}
