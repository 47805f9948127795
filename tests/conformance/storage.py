"""One conformance suite for every storage backend (STYLE 8); the local backend is the reference.

A backend's test module subclasses :class:`StorageConformance` and overrides the ``store_spec`` fixture with
``(url, options, base_dir)``; the suite opens the store through :func:`open_store` exactly as a workspace does,
and can reopen it in another process (the killed-writer test). Backends with multipart uploads also inherit
:class:`MultipartConformance`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archipel.backends.storage.base import (
    KeyValueStore,
    PartInfo,
    WithCleanup,
    WithMultipart,
    WithServerSideCopy,
)
from archipel.backends.storage.blobs import BlobStore
from archipel.backends.storage.registry import open_store
from archipel.errors import IntegrityError, NotFound, SpecError

StoreSpec = tuple[str, dict[str, Any], Path | None]

# Keys that must never reach a filesystem or an object name.
TRAVERSAL_CORPUS = [
    "../escape",
    "a/../../escape",
    "..",
    ".",
    "a/./b",
    "..\\escape",
    "a\\..\\..\\escape",
    "%2e%2e%2fescape",
    "%2e%2e/escape",
    "%252e%252e%252fescape",
    "..%2fescape",
    "a;rm -rf",
    "a#fragment",
    "a?query=1",
    "/etc/passwd",
    "//server/share",
    "C:\\Windows",
    "c:/windows",
    "a\x00b",
    "nul\x00",
    "a//b",
    "a/",
    "",
    " leading-space",
    "tab\tkey",
    "new\nline",
    ".hidden",
    "a/.tmp/put-x",
    "x" * 1025,
]

WRITER = r"""
import json, sys
from pathlib import Path
from archipel.backends.storage.registry import open_store
url, options, base_dir, key = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
store = open_store(url, options, base_dir=Path(base_dir) if base_dir else None)
def chunks():
    for _ in range(12):
        yield b"x" * (1024 * 1024)
    print("WROTE", flush=True)
    sys.stdin.readline()  # block mid-put until the test kills this process (it never writes to stdin)
    yield b"never"
store.put(key, chunks())
"""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StorageConformance:
    """Behaviour every :class:`KeyValueStore` must have."""

    @pytest.fixture
    def store_spec(self) -> StoreSpec:
        raise NotImplementedError("a backend's test class overrides store_spec")

    @pytest.fixture
    def store(self, store_spec: StoreSpec) -> KeyValueStore:
        url, options, base_dir = store_spec
        return open_store(url, options, base_dir=base_dir)

    def assert_no_leftovers(self, store: KeyValueStore) -> None:
        """Backend-specific proof that no half-written object is stored (temp files, multipart uploads)."""

    # -- basic contract -------------------------------------------------------------------------------------

    def test_put_get_roundtrip_reports_size_and_sha256(self, store: KeyValueStore) -> None:
        data = os.urandom(70_000)
        result = store.put("runs/r1/model.onnx", data)
        assert (result.key, result.size, result.sha256) == ("runs/r1/model.onnx", len(data), _sha(data))
        assert store.get("runs/r1/model.onnx") == data
        assert store.size("runs/r1/model.onnx") == len(data)
        assert store.exists("runs/r1/model.onnx")

    def test_put_streams_from_file_objects_and_iterables(self, store: KeyValueStore, tmp_path: Path) -> None:
        source = tmp_path / "src.bin"
        source.write_bytes(b"abc" * 10_000)
        with source.open("rb") as handle:
            assert store.put("from-file", handle).size == 30_000
        assert store.put("from-chunks", iter([b"ab", bytearray(b"cd"), memoryview(b"ef")])).sha256 == _sha(
            b"abcdef"
        )
        assert store.get("from-file") == source.read_bytes()
        assert store.get("from-chunks") == b"abcdef"
        assert b"".join(store.iter_bytes("from-file", chunk_size=4096)) == source.read_bytes()
        with store.open("from-chunks") as handle:
            assert handle.read() == b"abcdef"

    def test_empty_object(self, store: KeyValueStore) -> None:
        assert store.put("empty", b"").size == 0
        assert store.get("empty") == b""
        assert [i.key for i in store.list()] == ["empty"]

    def test_overwrite_replaces_the_whole_object(self, store: KeyValueStore) -> None:
        store.put("k", b"a" * 1000)
        store.put("k", b"b" * 10)
        assert store.get("k") == b"b" * 10

    def test_missing_keys_raise_not_found(self, store: KeyValueStore) -> None:
        for call in (store.get, store.open, store.info, store.size, lambda k: store.read_range(k, 0, 1)):
            with pytest.raises(NotFound, match="nope"):
                call("nope/missing")
        assert not store.exists("nope/missing")
        assert store.delete("nope/missing") is False

    def test_a_folder_is_not_an_object(self, store: KeyValueStore) -> None:
        store.put("dir/inner", b"x")
        assert not store.exists("dir")
        with pytest.raises(NotFound):
            store.get("dir")

    def test_read_range(self, store: KeyValueStore) -> None:
        store.put("r", bytes(range(256)))
        assert store.read_range("r", 10, 5) == bytes(range(10, 15))
        assert store.read_range("r", 250, 100) == bytes(range(250, 256))
        assert store.read_range("r", 0, 0) == b""
        with pytest.raises(SpecError):
            store.read_range("r", -1, 3)

    def test_list_is_recursive_sorted_and_filtered_by_prefix(self, store: KeyValueStore) -> None:
        for key in ["b/2", "a/x/1", "a/y", "ab", "a/x/0", "c"]:
            store.put(key, key.encode())
        assert [i.key for i in store.list()] == ["a/x/0", "a/x/1", "a/y", "ab", "b/2", "c"]
        assert [i.key for i in store.list("a/")] == ["a/x/0", "a/x/1", "a/y"]
        assert [i.key for i in store.list("a")] == ["a/x/0", "a/x/1", "a/y", "ab"]
        assert [i.key for i in store.list("a/x")] == ["a/x/0", "a/x/1"]
        assert store.list("zzz/") == []
        assert {i.key: i.size for i in store.list("b")} == {"b/2": 3}

    def test_delete(self, store: KeyValueStore) -> None:
        store.put("d/1", b"1")
        store.put("d/2", b"2")
        assert store.delete("d/1") is True
        assert not store.exists("d/1")
        assert [i.key for i in store.list()] == ["d/2"]

    # -- atomicity and verification -------------------------------------------------------------------------

    def test_wrong_expected_sha256_publishes_nothing_and_keeps_the_old_object(
        self, store: KeyValueStore
    ) -> None:
        store.put("kept", b"old")
        with pytest.raises(IntegrityError, match="expected"):
            store.put("kept", b"new bytes", expected_sha256=_sha(b"something else"))
        with pytest.raises(IntegrityError):
            store.put("fresh", b"new bytes", expected_sha256=_sha(b"something else"))
        assert store.get("kept") == b"old"
        assert not store.exists("fresh")
        assert store.put("fresh", b"ok", expected_sha256=_sha(b"ok")).size == 2
        self.assert_no_leftovers(store)

    def test_a_failing_stream_publishes_nothing(self, store: KeyValueStore) -> None:
        store.put("kept", b"old")

        def broken() -> Iterator[bytes]:
            yield b"x" * (3 * 1024 * 1024)
            raise ConnectionResetError("source went away")

        for key in ("kept", "fresh"):
            with pytest.raises(ConnectionResetError):
                store.put(key, broken())
        assert store.get("kept") == b"old"
        assert not store.exists("fresh")
        assert [i.key for i in store.list()] == ["kept"]
        self.assert_no_leftovers(store)

    def test_readers_see_the_old_or_the_new_object_never_a_mix(self, store: KeyValueStore) -> None:
        versions = [bytes([n]) * 400_000 for n in range(4)]
        store.put("hot", versions[0])
        stop = threading.Event()
        seen: list[bytes] = []

        def reader() -> None:
            while not stop.is_set():
                seen.append(store.get("hot"))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for n in range(1, 13):
                store.put("hot", versions[n % 4])
        finally:
            stop.set()
            thread.join()
        assert seen and all(data in versions for data in seen)

    # -- keys -----------------------------------------------------------------------------------------------

    @pytest.mark.parametrize("key", TRAVERSAL_CORPUS, ids=repr)
    def test_traversal_and_hostile_keys_are_refused_before_any_io(
        self, store: KeyValueStore, key: str
    ) -> None:
        for call in (
            lambda: store.put(key, b"pwned"),
            lambda: store.get(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: store.open(key),
            lambda: store.read_range(key, 0, 1),
        ):
            with pytest.raises(SpecError, match="invalid storage key"):
                call()
        if key and not key.endswith("/"):
            with pytest.raises(SpecError):
                store.list(key + "/")
        assert store.list() == []

    def test_keys_with_every_allowed_character(self, store: KeyValueStore) -> None:
        key = "data/patients@v3/part=0001/file-name_v1.2+final.parquet"
        store.put(key, b"ok")
        assert [i.key for i in store.list("data/")] == [key]

    # -- optional capabilities ------------------------------------------------------------------------------

    def test_server_side_copy(self, store: KeyValueStore) -> None:
        if not isinstance(store, WithServerSideCopy):
            pytest.skip(f"{type(store).__name__} has no server-side copy")
        store.put("src", b"payload")
        assert store.copy("src", "dst/copy").size == 7
        assert store.get("dst/copy") == b"payload"
        assert store.get("src") == b"payload"
        with pytest.raises(NotFound):
            store.copy("missing", "dst/other")

    # -- content-addressed layer ----------------------------------------------------------------------------

    def test_blobs_are_content_addressed_deduplicated_and_verified(self, store: KeyValueStore) -> None:
        blobs = BlobStore(store)
        data = os.urandom(50_000)
        ref = blobs.put(data)
        assert ref.sha256 == _sha(data) and ref.size == len(data)
        assert store.list() == [store.info(blobs.key(ref.sha256))]
        assert blobs.put(data) == ref  # same bytes: same blob, nothing new written
        assert blobs.put(iter([data[:10], data[10:]])) == ref
        assert blobs.get(ref.sha256) == data
        assert b"".join(blobs.iter_bytes(ref.sha256, chunk_size=4096)) == data
        assert blobs.list() == [ref]
        with pytest.raises(IntegrityError):
            blobs.put(b"not the data", sha256=_sha(b"other"))
        with pytest.raises(NotFound):
            blobs.get(_sha(b"never stored"))
        assert blobs.delete(ref.sha256) and not blobs.exists(ref.sha256)

    def test_corrupt_blobs_are_detected_on_read(self, store: KeyValueStore) -> None:
        blobs = BlobStore(store)
        ref = blobs.put(b"genuine bytes " * 1000)
        store.put(blobs.key(ref.sha256), b"tampered bytes " * 1000)  # someone writes under the blob's name
        with pytest.raises(IntegrityError, match="corrupt"):
            blobs.get(ref.sha256)
        with pytest.raises(IntegrityError, match="corrupt"):
            b"".join(blobs.iter_bytes(ref.sha256))
        with pytest.raises(IntegrityError):
            blobs.verify(ref.sha256)

    def test_hundred_megabyte_blob_streams_through(self, store: KeyValueStore) -> None:
        block = os.urandom(1024 * 1024)
        expected = hashlib.sha256()
        for n in range(100):
            expected.update(block[n:] + block[:n])

        def stream() -> Iterator[bytes]:
            for n in range(100):
                yield block[n:] + block[:n]

        ref = BlobStore(store).put(stream(), sha256=expected.hexdigest())
        assert ref.size == 100 * 1024 * 1024
        got = hashlib.sha256()
        for chunk in BlobStore(store).iter_bytes(ref.sha256):
            got.update(chunk)
        assert got.hexdigest() == expected.hexdigest()
        self.assert_no_leftovers(store)


class CrossProcessConformance(StorageConformance):
    """For backends another process can open too (all but ``memory://``): a writer killed mid-put."""

    def test_killed_writer_leaves_no_visible_partial_object(
        self, store: KeyValueStore, store_spec: StoreSpec
    ) -> None:
        url, options, base_dir = store_spec
        with subprocess.Popen(
            [sys.executable, "-c", WRITER, url, json.dumps(options), str(base_dir or ""), "victim/blob"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "WROTE"
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert not store.exists("victim/blob")
        assert store.list() == []
        if isinstance(store, WithCleanup):
            assert store.cleanup(older_than_s=0) >= 1  # the dead writer's leftovers were there, and are gone
        self.assert_no_leftovers(store)


HOSTILE_UPLOAD_IDS = [
    "",
    "../escape",
    "a/../../b",
    "..",
    "a\x00b",
    "x" * 2000,
    "id with space",
    "a;b",
    "a?b=c",
]


class MultipartConformance:
    """For stores with :class:`WithMultipart`; mixed into a class that provides the ``store`` fixture."""

    @pytest.fixture
    def mp(self, store: KeyValueStore) -> WithMultipart:
        assert isinstance(store, WithMultipart), f"{type(store).__name__} has no multipart uploads"
        assert "multipart" in type(store).features()
        return store

    @staticmethod
    def _parts(mp: WithMultipart, count: int) -> list[bytes]:
        """``count`` distinct parts: all of the minimum size but the last, which is shorter."""
        size = max(mp.min_part_size, 100_000)
        return [os.urandom(size) for _ in range(count - 1)] + [os.urandom(size // 3)]

    def test_parts_uploaded_out_of_order_are_assembled_in_order(self, mp: WithMultipart) -> None:
        parts = self._parts(mp, 3)
        upload = mp.start_upload("mp/obj")
        acked = {n: mp.upload_part("mp/obj", upload, n, parts[n - 1]) for n in (3, 1, 2)}
        assert [acked[n].size for n in (1, 2, 3)] == [len(p) for p in parts]
        assert all(acked[n].sha256 in (None, _sha(parts[n - 1])) for n in acked)
        assert not mp.exists("mp/obj") and mp.list() == []  # nothing visible before completion
        data = b"".join(parts)
        result = mp.complete_upload(
            "mp/obj", upload, [acked[n] for n in (1, 2, 3)], expected_sha256=_sha(data)
        )
        assert (result.key, result.size, result.sha256) == ("mp/obj", len(data), _sha(data))
        assert mp.get("mp/obj") == data
        assert [i.key for i in mp.list()] == ["mp/obj"]
        self.assert_no_leftovers(mp)  # type: ignore[attr-defined]

    def test_a_new_process_resumes_from_list_parts(self, mp: WithMultipart, store_spec: StoreSpec) -> None:
        parts = self._parts(mp, 3)
        upload = mp.start_upload("mp/resumed")
        sent = [mp.upload_part("mp/resumed", upload, n, parts[n - 1]) for n in (1, 2)]
        mp.upload_part("mp/resumed", upload, 2, parts[1])  # sending a part again replaces it
        url, options, base_dir = store_spec
        again = open_store(url, options, base_dir=base_dir)  # what a restarted process would open
        assert isinstance(again, WithMultipart)
        held = again.list_parts("mp/resumed", upload)
        assert [(p.number, p.size, p.etag) for p in held] == [(p.number, p.size, p.etag) for p in sent]
        last = again.upload_part("mp/resumed", upload, 3, parts[2])
        data = b"".join(parts)
        again.complete_upload("mp/resumed", upload, [*held, last], expected_sha256=_sha(data))
        assert mp.get("mp/resumed") == data

    def test_a_part_size_promise_gives_the_same_object_and_resumes(
        self, mp: WithMultipart, store_spec: StoreSpec
    ) -> None:
        """``start_upload(part_size=...)`` is only a layout hint: out of order, resumed, the same bytes come out."""
        parts = self._parts(mp, 3)
        upload = mp.start_upload("mp/sized", part_size=len(parts[0]))
        sent = {n: mp.upload_part("mp/sized", upload, n, parts[n - 1]) for n in (3, 1)}
        assert not mp.exists("mp/sized") and mp.list() == []
        url, options, base_dir = store_spec
        again = open_store(url, options, base_dir=base_dir)
        assert isinstance(again, WithMultipart)
        held = again.list_parts("mp/sized", upload)
        assert [(p.number, p.size, p.etag) for p in held] == [(n, sent[n].size, sent[n].etag) for n in (1, 3)]
        second = again.upload_part("mp/sized", upload, 2, parts[1])
        data = b"".join(parts)
        result = again.complete_upload(
            "mp/sized", upload, [held[0], second, held[1]], expected_sha256=_sha(data)
        )
        assert (result.size, result.sha256) == (len(data), _sha(data)) and mp.get("mp/sized") == data
        self.assert_no_leftovers(mp)  # type: ignore[attr-defined]

    def test_abort_leaves_nothing(self, mp: WithMultipart) -> None:
        upload = mp.start_upload("mp/aborted")
        mp.upload_part("mp/aborted", upload, 1, self._parts(mp, 2)[0])
        mp.abort_upload("mp/aborted", upload)
        mp.abort_upload("mp/aborted", upload)  # already gone: not an error
        with pytest.raises(NotFound):
            mp.list_parts("mp/aborted", upload)
        assert mp.list() == [] and not mp.exists("mp/aborted")
        self.assert_no_leftovers(mp)  # type: ignore[attr-defined]

    def test_a_part_that_does_not_match_its_tag_publishes_nothing(self, mp: WithMultipart) -> None:
        parts = self._parts(mp, 2)
        upload = mp.start_upload("mp/tagged")
        first = mp.upload_part("mp/tagged", upload, 1, parts[0])
        second = mp.upload_part("mp/tagged", upload, 2, parts[1])
        other = mp.upload_part("mp/elsewhere", mp.start_upload("mp/elsewhere"), 1, b"unrelated")
        forged = PartInfo(2, second.size, other.etag, other.sha256)  # a tag the upload never acknowledged
        with pytest.raises(IntegrityError):
            mp.complete_upload("mp/tagged", upload, [first, forged], expected_sha256=_sha(b"".join(parts)))
        assert not mp.exists("mp/tagged")
        result = mp.complete_upload(
            "mp/tagged", upload, [first, second], expected_sha256=_sha(b"".join(parts))
        )
        assert result.size == len(parts[0]) + len(parts[1])

    def test_complete_needs_ascending_parts(self, mp: WithMultipart) -> None:
        upload = mp.start_upload("mp/order")
        parts = [mp.upload_part("mp/order", upload, n, data) for n, data in enumerate(self._parts(mp, 2), 1)]
        for bad in ([], parts[::-1], [parts[0], parts[0]]):
            with pytest.raises(SpecError):
                mp.complete_upload("mp/order", upload, bad, expected_sha256=_sha(b""))
        mp.abort_upload("mp/order", upload)
        assert not mp.exists("mp/order")

    @pytest.mark.parametrize("upload_id", HOSTILE_UPLOAD_IDS, ids=repr)
    def test_hostile_upload_ids_and_part_numbers_are_refused_before_any_io(
        self, mp: WithMultipart, upload_id: str
    ) -> None:
        part = PartInfo(1, 1, "etag")
        for call in (
            lambda: mp.upload_part("k", upload_id, 1, b"x"),
            lambda: mp.list_parts("k", upload_id),
            lambda: mp.complete_upload("k", upload_id, [part], expected_sha256=_sha(b"x")),
            lambda: mp.abort_upload("k", upload_id),
        ):
            with pytest.raises(SpecError, match="upload id"):
                call()
        good = mp.start_upload("k")
        for number in (0, -1, mp.max_parts + 1, True):
            with pytest.raises(SpecError, match="part numbers"):
                mp.upload_part("k", good, number, b"x")
        with pytest.raises(SpecError, match="invalid storage key"):
            mp.start_upload("../escape")
        mp.abort_upload("k", good)
        assert mp.list() == []


class VerifyingCompleteConformance(MultipartConformance):
    """For multipart stores that hash the assembled object before publishing it (``complete_checks_sha256``);
    S3 cannot read an upload before completing it, so it takes the sha256 on the caller's word."""

    def test_wrong_expected_sha256_on_complete_publishes_nothing(self, mp: WithMultipart) -> None:
        assert mp.complete_checks_sha256
        mp.put("mp/kept", b"old")
        for key in ("mp/kept", "mp/fresh"):
            upload = mp.start_upload(key)
            part = mp.upload_part(key, upload, 1, b"new bytes")
            with pytest.raises(IntegrityError, match="expected"):
                mp.complete_upload(key, upload, [part], expected_sha256=_sha(b"other bytes"))
            mp.abort_upload(key, upload)
        assert mp.get("mp/kept") == b"old" and not mp.exists("mp/fresh")
        self.assert_no_leftovers(mp)  # type: ignore[attr-defined]
