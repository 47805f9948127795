"""The reference backend: the conformance suite plus what only a local folder can get wrong."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from archipel.backends.storage import local
from archipel.backends.storage.base import KeyValueStore, PartInfo
from archipel.backends.storage.local import LocalStore
from archipel.backends.storage.registry import open_store
from archipel.errors import IntegrityError, NotFound, SpecError
from tests.conformance.storage import CrossProcessConformance, StoreSpec, VerifyingCompleteConformance


class TestLocalStore(CrossProcessConformance, VerifyingCompleteConformance):
    @pytest.fixture
    def store_spec(self, tmp_path: Path) -> StoreSpec:
        return "file://site", {}, tmp_path

    def assert_no_leftovers(self, store: KeyValueStore) -> None:
        assert isinstance(store, LocalStore)
        tmp = store.root / ".tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []


def test_nothing_is_written_outside_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    for key in ("../outside", "..%2foutside", "%2e%2e%2foutside", "/tmp/outside"):
        with pytest.raises(SpecError):
            store.put(key, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_a_symlink_planted_inside_the_root_cannot_lead_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    store = LocalStore(tmp_path / "root")
    os.symlink(outside, store.root / "link")
    with pytest.raises(SpecError, match="resolves outside"):
        store.get("link/secret")
    with pytest.raises(SpecError, match="resolves outside"):
        store.put("link/planted", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_objects_are_files_and_deletes_prune_empty_folders(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("a/b/c.bin", b"payload")
    assert (store.root / "a" / "b" / "c.bin").read_bytes() == b"payload"
    assert oct((store.root / "a" / "b" / "c.bin").stat().st_mode & 0o777) == "0o644"
    store.delete("a/b/c.bin")
    assert [p.name for p in store.root.iterdir()] == [".tmp"]  # only the (empty) temp folder stays


def test_hidden_files_are_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("visible", b"1")
    (store.root / ".DS_Store").write_bytes(b"junk")
    (store.root / ".tmp").mkdir(exist_ok=True)
    (store.root / ".tmp" / "put-abc").write_bytes(b"half")
    assert [i.key for i in store.list()] == ["visible"]


def test_cleanup_spares_fresh_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    (store.root / ".tmp").mkdir()
    (store.root / ".tmp" / "put-live").write_bytes(b"a writer is still busy")
    assert store.cleanup(older_than_s=3600) == 0
    assert store.cleanup(older_than_s=0) == 1


def test_opening_a_missing_folder_without_create(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        LocalStore(tmp_path / "missing", create=False)


# -- multipart specifics of a folder ------------------------------------------------------------------------------


def test_a_part_altered_on_disk_is_refused_on_complete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload = store.start_upload("obj")
    parts = [store.upload_part("obj", upload, n, bytes([n]) * 1000) for n in (1, 2)]
    [part_file] = (store.root / ".tmp" / f"mpu-{upload}").glob("00002-*.part")
    part_file.write_bytes(b"\x02" * 999 + b"\x03")
    with pytest.raises(IntegrityError, match=r"part 2 .* corrupt"):
        store.complete_upload("obj", upload, parts)
    assert not store.exists("obj") and store.list() == []
    assert [p.name for p in (store.root / ".tmp").iterdir()] == [f"mpu-{upload}"]  # the assembly temp is gone


def test_an_upload_belongs_to_its_key_and_its_tags_never_become_paths(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload = store.start_upload("a")
    part = store.upload_part("a", upload, 1, b"x")
    with pytest.raises(NotFound, match="no multipart upload"):
        store.upload_part("b", upload, 1, b"x")
    with pytest.raises(NotFound):
        store.list_parts("b", upload)
    with pytest.raises(SpecError, match="not a local part tag"):
        store.complete_upload("a", upload, [PartInfo(1, 1, "../../../etc/passwd")])
    with pytest.raises(IntegrityError, match="not held"):
        store.complete_upload("a", upload, [PartInfo(1, 1, "0" * 64)])
    assert store.complete_upload("a", upload, [part]).sha256 == part.sha256


def test_cleanup_removes_abandoned_uploads_but_not_live_ones(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    abandoned = store.start_upload("old")
    store.upload_part("old", abandoned, 1, b"x")
    folder = store.root / ".tmp" / f"mpu-{abandoned}"
    os.utime(folder, (0, 0))
    live = store.start_upload("new")
    assert store.cleanup(older_than_s=3600) == 1
    assert not folder.exists()
    assert store.list_parts("new", live) == []
    with pytest.raises(NotFound):
        store.list_parts("old", abandoned)


# -- multipart laid out in place (start_upload with part_size) ---------------------------------------------------

P = 64 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _in_place(store: LocalStore, key: str, count: int = 3) -> tuple[str, list[bytes], list[PartInfo]]:
    """An in-place upload of ``count`` parts (the last one short), uploaded last to first."""
    upload = store.start_upload(key, part_size=P)
    data = [os.urandom(P) for _ in range(count - 1)] + [os.urandom(P // 3)]
    parts = {n: store.upload_part(key, upload, n, data[n - 1]) for n in range(count, 0, -1)}
    return upload, data, [parts[n] for n in range(1, count + 1)]


def test_in_place_parts_are_written_once_into_the_object_they_publish(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload, data, parts = _in_place(store, "obj")
    folder = store.root / ".tmp" / f"mpu-{upload}"
    names = ["00001.mark", "00002.mark", "00003.mark", "data", "key", "part-size"]
    assert sorted(p.name for p in folder.iterdir()) == names
    assert (folder / "data").read_bytes() == b"".join(data)
    assert [(p.number, p.size, p.sha256) for p in parts] == [(1, P, None), (2, P, None), (3, P // 3, None)]
    inode = (folder / "data").stat().st_ino
    result = store.complete_upload("obj", upload, parts, expected_sha256=_sha(b"".join(data)))
    assert result.sha256 == _sha(b"".join(data)) and result.size == 2 * P + P // 3
    assert (store.root / "obj").stat().st_ino == inode and store.get("obj") == b"".join(data)
    assert oct((store.root / "obj").stat().st_mode & 0o777) == "0o644"
    assert list((store.root / ".tmp").iterdir()) == []


def test_parts_landing_in_any_order_from_many_threads_are_hashed_as_they_land(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload = store.start_upload("obj", part_size=P)
    data = [os.urandom(P) for _ in range(39)] + [os.urandom(17)]
    order = list(range(1, 41))
    random.Random(7).shuffle(order)
    with ThreadPoolExecutor(8) as pool:
        acked = {
            part.number: part
            for part in pool.map(lambda n: store.upload_part("obj", upload, n, data[n - 1]), order)
        }
    parts = [acked[n] for n in range(1, 41)]
    chain = store._chains[upload]
    assert chain.digest(parts) == _sha(b"".join(data))  # no read-back left for completion
    read_back = []
    real = local._hash_fd
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local, "_hash_fd", lambda *args: read_back.append(args[1:3]) or real(*args))
        store.complete_upload("obj", upload, parts, expected_sha256=_sha(b"".join(data)))
    assert read_back == [] and store.get("obj") == b"".join(data)


def test_an_in_place_range_altered_on_disk_is_refused_on_complete(tmp_path: Path) -> None:
    """Whether the store that completes wrote the parts or another one (a resumed process) does."""
    for reopen in (False, True):
        store = LocalStore(tmp_path / f"root-{reopen}")
        upload, data, _ = _in_place(store, "obj")
        completer = LocalStore(store.root) if reopen else store
        held = completer.list_parts("obj", upload)  # a resume: what was hashed as it landed is read again
        with open(store.root / ".tmp" / f"mpu-{upload}" / "data", "r+b") as handle:
            handle.seek(P + 5)
            handle.write(b"\x00" if data[1][5] else b"\x01")
        with pytest.raises(IntegrityError, match=r"hash to sha256 .* not the expected"):
            completer.complete_upload("obj", upload, held, expected_sha256=_sha(b"".join(data)))
        assert not store.exists("obj") and store.list() == []


def test_in_place_markers_claim_only_whole_durable_ranges(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload, _, parts = _in_place(store, "obj", count=4)
    folder = store.root / ".tmp" / f"mpu-{upload}"
    (folder / "00002.mark").write_bytes(b"0123")  # torn by a crash
    os.truncate(folder / "data", 3 * P)  # the last part's bytes never reached the disk
    assert store.list_parts("obj", upload) == [parts[0], parts[2]]
    with pytest.raises(IntegrityError, match=r"part 2 .* not held"):
        store.complete_upload("obj", upload, parts, expected_sha256="0" * 64)


def test_writing_a_hashed_part_again_falls_back_to_reading_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload, data, parts = _in_place(store, "obj")
    again = os.urandom(P)
    parts[0] = store.upload_part("obj", upload, 1, again)
    assert store._chains[upload].digest(parts) is None
    with pytest.raises(IntegrityError, match="not the expected"):
        store.complete_upload("obj", upload, parts, expected_sha256=_sha(b"".join(data)))
    store.complete_upload("obj", upload, parts, expected_sha256=_sha(again + data[1] + data[2]))
    assert store.get("obj") == again + data[1] + data[2]


def test_the_part_size_promise_is_enforced(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload, data, parts = _in_place(store, "obj")
    with pytest.raises(SpecError, match="more than the part size"):
        store.upload_part("obj", upload, 4, b"x" * (P + 1))
    whole = _sha(b"".join(data))
    for bad, match in (
        ([parts[0], parts[2]], "parts 1..n"),
        ([parts[0], PartInfo(2, P - 1, parts[1].etag), parts[2]], "all parts but the last"),
        ([parts[0], parts[1], PartInfo(3, P // 3, "f" * 32)], "not held"),
    ):
        with pytest.raises((SpecError, IntegrityError), match=match):
            store.complete_upload("obj", upload, bad, expected_sha256=whole)
    with pytest.raises(SpecError, match="needs expected_sha256"):
        store.complete_upload("obj", upload, parts)
    for size in (0, -1, True, 1.5):
        with pytest.raises(SpecError, match="part_size"):
            store.start_upload("obj", part_size=size)  # type: ignore[arg-type]
    assert store.complete_upload("obj", upload, parts, expected_sha256=whole).sha256 == whole


def test_a_writer_that_loses_the_race_with_completion_finds_the_upload_gone(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    upload, data, _ = _in_place(store, "obj")
    folder = store.root / ".tmp" / f"mpu-{upload}"
    outcome: list[object] = []

    def write() -> None:
        try:
            outcome.append(store.upload_part("obj", upload, 2, b"\x00" * P))
        except NotFound as exc:
            outcome.append(exc)

    with store._locked_data(folder, "obj", upload, os.O_RDWR, fcntl.LOCK_EX):  # a completion, mid-way
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(0.2)
        assert writer.is_alive()  # no part is written while the object is verified and published
        os.replace(folder / "data", store.root / "obj")  # ... and published
    writer.join()
    assert isinstance(outcome[0], NotFound) and store.get("obj") == b"".join(data)
    with pytest.raises(NotFound):  # the data file is gone: nothing is listed or written anywhere
        store.list_parts("obj", upload)
    with pytest.raises(NotFound):
        store.upload_part("obj", upload, 1, b"x")


def test_parts_copied_in_the_kernel_from_another_folder_publish_the_same_object(tmp_path: Path) -> None:
    source, dest = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    data = random.Random(7).randbytes(3 * 4096 + 100)
    source.put("src", data)
    assert dest.can_copy_part_from(source) and not dest.can_copy_part_from(open_memory_store())
    for part_size in (4096, None):  # in place, and an upload of part files
        upload = dest.start_upload("obj", part_size=part_size)
        spans = [(i * 4096, min(4096, len(data) - i * 4096)) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:  # out of order, from several threads
            copies = [
                pool.submit(dest.copy_part_from, "obj", upload, n, source, "src", *spans[n - 1])
                for n in (3, 1, 4, 2)
            ]
            parts = [copy.result() for copy in copies]
        parts.sort(key=lambda part: part.number)
        assert [p.size for p in parts] == [4096, 4096, 4096, 100]
        assert dest.complete_upload("obj", upload, parts, expected_sha256=_sha(data)).sha256 == _sha(data)
        assert dest.get("obj") == data
        dest.delete("obj")


def test_a_part_copy_refuses_a_short_source_and_a_foreign_store(tmp_path: Path) -> None:
    source, dest = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    source.put("src", b"x" * 100)
    upload = dest.start_upload("obj", part_size=4096)
    with pytest.raises(IntegrityError, match="ends at byte 100"):
        dest.copy_part_from("obj", upload, 1, source, "src", 0, 4096)
    with pytest.raises(NotFound):
        dest.copy_part_from("obj", upload, 1, source, "missing", 0, 10)
    with pytest.raises(SpecError, match="cannot copy parts"):
        dest.copy_part_from("obj", upload, 1, open_memory_store(), "src", 0, 10)
    assert dest.list_parts("obj", upload) == []  # nothing was claimed


def open_memory_store() -> KeyValueStore:
    return open_store(f"memory://archipel-test-{uuid.uuid4().hex}/site")
