"""Parse ages such as ``90s``, ``30m``, ``6h``, ``2d``, ``1w`` or ``3600``."""

from __future__ import annotations

#: Seconds per unit suffix.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The word that means "every finished job, whatever its age".
ALL = "all"
#: The age AutoArchiveJobs takes for ``all``.
AGE_ALL = -1


def parse_timespec(text: str) -> int:
    """Return the number of seconds ``text`` denotes.

    ``text`` is a non-negative integer, optionally followed by one unit
    letter (s, m, h, d or w); a plain number means seconds. Raises
    ValueError for anything else.
    """
    spec = text.strip().lower()
    multiplier = 1
    if spec and spec[-1] in UNITS:
        multiplier = UNITS[spec[-1]]
        spec = spec[:-1]
    if not spec.isdigit() or not spec.isascii():
        raise ValueError(
            f"Invalid time specification '{text}': use a number of seconds,"
            " or a number followed by s, m, h, d or w"
        )
    return int(spec) * multiplier


def parse_age(text: str) -> int:
    """Like ``parse_timespec``, but ``all`` gives ``AGE_ALL`` (-1)."""
    if text.strip().lower() == ALL:
        return AGE_ALL
    return parse_timespec(text)
