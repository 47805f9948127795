"""A transfer SIGKILLed at many points in a real subprocess resumes, and no partial object is ever visible.

The child process runs :func:`transfer` with one method wrapped (in the child only, no hook in the engine) so
that it SIGKILLs itself at a chosen point: while reading a source chunk, right after the store acknowledged a
part (before the manifest records it), right after a manifest write, just before the assembled object is
published, right after it is published (before the manifest is removed); or the parent kills it after a
random delay. After each kill the parent checks that nothing partial is visible, then resumes in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from archipel.backends.storage.base import KeyValueStore
from archipel.backends.storage.fsspec_store import S3Store
from archipel.backends.storage.local import LocalStore
from archipel.backends.storage.registry import open_store
from archipel.transfer import Endpoint, transfer
from tests.conftest import S3Endpoint

MIB = 1024 * 1024

CHILD = r"""
import json, os, signal, sys, threading, time
from archipel.backends.storage.registry import open_store
from archipel.transfer import Endpoint, transfer
from archipel.transfer.chunks import ChunkReader
from archipel.transfer.manifest import Manifest

spec = json.loads(sys.argv[1])
src = open_store(spec["src_url"], spec["src_options"])
dst = open_store(spec["dst_url"], spec["dst_options"])
phase, at = spec["phase"], spec["at"]
calls, lock = [0], threading.Lock()

def wrap(cls, name, *, before):
    original = getattr(cls, name)
    def wrapper(*args, **kwargs):
        with lock:
            calls[0] += 1
            hit = calls[0] == at
        if hit and before:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit and not before:
            os.kill(os.getpid(), signal.SIGKILL)
        if phase == "delay":
            time.sleep(0.01)  # pace the parts so that a kill after a random delay lands mid-transfer
        return result
    setattr(cls, name, wrapper)

publish = "_publish" if hasattr(type(dst), "_publish") else "complete_upload"
# a local folder fills parts from another local folder in the kernel: no ChunkReader.read, no upload_part
direct = hasattr(dst, "can_copy_part_from") and dst.can_copy_part_from(src)
import archipel.backends.storage.local as local_module
send = "copy_part_from" if direct else "upload_part"
targets = {
    "read": (local_module, "_copy_range", True) if direct else (ChunkReader, "read", True),
    "part": (type(dst), send, False),
    "manifest": (Manifest, "save", False),
    "publish": (type(dst), publish, True),
    "published": (type(dst), "complete_upload", False),
    "delay": (type(dst), send, False),
}
cls, name, before = targets[phase]
wrap(cls, name, before=before)
print("START", flush=True)
result = transfer(
    Endpoint(src, spec["src_key"]), Endpoint(dst, spec["dst_key"]), sha256=spec["sha256"], size=spec["size"],
    state_dir=spec["state_dir"], streams=4, chunk_size=spec["chunk_size"],
)
print("DONE", result.chunks_resumed, flush=True)
"""


@contextmanager
def _watch(store: KeyValueStore, key: str, sha256: str) -> Iterator[list[str]]:
    """Poll ``key`` while the block runs; collect a complaint each time it is visible but not the whole object."""
    complaints: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                data = store.get(key)
            except Exception:  # not there (yet): that is the point
                data = None
            if data is not None and hashlib.sha256(data).hexdigest() != sha256:
                complaints.append(f"{key} visible with {len(data)} bytes that do not verify")
            stop.wait(0.003)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield complaints
    finally:
        stop.set()
        thread.join()


def _kill_points(seed: int, rounds: int, parts: int) -> list[tuple[str, int]]:
    """Every kind of point once, then random ones; ``at`` counts calls of the wrapped method."""
    rng = random.Random(seed)
    points = [("read", 1), ("manifest", 1), ("publish", 1), ("published", 1), ("delay", 0), ("part", 1)]
    while len(points) < rounds:
        phase = rng.choice(["read", "part", "manifest", "delay"])
        points.append((phase, 0 if phase == "delay" else rng.randint(2, parts)))
    rng.shuffle(points)
    return points[:rounds]


def _kill_and_resume(
    spec: dict[str, Any], dst: KeyValueStore, src: KeyValueStore, points: list[tuple[str, int]]
) -> list[int]:
    """Run each kill point then resume; return chunks_resumed per round."""
    resumed: list[int] = []
    rng = random.Random(len(points))
    state = Path(spec["state_dir"])
    for phase, at in points:
        args = [sys.executable, "-c", CHILD, json.dumps({**spec, "phase": phase, "at": at})]
        with (
            _watch(dst, spec["dst_key"], spec["sha256"]) as complaints,
            subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc,
        ):
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("START")
            if phase == "delay":
                time.sleep(rng.uniform(0.0, 0.05))
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=120)
            out = proc.stdout.read()
        assert complaints == []
        if proc.returncode == 0:  # a delayed kill that came after the end: fine, it must have published
            assert phase == "delay" and "DONE" in out
        else:
            assert proc.returncode == -signal.SIGKILL, (phase, at, proc.returncode)
            visible = dst.exists(spec["dst_key"])
            assert not visible or phase == "published", f"partial object visible after a kill at {phase}:{at}"
        result = transfer(
            Endpoint(src, spec["src_key"]),
            Endpoint(dst, spec["dst_key"]),
            sha256=spec["sha256"],
            size=spec["size"],
            state_dir=state,
            chunk_size=spec["chunk_size"],
        )
        assert result.sha256 == spec["sha256"]
        assert hashlib.sha256(dst.get(spec["dst_key"])).hexdigest() == spec["sha256"]
        assert list(state.iterdir()) == [], "the manifest and lock are removed on success"
        resumed.append(result.chunks_resumed)
        dst.delete(spec["dst_key"])
    return resumed


def _spec(
    src: KeyValueStore, dst: KeyValueStore, options: dict, data: bytes, chunk: int, state: Path
) -> dict:
    src.put("in/object", data)
    return {
        "src_url": src.url,
        "src_options": options if isinstance(src, S3Store) else {},
        "dst_url": dst.url,
        "dst_options": options if isinstance(dst, S3Store) else {},
        "src_key": "in/object",
        "dst_key": "out/object",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "chunk_size": chunk,
        "state_dir": str(state),
    }


@pytest.mark.slow
def test_sigkill_at_twenty_points_local_to_local(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    spec = _spec(src, dst, {}, os.urandom(12 * MIB), MIB, tmp_path / "state")
    points = _kill_points(seed=20261123, rounds=20, parts=12)
    resumed = _kill_and_resume(spec, dst, src, points)
    assert len(resumed) == 20
    for (phase, at), count in zip(points, resumed, strict=True):
        # a kill after the k-th manifest write leaves k - 1 recorded parts; one before publishing leaves them all
        guaranteed = at - 1 if phase == "manifest" else 12 if phase == "publish" else 0
        assert count >= guaranteed, (phase, at, count)
    assert sum(1 for n in resumed if n > 0) >= 5, list(zip(points, resumed, strict=True))
    assert dst.list() == []
    assert dst.cleanup(older_than_s=0) >= 0 and list((dst.root / ".tmp").iterdir()) == []


@pytest.mark.slow
@pytest.mark.s3
def test_sigkill_local_to_s3(tmp_path: Path, s3: S3Endpoint, s3_bucket: str) -> None:
    src = LocalStore(tmp_path / "a")
    options = s3.options()
    dst = open_store(f"s3://{s3_bucket}/site", options)
    assert isinstance(dst, S3Store)
    spec = _spec(src, dst, options, os.urandom(16 * MIB), 5 * MIB, tmp_path / "state")
    # manifest:3 = the initial write and two recorded parts, so at least two resume. After part:3 (a third part
    # acknowledged) the parallel workers may not have recorded any part yet: those are simply sent again.
    resumed = _kill_and_resume(spec, dst, src, [("manifest", 3), ("part", 3), ("read", 4)])
    assert resumed[0] >= 2, resumed
    assert dst.multipart_uploads() == [] and dst.list() == []
