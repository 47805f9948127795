"""The transfer engine on local->local, local->S3 and S3->local (moto), plaintext and sealed at either end.

The kill tests (SIGKILL in a real subprocess at many points, then resume) live in ``test_engine_kill.py``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from archipel.backends.storage.base import KeyValueStore, PartInfo, WithMultipart
from archipel.backends.storage.fsspec_store import S3Store
from archipel.backends.storage.local import LocalStore
from archipel.backends.storage.registry import open_store
from archipel.errors import Conflict, IntegrityError, NotFound, SpecError, TransferFailed
from archipel.testing.proxy import FaultProxy
from archipel.transfer import DataKey, Endpoint, TransferResult, open_bytes, seal_bytes, transfer
from archipel.transfer.manifest import state_lock
from tests.conftest import S3Endpoint

MIB = 1024 * 1024
SIZE = 11 * MIB + 7  # three 5 MiB parts on S3 (the last one short), twelve 1 MiB chunks locally
DATA = os.urandom(SIZE)
SHA = hashlib.sha256(DATA).hexdigest()
KEY_A = DataKey(b"A" * 32)
KEY_B = DataKey(b"B" * 32)
SEALINGS = {
    "plain": (None, None),
    "sealed->plain": (KEY_A, None),
    "plain->sealed": (None, KEY_B),
    "A->B": (KEY_A, KEY_B),
}
ROUTES = [
    "local->local",
    pytest.param("local->s3", marks=pytest.mark.s3),
    pytest.param("s3->local", marks=pytest.mark.s3),
]


@pytest.fixture
def s3_store(s3: S3Endpoint, s3_bucket: str) -> S3Store:
    store = open_store(f"s3://{s3_bucket}/site", s3.options())
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[KeyValueStore, KeyValueStore]:
    """(source store, destination store) for each route."""
    src_kind, dst_kind = request.param.split("->")
    src = LocalStore(tmp_path / "site-a") if src_kind == "local" else request.getfixturevalue("s3_store")
    dst = LocalStore(tmp_path / "site-b") if dst_kind == "local" else request.getfixturevalue("s3_store")
    return src, dst


def _put_source(store: KeyValueStore, key: str, seal: DataKey | None, data: bytes = DATA) -> None:
    store.put(key, seal_bytes(data, seal, chunk_size=MIB) if seal else data)


def _plaintext(store: KeyValueStore, key: str, seal: DataKey | None) -> bytes:
    return open_bytes(store.get(key), seal) if seal else store.get(key)


def _run(src: Endpoint, dst: Endpoint, state: Path, **kwargs: object) -> TransferResult:
    options: dict = {
        "sha256": SHA,
        "size": SIZE,
        "state_dir": state,
        "chunk_size": MIB,
        "streams": 4,
        **kwargs,
    }
    return transfer(src, dst, **options)


def _nothing_left(store: KeyValueStore, state: Path) -> None:
    if isinstance(store, S3Store):
        assert store.multipart_uploads() == []
    if isinstance(store, LocalStore):
        tmp = store.root / ".tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
    assert not state.exists() or list(state.iterdir()) == []


@pytest.mark.parametrize("sealing", SEALINGS)
def test_copy_verifies_and_a_second_call_moves_nothing(
    route: tuple[KeyValueStore, KeyValueStore], sealing: str, tmp_path: Path
) -> None:
    (src_store, dst_store), (src_seal, dst_seal) = route, SEALINGS[sealing]
    _put_source(src_store, "in/model.bin", src_seal)
    src, dst = Endpoint(src_store, "in/model.bin", src_seal), Endpoint(dst_store, "out/model.bin", dst_seal)
    seen: list[tuple[int, int]] = []
    first = _run(src, dst, tmp_path / "state", progress=lambda done, total: seen.append((done, total)))
    assert (first.sha256, first.size, first.already_present, first.server_side_copy) == (
        SHA,
        SIZE,
        False,
        False,
    )
    assert first.chunks_total == (3 if isinstance(dst_store, S3Store) else 12) and first.chunks_resumed == 0
    stored = dst_store.size("out/model.bin")
    assert first.bytes_moved == stored == (SIZE if dst_seal is None else stored)
    assert _plaintext(dst_store, "out/model.bin", dst_seal) == DATA
    assert seen[-1] == (SIZE, SIZE) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    _nothing_left(dst_store, tmp_path / "state")

    second = _run(src, dst, tmp_path / "state")
    assert second.already_present and second.bytes_moved == 0 and second.sha256 == SHA


@pytest.mark.parametrize("sealed_source", [False, True], ids=["plain", "sealed"])
def test_a_flipped_source_byte_is_refused_and_nothing_is_published(
    route: tuple[KeyValueStore, KeyValueStore], sealed_source: bool, tmp_path: Path
) -> None:
    src_store, dst_store = route
    seal = KEY_A if sealed_source else None
    blob = bytearray(seal_bytes(DATA, seal, chunk_size=MIB) if seal else DATA)
    blob[len(blob) // 2] ^= 0x40
    src_store.put("in/corrupt", bytes(blob))
    with pytest.raises(IntegrityError, match=r"chunk|hash"):
        _run(Endpoint(src_store, "in/corrupt", seal), Endpoint(dst_store, "out/x"), tmp_path / "state")
    assert [i.key for i in dst_store.list("out/")] == []
    _nothing_left(dst_store, tmp_path / "state")


def test_a_missing_source_is_not_found(route: tuple[KeyValueStore, KeyValueStore], tmp_path: Path) -> None:
    src_store, dst_store = route
    with pytest.raises(NotFound):
        _run(Endpoint(src_store, "in/missing"), Endpoint(dst_store, "out/x"), tmp_path / "state")
    src_store.put("in/short", DATA[:-1])
    with pytest.raises(IntegrityError, match="bytes"):
        _run(Endpoint(src_store, "in/short"), Endpoint(dst_store, "out/x"), tmp_path / "state")
    assert dst_store.list("out/") == []


def test_one_stream_and_eight_give_identical_results(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", KEY_A)
    results = {}
    for streams in (1, 8):
        result = _run(
            Endpoint(src, "in", KEY_A), Endpoint(dst, f"out{streams}"), tmp_path / "state", streams=streams
        )
        results[streams] = {k: v for k, v in vars(result).items() if k not in ("seconds", "streams")}
        assert result.streams == streams
    assert results[1] == results[8]
    assert dst.get("out1") == dst.get("out8") == DATA


# -- interrupted and resumed ------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _stop_after(chunks: int) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if done >= chunks * MIB:
            raise _Stop(f"stopped after {done} bytes")

    return progress


def _parts_dir(store: LocalStore) -> Path:
    [folder] = (store.root / ".tmp").glob("mpu-*")
    return folder


def test_an_interrupted_transfer_resumes_sending_only_missing_chunks(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    with pytest.raises(_Stop):
        _run(
            Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", progress=_stop_after(5), streams=1
        )
    assert not dst.exists("out")
    [manifest] = (tmp_path / "state").glob("*.json")
    result = _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
    assert result.chunks_resumed >= 5 and result.bytes_moved == SIZE - result.chunks_resumed * MIB
    assert result.bytes_read == result.bytes_moved  # the store hashes the assembled object: no re-reads
    assert dst.get("out") == DATA and not manifest.exists()
    _nothing_left(dst, tmp_path / "state")


def test_a_corrupted_destination_part_is_detected_on_complete(tmp_path: Path) -> None:
    """Part 2's marker still claims it, but its range in the data file changed on disk after it was written."""
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    with pytest.raises(_Stop):
        _run(
            Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", progress=_stop_after(3), streams=1
        )
    assert (_parts_dir(dst) / "00002.mark").exists()
    with open(_parts_dir(dst) / "data", "r+b") as handle:
        handle.seek(MIB + 100)
        byte = handle.read(1)
        handle.seek(MIB + 100)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(IntegrityError, match="hash to sha256"):
        _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
    assert not dst.exists("out") and dst.list() == []
    _nothing_left(dst, tmp_path / "state")  # the upload was aborted and the manifest removed
    assert _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state").chunks_resumed == 0
    assert dst.get("out") == DATA


def test_a_plaintext_local_destination_is_written_once_and_published_by_rename(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    with pytest.raises(_Stop):
        _run(
            Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", progress=_stop_after(4), streams=2
        )
    folder = _parts_dir(dst)
    assert not list(folder.glob("*.part"))  # no part files: every chunk went straight into the object
    marks = sorted(p.name for p in folder.glob("*.mark"))
    assert len(marks) >= 4 and (folder / "data").stat().st_size >= 4 * MIB
    inode = (folder / "data").stat().st_ino
    result = _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
    assert result.chunks_resumed == len(marks) and result.bytes_moved == SIZE - len(marks) * MIB
    assert (dst.root / "out").stat().st_ino == inode and dst.get("out") == DATA
    _nothing_left(dst, tmp_path / "state")


def test_parts_whose_bytes_a_crash_lost_are_sent_again(tmp_path: Path) -> None:
    """A torn marker, or one whose range the data file no longer reaches, claims nothing."""
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    with pytest.raises(_Stop):
        _run(
            Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", progress=_stop_after(6), streams=1
        )
    folder = _parts_dir(dst)
    held = len(list(folder.glob("*.mark")))
    assert held >= 6
    (folder / "00001.mark").write_bytes(b"")  # torn
    os.truncate(folder / "data", 4 * MIB + 10)  # parts 5 and up lost their bytes
    result = _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
    assert result.chunks_resumed == 3  # parts 2, 3 and 4
    assert result.bytes_moved == SIZE - 3 * MIB and dst.get("out") == DATA
    _nothing_left(dst, tmp_path / "state")


def test_a_part_the_backend_lost_is_sent_again(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", KEY_A)
    src_ep, dst_ep = Endpoint(src, "in", KEY_A), Endpoint(dst, "out", KEY_B)
    with pytest.raises(_Stop):
        _run(src_ep, dst_ep, tmp_path / "state", progress=_stop_after(4), streams=1)
    parts = sorted(_parts_dir(dst).glob("*.part"))
    parts[0].unlink()
    result = _run(src_ep, dst_ep, tmp_path / "state")
    assert result.chunks_resumed == len(parts) - 1
    assert result.bytes_read > SIZE  # resumed chunks were read again to hash the whole plaintext in order
    assert open_bytes(dst.get("out"), KEY_B) == DATA


def test_a_vanished_upload_restarts_cleanly(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    with pytest.raises(_Stop):
        _run(
            Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", progress=_stop_after(4), streams=1
        )
    assert dst.cleanup(older_than_s=0) == 1  # someone cleans up the unfinished upload
    result = _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
    assert result.chunks_resumed == 0 and result.bytes_moved == SIZE and dst.get("out") == DATA


def test_a_source_that_changed_since_an_earlier_attempt_is_refused(tmp_path: Path) -> None:
    """A sealed destination never seals a chunk twice under one nonce with different plaintext."""
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    dst_ep = Endpoint(dst, "out", KEY_B)
    with pytest.raises(_Stop):
        _run(Endpoint(src, "in"), dst_ep, tmp_path / "state", progress=_stop_after(3), streams=1)
    changed = bytearray(DATA)
    changed[10] ^= 0xFF
    src.put("in", bytes(changed))
    with pytest.raises(IntegrityError, match="changed since an earlier attempt"):
        _run(Endpoint(src, "in"), dst_ep, tmp_path / "state")
    assert dst.list() == []
    _nothing_left(dst, tmp_path / "state")


def test_a_corrupt_manifest_starts_over(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    with pytest.raises(_Stop):
        _run(
            Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", progress=_stop_after(2), streams=1
        )
    [manifest] = (tmp_path / "state").glob("*.json")
    manifest.write_text('{"v": 1, "upload_id": "../../escape", "parts": "nonsense"}')
    result = _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
    assert result.chunks_resumed == 0 and dst.get("out") == DATA
    assert len(list((dst.root / ".tmp").glob("mpu-*"))) == 1  # the orphaned upload, left to cleanup()
    assert not any("escape" in p.name for p in tmp_path.rglob("*"))


def test_the_same_transfer_cannot_run_twice_at_once(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _put_source(src, "in", None)
    seen: list[Exception] = []

    def progress(done: int, total: int) -> None:
        if not seen:
            try:
                _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
            except Conflict as exc:
                seen.append(exc)

    _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", progress=progress)
    assert len(seen) == 1 and "another process" in str(seen[0])
    with state_lock(tmp_path / "state", "x"), pytest.raises(Conflict), state_lock(tmp_path / "state", "x"):
        pass


# -- fallbacks and server-side copy -----------------------------------------------------------------------------


@pytest.mark.parametrize("sealing", ["plain", "plain->sealed"])
def test_stores_without_multipart_get_one_verified_put(sealing: str, tmp_path: Path) -> None:
    src = LocalStore(tmp_path / "a")
    dst = open_store(f"memory://archipel-test-{os.getpid()}-{tmp_path.name}")
    assert not isinstance(dst, WithMultipart)
    _, dst_seal = SEALINGS[sealing]
    _put_source(src, "in", None)
    result = _run(Endpoint(src, "in"), Endpoint(dst, "out", dst_seal), tmp_path / "state")
    assert result.bytes_moved == dst.size("out") and _plaintext(dst, "out", dst_seal) == DATA
    assert _run(Endpoint(src, "in"), Endpoint(dst, "out", dst_seal), tmp_path / "state").already_present
    src.put("bad", DATA[:-1] + b"\x00")
    with pytest.raises(IntegrityError):
        _run(Endpoint(src, "bad"), Endpoint(dst, "bad-out", dst_seal), tmp_path / "state")
    assert not dst.exists("bad-out")


def test_empty_and_single_chunk_objects(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    for data in (b"", b"tiny"):
        sha = hashlib.sha256(data).hexdigest()
        src.put("in", seal_bytes(data, KEY_A))
        options = {"sha256": sha, "size": len(data), "state_dir": tmp_path / "state"}
        result = transfer(Endpoint(src, "in", KEY_A), Endpoint(dst, "out", KEY_B), **options)  # type: ignore[arg-type]
        assert result.chunks_total == 1 and open_bytes(dst.get("out"), KEY_B) == data
        result = transfer(Endpoint(src, "in", KEY_A), Endpoint(dst, "plain"), **options)  # type: ignore[arg-type]
        assert dst.get("plain") == data


def test_same_location_uses_server_side_copy(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a")
    store.put("in", DATA)
    result = _run(Endpoint(store, "in"), Endpoint(LocalStore(tmp_path / "a"), "copy"), tmp_path / "state")
    assert result.server_side_copy and result.bytes_moved == SIZE and store.get("copy") == DATA
    assert _run(Endpoint(store, "in"), Endpoint(store, "copy"), tmp_path / "state").already_present
    store.put("bad", DATA[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="server-side copy"):
        _run(Endpoint(store, "bad"), Endpoint(store, "bad-copy"), tmp_path / "state")
    assert not store.exists("bad-copy")


@pytest.mark.s3
def test_same_bucket_uses_server_side_copy_on_s3(s3_store: S3Store, s3: S3Endpoint, tmp_path: Path) -> None:
    s3_store.put("in", DATA)
    other = open_store(s3_store.url, s3.options())
    result = _run(Endpoint(s3_store, "in"), Endpoint(other, "copy"), tmp_path / "state")
    assert result.server_side_copy and other.get("copy") == DATA


def test_arguments_are_checked(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a")
    ep = Endpoint(store, "k")
    for bad in ({"sha256": "nope"}, {"size": -1}, {"streams": 0}, {"chunk_size": 0}):
        with pytest.raises(SpecError):
            _run(ep, Endpoint(store, "k2"), tmp_path / "state", **bad)
    with pytest.raises(SpecError, match="invalid storage key"):
        _run(ep, Endpoint(store, "../escape"), tmp_path / "state")


# -- backend failures -------------------------------------------------------------------------------------------


class _Flaky(LocalStore):
    """A local store whose part writes (sent or copied in the kernel) fail for the part numbers listed in
    ``failing`` (each time)."""

    failing: ClassVar[set[int]] = set()
    calls: ClassVar[list[int]] = []

    def _write_part(
        self,
        folder: Path,
        key: str,
        upload_id: str,
        number: int,
        size: int,
        write: Callable[[int, int], None],
    ) -> PartInfo:
        type(self).calls.append(number)
        if number in self.failing:
            raise ConnectionResetError("the link dropped")
        return super()._write_part(folder, key, upload_id, number, size, write)


def test_a_failing_part_is_retried_then_the_transfer_fails_and_resumes(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "a"), _Flaky(tmp_path / "b")
    _put_source(src, "in", None)
    _Flaky.failing, _Flaky.calls = {3}, []
    with pytest.raises(TransferFailed, match=r"part 3 .* failed after 4 attempts"):
        _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", streams=1, retry_backoff_s=0.001)
    assert _Flaky.calls.count(3) == 4 and not dst.exists("out")
    assert len(list((tmp_path / "state").glob("*.json"))) == 1  # kept for the next call
    _Flaky.failing = set()
    result = _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state")
    assert result.chunks_resumed >= 2 and dst.get("out") == DATA  # parts 1-2, and maybe 4 (already started)
    _nothing_left(dst, tmp_path / "state")


@pytest.mark.s3
def test_a_link_that_resets_mid_transfer_fails_cleanly_and_resumes(
    s3: S3Endpoint, s3_bucket: str, tmp_path: Path
) -> None:
    """Through the fault proxy: connections to S3 are reset after the first chunk, then the link heals."""
    host, port = s3.url.removeprefix("http://").split(":")
    with FaultProxy((host, int(port))) as proxy:
        options = {
            **s3.options(endpoint_url=f"http://127.0.0.1:{proxy.port}"),
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5},
        }
        dst = open_store(f"s3://{s3_bucket}/site", options)
        src = LocalStore(tmp_path / "a")
        _put_source(src, "in", None)

        def cut(done: int, total: int) -> None:
            if done >= 5 * MIB:
                proxy.configure(mode="reset")

        with pytest.raises(TransferFailed):
            _run(
                Endpoint(src, "in"),
                Endpoint(dst, "out"),
                tmp_path / "state",
                progress=cut,
                streams=1,
                retry_backoff_s=0.001,
            )
        proxy.configure(mode="pass")
        assert not dst.exists("out")
        result = _run(Endpoint(src, "in"), Endpoint(dst, "out"), tmp_path / "state", streams=2)
        assert result.chunks_resumed >= 1 and result.sha256 == SHA
        assert hashlib.sha256(dst.get("out")).hexdigest() == SHA
        assert isinstance(dst, S3Store) and dst.multipart_uploads() == []


@pytest.mark.s3
def test_s3_parts_corrupted_in_transit_are_caught_by_their_etag(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = s3_store._fs.call_s3

    def corrupting(method: str, *args: object, **kwargs: object) -> object:
        if method == "upload_part":
            body = bytearray(kwargs["Body"])  # type: ignore[arg-type]
            body[0] ^= 0x01
            kwargs["Body"] = bytes(body)
        return real(method, *args, **kwargs)

    monkeypatch.setattr(s3_store._fs, "call_s3", corrupting)
    upload = s3_store.start_upload("k")
    with pytest.raises(IntegrityError, match="received other bytes"):
        s3_store.upload_part("k", upload, 1, b"payload" * 1000)
    s3_store.abort_upload("k", upload)
