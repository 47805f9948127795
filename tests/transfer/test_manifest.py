"""The transfer manifest's group commit: parallel workers share writes, and nobody returns before its change is
written (fsynced, when it must survive a power cut)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from archipel.transfer.manifest import Manifest, PartRecord

WORKERS = 8


def _manifest(tmp_path: Path) -> Manifest:
    return Manifest(tmp_path / "t.json", "t" * 64, "a" * 64, 100, 10, "upload")


def test_one_write_covers_every_change_made_while_the_previous_one_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(tmp_path)
    writes: list[int] = []
    everyone_recorded = threading.Event()
    real_save = Manifest.save

    def save(self: Manifest, **kwargs: object) -> None:
        if not writes:  # hold the first write until every other worker has recorded its part
            assert everyone_recorded.wait(10)
        writes.append(len(kwargs["body"]["parts"]))  # type: ignore[index]
        real_save(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Manifest, "save", save)
    returned: list[int] = []

    def worker(number: int) -> None:
        record = PartRecord(number, 10, f"tag{number}", None, None)
        manifest.commit(lambda: manifest.parts.__setitem__(number, record), durable=False)
        on_disk = {part["number"] for part in json.loads(manifest.path.read_text())["parts"]}
        assert number in on_disk  # nobody returns before a write that includes its change is done
        returned.append(number)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, WORKERS + 1)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
    ):  # the first worker is writing; wait until the others have recorded theirs
        with manifest.lock:
            if len(manifest.parts) == WORKERS:
                break
        time.sleep(0.001)
    everyone_recorded.set()
    for thread in threads:
        thread.join(10)
    assert sorted(returned) == list(range(1, WORKERS + 1))
    assert writes == [1, WORKERS]  # the first worker's write, then one write for the seven others


def test_durable_changes_are_fsynced_and_others_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(tmp_path)
    manifest.save()  # created: the file and its folder are fsynced
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    manifest.commit(lambda: manifest.parts.__setitem__(1, PartRecord(1, 10, "t", None, None)), durable=False)
    assert synced == []
    manifest.commit(lambda: manifest.intents.__setitem__(1, "b" * 64))
    assert len(synced) == 2  # the new manifest before its rename, the folder after it
    body = json.loads(manifest.path.read_text())
    assert [part["number"] for part in body["parts"]] == [1] and body["intents"] == {"1": "b" * 64}
    loaded = Manifest.load(manifest.path, transfer_id="t" * 64, sha256="a" * 64, size=100)
    assert loaded is not None and loaded.parts[1].plain_sha256 is None  # a part recorded without its sha256
