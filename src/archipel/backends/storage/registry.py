"""Open a site's storage from its URL: plugins named by dotted strings, SDKs imported on first use.

``storage_options`` keys ending in ``_env`` name environment variables (``secret_env: S3_SECRET`` becomes
``secret=<value of S3_SECRET>``), so credentials never sit in ``archipel.yaml``; their values are never shown in a
message, a repr or a log.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from archipel.backends.storage.base import KeyValueStore
from archipel.errors import MissingDependency, SpecError

__all__ = ["PLUGINS", "StoragePlugin", "open_store", "resolve_options"]


@dataclass(frozen=True)
class StoragePlugin:
    target: str
    """``module:Class`` implementing :class:`KeyValueStore`."""
    requires: str | None = None
    """A module the backend needs (the SDK), checked before import so the error can say what to install."""
    install: str | None = None


PLUGINS: dict[str, StoragePlugin] = {
    "file": StoragePlugin("archipel.backends.storage.local:LocalStore"),
    "memory": StoragePlugin("archipel.backends.storage.fsspec_store:FsspecStore"),
    "s3": StoragePlugin(
        "archipel.backends.storage.fsspec_store:S3Store", "s3fs", "pip install 'archipel[s3]'"
    ),
    "gs": StoragePlugin(
        "archipel.backends.storage.fsspec_store:FsspecStore", "gcsfs", "pip install 'archipel[gcs]'"
    ),
    "az": StoragePlugin(
        "archipel.backends.storage.fsspec_store:FsspecStore", "adlfs", "pip install 'archipel[azure]'"
    ),
}


def resolve_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Replace every ``<name>_env: VARIABLE`` option by ``<name>: $VARIABLE``; a missing variable is a SpecError."""
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        if key.endswith("_env"):
            name = key[: -len("_env")]
            if not isinstance(value, str) or value not in os.environ:
                raise SpecError(
                    f"storage option {key!r} names the environment variable {value!r}, which is not set"
                )
            resolved[name] = os.environ[value]
        else:
            resolved[key] = value
    return resolved


def _load(scheme: str, plugin: StoragePlugin) -> type[KeyValueStore]:
    if plugin.requires:
        try:
            importlib.import_module(plugin.requires)
        except ImportError as exc:
            raise MissingDependency(
                f"{scheme}:// storage needs the {plugin.requires} package: {plugin.install}"
            ) from exc
    module_name, _, class_name = plugin.target.partition(":")
    cls: type[KeyValueStore] = getattr(importlib.import_module(module_name), class_name)
    return cls


def open_store(
    url: str, options: Mapping[str, Any] | None = None, *, base_dir: Path | None = None
) -> KeyValueStore:
    """The storage backend for ``url``. A relative ``file://`` path is taken relative to ``base_dir``."""
    scheme = urlsplit(url).scheme
    plugin = PLUGINS.get(scheme)
    if plugin is None:
        known = ", ".join(f"{s}://" for s in PLUGINS)
        raise SpecError(f"storage URL {url!r}: unknown scheme {scheme or '(none)'!r}; use one of {known}")
    cls = _load(scheme, plugin)
    resolved = resolve_options(options or {})
    if scheme == "file":
        if resolved:
            raise SpecError(f"file:// storage takes no storage_options (got {', '.join(sorted(resolved))})")
        path = Path(unquote(url[len("file://") :]))
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return cls(path)  # type: ignore[call-arg]
    return cls(url, resolved)  # type: ignore[call-arg]
