from __future__ import annotations

import pytest

from archipel.models.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GiB", 16 * 2**30),
        ("500MB", 500 * 10**6),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("2g", 2 * 2**30),
        (1024, 1024),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


def test_bare_numbers_take_the_default_unit() -> None:
    assert parse_size(16, default_unit="gib") == 16 * 2**30
    assert parse_size("8", default_unit="gib") == 8 * 2**30


@pytest.mark.parametrize("bad", ["16 parsecs", "GiB", "-1GiB", "", True])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("1.5h", 5400), ("90", 90), ("250ms", 0.25), (2, 2)]
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30 fortnights", "soon", -5, False])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_format_size() -> None:
    assert format_size(16 * 2**30) == "16 GiB"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(12) == "12 B"
