"""The files between a worker and the control plane, in the attempt's folder (``ARCHIPEL_RUN_DIR``).

=================  =====================  ==========================================================
file               written by             what
=================  =====================  ==========================================================
``context.json``   the control plane      run id, step, site storage, inputs, outputs, checkpoint
                                          interval and the checkpoint to resume from
``events.jsonl``   the worker (appends)   metrics, params, artifacts, checkpoints, outputs, one JSON
                                          object a line; the control plane reads whole lines only
``heartbeat``      the worker, every      its modification time is the last sign of life
                   ``HEARTBEAT_S``
=================  =====================  ==========================================================

The folder lives on the control plane's machine, which local workers and a Ray cluster on the same host
share; workers on other hosts will report through the REST API instead (not built yet). Bulk bytes
(checkpoints, outputs) never go through these files: they go to the site's storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["HEARTBEAT_S", "EventWriter", "heartbeat_age", "read_context", "read_events", "write_context"]

HEARTBEAT_S = 1.0
CONTEXT = "context.json"
EVENTS = "events.jsonl"
HEARTBEAT = "heartbeat"
_MAX_READ = 4 * 1024 * 1024


def write_context(folder: Path, context: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / CONTEXT
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(context, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    (folder / EVENTS).touch()
    return path


def read_context(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / CONTEXT).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{folder / CONTEXT} is not a JSON object")
    return data


def read_events(folder: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Whole event lines from byte ``offset``, and the offset after the last whole line read."""
    try:
        with open(folder / EVENTS, "rb") as handle:
            handle.seek(offset)
            data = handle.read(_MAX_READ)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn line from a killed worker: it claims nothing
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end


def heartbeat_age(folder: Path) -> float | None:
    """Seconds since the worker's last heartbeat; None before its first."""
    try:
        return max(0.0, time.time() - (folder / HEARTBEAT).stat().st_mtime)
    except FileNotFoundError:
        return None


class EventWriter:
    """The worker's side: appends events and keeps the heartbeat fresh from a daemon thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._handle = open(folder / EVENTS, "ab")  # noqa: SIM115 - open for the life of the worker
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._beats, name="archipel-heartbeat", daemon=True)
        self._thread.start()

    def emit(self, event: str, /, **fields: Any) -> None:
        line = json.dumps({"type": event, "at": time.time(), **fields}, separators=(",", ":")) + "\n"
        with self._lock:
            self._handle.write(line.encode())
            self._handle.flush()  # in the kernel now: a SIGKILL of this process does not lose it

    def _beat(self) -> None:
        path = self.folder / HEARTBEAT
        path.touch()
        os.utime(path)

    def _beats(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # the folder went away: the control plane notices the silence
                self._beat()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._handle.close()
