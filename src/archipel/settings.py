"""Typed ``ARCHIPEL_*`` settings, read from the environment when asked for (never at import).

| variable | meaning |
| --- | --- |
| ``ARCHIPEL_WORKSPACE`` | the workspace directory (after ``--workspace``, before searching upward) |
| ``ARCHIPEL_HOME`` | per-user state (default ``~/.archipel``) |
| ``ARCHIPEL_DB_URL`` | metadata store URL; overrides ``metadata_store`` in ``archipel.yaml`` |
| ``ARCHIPEL_LOG_LEVEL`` | ``debug``, ``info`` (default), ``warning``, ``error`` |
| ``ARCHIPEL_NO_COLOR`` / ``NO_COLOR`` | plain output |
| ``ARCHIPEL_MAX_UPLOAD_MIB`` | the largest data file ``archipel server`` takes in an upload (default 2048) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "settings"]

_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Settings:
    workspace: Path | None
    home: Path
    db_url: str | None
    log_level: str
    no_color: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        level = env.get("ARCHIPEL_LOG_LEVEL", "info").lower()
        if level not in _LEVELS:
            level = "info"
        workspace = env.get("ARCHIPEL_WORKSPACE")
        return cls(
            workspace=Path(workspace).expanduser() if workspace else None,
            home=Path(env.get("ARCHIPEL_HOME", "~/.archipel")).expanduser(),
            db_url=env.get("ARCHIPEL_DB_URL") or None,
            log_level=level,
            no_color=bool(env.get("ARCHIPEL_NO_COLOR") or env.get("NO_COLOR")),
        )


def settings() -> Settings:
    """The current settings, read from the environment now."""
    return Settings.from_env()
