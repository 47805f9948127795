"""Storage keys: the only names a backend ever turns into a path or an object name.

A key is ``segment/segment/...``; each segment uses ``[A-Za-z0-9._=+@-]``, does not start with a dot (dot-names
are reserved for a backend's own temporaries, and it rules out ``.`` and ``..``), and the whole key is at most
1024 characters. Everything an attacker could use to leave a site's root is outside that alphabet: ``/`` at the
start, ``\\``, ``%`` (so ``%2e%2e%2f`` and ``%252e`` never decode into anything), ``;``, ``#``, ``?``, ``:``,
whitespace, control characters and NUL. Validation is a pure function, so every backend refuses the same keys.
"""

from __future__ import annotations

import re

from archipel.errors import SpecError

__all__ = ["MAX_KEY_LENGTH", "validate_key", "validate_prefix"]

MAX_KEY_LENGTH = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_=+@-][A-Za-z0-9._=+@-]*")


def _refuse(key: object, why: str) -> SpecError:
    shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "...'"
    return SpecError(f"invalid storage key {shown}: {why}")


def _check_segments(key: str, segments: list[str]) -> None:
    for segment in segments:
        if segment == "":
            raise _refuse(key, "empty path segment ('//', leading or trailing '/')")
        if segment in (".", ".."):
            raise _refuse(key, f"'{segment}' segments are not allowed")
        if segment.startswith("."):
            raise _refuse(key, "segments may not start with '.' (reserved for the backend's temporaries)")
        if not _SEGMENT.fullmatch(segment):
            bad = sorted({ch for ch in segment if not re.fullmatch(r"[A-Za-z0-9._=+@-]", ch)})
            raise _refuse(
                key, f"characters {''.join(bad)!r} are not allowed; use letters, digits and . _ = + @ -"
            )


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key; raise :class:`SpecError` saying why not."""
    if not isinstance(key, str):
        raise _refuse(key, f"must be a string, not {type(key).__name__}")
    if not key:
        raise _refuse(key, "must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise _refuse(key, f"longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise _refuse(key, "absolute keys are not allowed")
    _check_segments(key, key.split("/"))
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, a key, a key ending in ``/``, or a key's partial last segment."""
    if not isinstance(prefix, str):
        raise _refuse(prefix, f"prefix must be a string, not {type(prefix).__name__}")
    if prefix == "":
        return prefix
    if prefix.startswith("/"):
        raise _refuse(prefix, "absolute prefixes are not allowed")
    if len(prefix) > MAX_KEY_LENGTH:
        raise _refuse(prefix, f"longer than {MAX_KEY_LENGTH} characters")
    body = prefix[:-1] if prefix.endswith("/") else prefix
    _check_segments(prefix, body.split("/"))
    return prefix
