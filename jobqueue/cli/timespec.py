"""Parse ages (``90s``, ``6h``, ``all``), durations (``1.5h``, ``500ms``) and times (``08:00``)."""

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


#: Seconds per unit of a duration, which may also be fractional (``1.5h``).
DURATION_UNITS = {"ms": 0.001, **UNITS}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number, optionally followed by ms, s, m, h, d or w.

    ``90``, ``1.5s``, ``500ms``, ``30m``, ``2h``. Raises ValueError otherwise.
    """
    spec = text.strip().lower()
    for unit in sorted(DURATION_UNITS, key=len, reverse=True):
        if spec.endswith(unit):
            number, multiplier = spec[: -len(unit)], DURATION_UNITS[unit]
            break
    else:
        number, multiplier = spec, 1.0
    try:
        value = float(number) * multiplier
    except ValueError:
        value = -1.0
    if not number or not value >= 0 or value == float("inf"):
        raise ValueError(
            f"Invalid duration '{text}': use a number of seconds, or a number followed by"
            " ms, s, m, h, d or w (such as 90s, 1.5h)"
        )
    return value


def parse_time(text: str, now: float) -> float:
    """Seconds since the epoch of a time given as people write it.

    ``now``; ``@SECONDS`` since the epoch; ``HH:MM[:SS]`` (local time, today,
    or tomorrow if that has passed); ``YYYY-MM-DD[ HH:MM[:SS]]`` or ISO 8601
    (``2026-12-01T08:00:00+01:00``; local time without an offset). Raises
    ValueError otherwise.
    """
    import datetime

    spec = text.strip()
    if spec.lower() == "now":
        return now
    if spec.startswith("@"):
        try:
            return float(spec[1:])
        except ValueError:
            raise ValueError(f"Invalid time '{text}': expected @ and seconds") from None
    today = datetime.datetime.fromtimestamp(now)
    for layout in ("%H:%M", "%H:%M:%S"):
        try:
            clock = datetime.datetime.strptime(spec, layout).time()
        except ValueError:
            continue
        when = datetime.datetime.combine(today.date(), clock)
        if when.timestamp() < now:
            when += datetime.timedelta(days=1)
        return when.timestamp()
    try:
        return datetime.datetime.fromisoformat(spec).timestamp()
    except ValueError:
        raise ValueError(
            f"Invalid time '{text}': use HH:MM[:SS], YYYY-MM-DD HH:MM[:SS], ISO 8601,"
            " @SECONDS or now"
        ) from None
