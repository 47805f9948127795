"""The one strict pydantic base every user-written model derives from."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

from archipel.models.units import parse_duration, parse_size

__all__ = ["Bytes", "GiB", "Name", "Seconds", "StrictModel"]


class StrictModel(BaseModel):
    """Frozen, unknown keys refused, field docs become the JSON schema's descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        str_strip_whitespace=True,
        use_attribute_docstrings=True,
    )


_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return value


def _to_bytes(value: Any) -> Any:
    return parse_size(value) if isinstance(value, str | int | float) else value


def _gib_to_bytes(value: Any) -> Any:
    return parse_size(value, default_unit="gib") if isinstance(value, str | int | float) else value


def _to_seconds(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str | int | float) else value


Name = Annotated[
    str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": _NAME.pattern})
]
"""A resource name: lowercase letters, digits and '-' (like a DNS label)."""

SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*([BbKkMmGgTt]|[KkMmGgTt][Bb]|[KkMmGgTt][Ii][Bb])?\s*$"
"""What :func:`archipel.models.units.parse_size` reads, for JSON Schema readers (units in any case)."""
DURATION_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*([Mm][Ss]|[Ss]|[Mm]|[Mm][Ii][Nn]|[Hh]|[Dd])?\s*$"
"""What :func:`archipel.models.units.parse_duration` reads."""


def number_or_text(pattern: str, what: str) -> WithJsonSchema:
    """The JSON schema of a field that takes a number or a string with a unit (``what`` says which)."""
    return WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": pattern}],
                           "description": what})  # fmt: skip


Bytes = Annotated[
    int, BeforeValidator(_to_bytes), number_or_text(SIZE_PATTERN, "A size: '16GiB', '500MB' or bytes.")
]
"""A size: ``'16GiB'``, ``'500MB'`` or a number of bytes."""


def _bytes_text(value: int) -> str:
    """Bytes as a size string that parses back to the same number whatever the field's default unit."""
    return f"{value // 2**30}GiB" if value % 2**30 == 0 else f"{value}B"


GiB = Annotated[
    int, BeforeValidator(_gib_to_bytes), PlainSerializer(_bytes_text, when_used="json"),
    number_or_text(SIZE_PATTERN, "A size: '16GiB', '512MiB' or a number of GiB."),
]  # fmt: skip
"""A memory size: ``'16GiB'`` or a bare number of GiB; stored in bytes."""

Seconds = Annotated[
    float,
    BeforeValidator(_to_seconds),
    number_or_text(DURATION_PATTERN, "A duration: '30m', '2h' or seconds."),
]
"""A duration: ``'30m'``, ``'2h'`` or a number of seconds."""
