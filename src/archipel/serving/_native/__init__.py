"""Compiled twins of the request path: ``http1.py`` and ``gateway.py`` compiled by Cython with the types in their
``.pxd`` files, and ``fastlane.pyx``, the gateway's request path in C for the common request.

``scripts/build_native.py`` builds them (``make dev``/``make test`` run it when a source changed; a wheel build runs
it through ``hatch_build.py``); each carries the SHA-256 of the sources it was built from. ``http1.py`` and
``gateway.py`` swap in their twin at import when it exists and was built from the sources beside it, so a stale
build is never used: without one (no compiler, ``ARCHIPEL_PURE_PYTHON=1``, sources edited since) the same code runs
as plain Python, with the same behaviour, only slower.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

SOURCES = ("http1.py", "http1.pxd", "gateway.py", "gateway.pxd", "fastlane.pyx")
"""What the twins are built from, in ``archipel/serving`` (fastlane.pyx: in this folder)."""

log = logging.getLogger("archipel.native")
_warned: set[str] = set()


def sources_sha256(serving: Path | None = None) -> str:
    """The SHA-256 over the sources' bytes, in :data:`SOURCES` order."""
    serving = serving or Path(__file__).parent.parent
    digest = hashlib.sha256()
    for name in SOURCES:
        path = serving / "_native" / name if name.endswith(".pyx") else serving / name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def load(name: str) -> ModuleType | None:
    """The compiled twin ``name`` if it is built from the sources here and ``ARCHIPEL_PURE_PYTHON`` is not set."""
    if os.environ.get("ARCHIPEL_PURE_PYTHON"):
        return None
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None
    if getattr(module, "_SOURCES_SHA256", None) != sources_sha256():
        if name not in _warned:
            _warned.add(name)
            log.warning(
                "the compiled %s is older than its sources: running it as Python (make dev rebuilds it)", name
            )
        return None
    return module


def status() -> dict[str, bool]:
    """Per twin: is it in use in this process?"""
    import archipel.serving.gateway as gateway
    import archipel.serving.http1 as http1

    return {"http1": http1.COMPILED, "gateway": gateway.COMPILED}
