"""Sizes and durations written as strings with units (``16GiB``, ``500MB``, ``30m``, ``1.5h``).

Plain numbers are accepted too: sizes in bytes unless the caller says the field is in GiB, durations in
seconds. Parsing is strict: an unknown unit is an error that lists the known ones.
"""

from __future__ import annotations

import re

__all__ = ["DURATION_UNITS", "SIZE_UNITS", "format_size", "parse_duration", "parse_size"]

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}
DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}

MAX_BYTES = 2**60
"""Sizes above this (1 EiB) are refused: a typo, not a plan (and float overflow beyond)."""
MAX_SECONDS = 1000 * 365.25 * 86400
"""Durations above this (1,000 years) are refused."""
_NUM_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: str | int | float, *, default_unit: str = "b") -> int:
    """Bytes in ``value``; a bare number is in ``default_unit`` (``"gib"`` for memory fields)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number or a string like '16GiB', not a boolean")
    if isinstance(value, int | float):
        number, unit = float(value), default_unit
    else:
        match = _NUM_UNIT.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size; write e.g. '16GiB', '500MB' or a number")
        number, unit = float(match.group(1)), (match.group(2) or default_unit)
    factor = SIZE_UNITS.get(unit.lower())
    if factor is None:
        known = ", ".join(u for u in SIZE_UNITS if len(u) > 1)
        raise ValueError(f"unknown size unit {unit!r} in {value!r}; known units: {known}")
    if number < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    if not number * factor < MAX_BYTES:  # (also NaN and infinity)
        raise ValueError(f"{value!r} is too large for a size (the limit is 1 EiB)")
    return round(number * factor)


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value`` (``30m``, ``1.5h``, ``90s``); a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number or a string like '30m', not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        if not value < MAX_SECONDS:
            raise ValueError(f"{value!r} is too long for a duration (the limit is 1,000 years)")
        return float(value)
    match = _NUM_UNIT.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration; write e.g. '30m', '2h' or a number of seconds")
    number, unit = float(match.group(1)), (match.group(2) or "s").lower()
    factor = DURATION_UNITS.get(unit)
    if factor is None:
        raise ValueError(
            f"unknown duration unit {unit!r} in {value!r}; known units: {', '.join(DURATION_UNITS)}"
        )
    if not number * factor < MAX_SECONDS:
        raise ValueError(f"{value!r} is too long for a duration (the limit is 1,000 years)")
    return number * factor


def format_size(n: float) -> str:
    """``17179869184`` -> ``16 GiB``: binary units, at most one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or float(n).is_integer() else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
