"""The reference backend: the conformance suite plus what only a local folder can get wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archipel.backends.storage.base import KeyValueStore, PartInfo
from archipel.backends.storage.local import LocalStore
from archipel.errors import IntegrityError, NotFound, SpecError
from tests.conformance.storage import CrossProcessConformance, MultipartConformance, StoreSpec


class TestLocalStore(CrossProcessConformance, MultipartConformance):
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
