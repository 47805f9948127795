"""Compute URIs, and the backends that serve them, registered by dotted strings and imported on first use.

=============================  =====================  =============================================
URI                            scheme, address        backend
=============================  =====================  =============================================
``local``                      ``local``, None        :class:`~archipel.backends.compute.local.LocalCompute`
``ray+http://HOST:PORT``       ``ray``, ``http://…``  :class:`~archipel.backends.compute.ray.RayJobsCompute`
``ray+https://HOST:PORT``      ``ray``, ``https://…``
=============================  =====================  =============================================

The Ray backend talks to the Ray Jobs API over HTTP with the standard library: it needs no Ray SDK.
A backend whose module (or SDK) is not installed raises :class:`MissingDependency` carrying the install command.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from archipel.backends.compute.base import ComputeBackend, Resources
from archipel.errors import MissingDependency, SpecError

__all__ = ["BACKENDS", "BackendEntry", "backend_class", "open_compute", "parse_compute_uri"]


class BackendEntry(NamedTuple):
    target: str
    """``module:Class``, imported when the scheme is first used."""
    install: str | None
    """The command that installs what the module needs; None when nothing optional is needed."""
    pending: str | None = None
    """Set while the backend is planned but not shipped: why it is missing."""


BACKENDS: dict[str, BackendEntry] = {
    "local": BackendEntry("archipel.backends.compute.local:LocalCompute", None),
    # The Ray backend speaks HTTP to the Jobs API and needs no Ray SDK (the extra `ray` is for running a head).
    "ray": BackendEntry("archipel.backends.compute.ray:RayJobsCompute", None),
}

_ACCEPTED = "'local', 'ray+http://HOST:PORT' or 'ray+https://HOST:PORT' (the Ray Jobs API address)"


def parse_compute_uri(uri: str) -> tuple[str, str | None]:
    """``(scheme, address)`` of a compute URI: ``local`` → ``("local", None)``,
    ``ray+http://h:8265`` → ``("ray", "http://h:8265")``. Raises SpecError naming the accepted forms."""
    if not isinstance(uri, str) or any(ch in uri for ch in "\x00\r\n\t "):
        raise SpecError(f"compute {uri!r} is not a compute URI; use {_ACCEPTED}")
    if uri in ("local", "local://"):
        return "local", None
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme not in ("ray+http", "ray+https"):
        raise SpecError(f"unknown compute {uri!r}; use {_ACCEPTED}")
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        raise SpecError(f"compute {uri!r} has an invalid port; use {_ACCEPTED}") from None
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise SpecError(f"compute {uri!r} needs just HOST[:PORT] after {scheme}://; use {_ACCEPTED}")
    if parts.path not in ("", "/"):
        raise SpecError(f"compute {uri!r} may not have a path; use {_ACCEPTED}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    address = f"{scheme.removeprefix('ray+')}://{host}" + (f":{port}" if port is not None else "")
    return "ray", address


def backend_class(scheme: str) -> type[ComputeBackend]:
    """The backend class for ``scheme``, imported now. Raises SpecError or MissingDependency."""
    try:
        entry = BACKENDS[scheme]
    except KeyError:
        raise SpecError(
            f"no compute backend for scheme {scheme!r}; known: {', '.join(sorted(BACKENDS))}"
        ) from None
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = f"; install it with: {entry.install}" if entry.install else ""
        if exc.name == module_name and entry.pending:
            raise MissingDependency(
                f"the {scheme!r} compute backend is unavailable: {entry.pending}{hint}"
            ) from None
        raise MissingDependency(
            f"the {scheme!r} compute backend needs the {exc.name!r} module, which is not installed{hint}"
        ) from None
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, ComputeBackend)):
        raise TypeError(f"{entry.target} is not a ComputeBackend")
    return cls


def open_compute(
    uri: str, *, state_dir: Path, cpus: float, memory_bytes: int, accelerators: dict[str, int]
) -> ComputeBackend:
    """A fresh backend for a site's compute URI and capacity; ``state_dir`` is where it may keep job state."""
    scheme, address = parse_compute_uri(uri)
    capacity = Resources(cpus=cpus, memory_bytes=memory_bytes, accelerators=accelerators)
    return backend_class(scheme).from_address(address, state_dir=Path(state_dir), capacity=capacity)
