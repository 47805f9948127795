"""The reference storage backend: a folder on the local filesystem.

Writes go to ``<root>/.tmp/`` first, are fsynced, verified, then ``os.replace``-d into place and the directory
is fsynced: a reader sees the old object or the new one, and a writer killed at any moment leaves at most a
temp file under ``.tmp`` (invisible to ``list``; :meth:`LocalStore.cleanup` removes it). Every path is resolved
with ``realpath`` and must stay under the root, so a symlink planted inside the root cannot lead out of it.

Multipart uploads live in ``<root>/.tmp/mpu-<upload id>/`` with a ``key`` file naming the target key, in one of
two layouts.

*In place* (``start_upload(key, part_size=n)``, what the transfer engine uses for plaintext): the folder holds
``data``, the object being assembled, and one marker per part, ``<number:05d>.mark``, holding a random write
token and the part's size. Part ``k`` is written once, with ``pwrite`` at offset ``(k - 1) * n`` of ``data``;
its marker is removed first (durably, if there was one) and written again only after an ``fdatasync`` of the
data file, so a marker never claims a range that a crash -- even a power cut -- could lose; a torn marker
claims nothing. ``list_parts`` reports the markers whose range the data file holds; the token is the part's
tag. Completing checks that every listed part's marker still carries its tag, verifies the whole object
against ``expected_sha256`` (required here), fsyncs ``data`` and renames it into place: no byte is written
twice. Part writers hold a shared ``flock`` on ``data`` and completion an exclusive one, so no part is written
while the object is verified and published, and a writer that waited finds the upload gone.

The whole-object sha256 is computed from the bytes *as read back from* ``data`` (the bytes that will be
published, not the caller's buffers), in part order. When the upload was started by this store object and
nothing has listed its parts since (a resume) nor written a part again after it was hashed, this happens as
the parts land (:class:`_Chain`), overlapped with the writes of later parts, and completion only compares the
result; otherwise completion reads the object back whole. The trade-off, measured on a 2-CPU VM with 1 GiB
in 8 MiB parts: hashing the writers' buffers instead of reading back would save one copy from the page
cache per byte (0.1-0.15 s per GiB alone; within the noise, 1.6-1.8 s either way, in a whole transfer), but
a write at a wrong offset or a change to ``data`` by anything but this store would go unnoticed; reading back
at completion instead of as the parts land adds a serial pass (about 0.7 s per GiB). What the early hash
does not see is a range altered on disk, by something other than this store, after it was hashed and before
completion (a resume, which lists the parts, reads everything back; a file altered after it is published
goes unnoticed just the same).

*Part files* (``start_upload(key)``, and sealed transfers, whose first part is longer): one file per part,
``<number:05d>-<sha256 of its bytes>.part``, written to a temp name, fsynced and renamed, so a listed part is
always whole and its name says what it must hash to. Completing assembles the parts in order into a temp file
while hashing each part (a part altered since its upload is refused) and the whole (checked against
``expected_sha256``), fsyncs it and only then ``os.replace``-s it into place.

``cleanup`` removes abandoned upload folders like any other stale ``.tmp`` entry; the folder's mtime moves
with every part written.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from archipel.backends.storage.base import (
    KeyValueStore,
    ObjectInfo,
    PartInfo,
    PutResult,
    WithCleanup,
    WithPartCopy,
    WithServerSideCopy,
)
from archipel.errors import IntegrityError, NotFound, SpecError

__all__ = ["LocalStore"]

_TMP = ".tmp"
_MPU_PREFIX = "mpu-"
_PART_FILE = re.compile(r"(\d{5})-([0-9a-f]{64})\.part")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_COPY_BLOCK = 8 * 1024 * 1024
_PART_SIZE = "part-size"  # in-place uploads: the part size they were started with
_DATA = "data"  # in-place uploads: the object being assembled, published by renaming it
_MARK = ".mark"
_MARK_FILE = re.compile(r"(\d{5})\.mark")
_MARKER = re.compile(rb"([0-9a-f]{32}) (\d{1,20})\n")
_HASH_BLOCK = 1024 * 1024  # read back through a buffer that stays in the CPU cache while it is hashed
_MAX_CHAINS = 64
_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(WithServerSideCopy, WithCleanup, WithPartCopy):
    """Objects as files under ``root``; keys map to relative paths."""

    scheme = "file"
    min_part_size = 1  # a local file has no minimum part size
    complete_checks_sha256 = True

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        path = Path(root)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise NotFound(f"storage folder {path} does not exist")
        self.root = Path(os.path.realpath(path))
        self._chains: dict[str, _Chain] = {}  # in-place uploads started here, hashed as their parts land
        self._chains_lock = threading.Lock()
        super().__init__(self.root.as_uri())

    def _path(self, key: str) -> Path:
        """The real path of ``key``, refusing any that resolves outside the root (e.g. through a symlink)."""
        real = os.path.realpath(self.root / key)
        if not real.startswith(str(self.root) + os.sep):
            raise SpecError(f"invalid storage key {key!r}: it resolves outside {self.url}")
        return Path(real)

    def _put(self, key: str, chunks: Iterator[bytes], verify: Callable[[], None]) -> None:
        self._path(key)
        tmp_dir = self.root / _TMP
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            verify()
            self._publish(key, tmp)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _publish(self, key: str, tmp: str) -> None:
        """Move the fsynced, verified temp file ``tmp`` into place as ``key``."""
        os.chmod(tmp, 0o644)
        self._path(key).parent.mkdir(parents=True, exist_ok=True)
        dest = self._path(key)  # re-resolve: a parent may have been swapped for a symlink meanwhile
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)

    def _get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _open(self, key: str) -> IO[bytes]:
        return open(self._path(key), "rb")

    def _read_range(self, key: str, start: int, length: int) -> bytes:
        with open(self._path(key), "rb") as handle:
            handle.seek(start)
            return handle.read(length)

    def _info(self, key: str) -> ObjectInfo:
        path = self._path(key)
        stat = path.stat()
        if not path.is_file():
            raise FileNotFoundError(key)
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def _list(self, prefix: str) -> Iterable[ObjectInfo]:
        base = prefix if prefix.endswith("/") or not prefix else prefix.rpartition("/")[0]
        start = self.root / base if base else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, self.root)
            for filename in filenames:
                if filename.startswith("."):
                    continue
                key = filename if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{filename}"
                if not key.startswith(prefix):
                    continue
                with suppress(FileNotFoundError):  # deleted while we walked
                    stat = os.stat(os.path.join(dirpath, filename))
                    yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def _delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        parent = path.parent
        while parent != self.root:  # prune folders this delete emptied, never the root itself
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def _copy(self, source: str, dest: str) -> None:
        with open(self._path(source), "rb") as handle:
            self._put(dest, iter(lambda: handle.read(8 * 1024 * 1024), b""), lambda: None)

    def _cleanup(self, older_than_s: float) -> int:
        tmp_dir = self.root / _TMP
        if not tmp_dir.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in os.scandir(tmp_dir):
            with suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
        return removed

    # -- multipart --------------------------------------------------------------------------------------------

    def _upload_dir(self, key: str, upload_id: str) -> Path:
        """The folder of a live upload for ``key``; NotFound if it is gone or belongs to another key."""
        folder = self.root / _TMP / f"{_MPU_PREFIX}{upload_id}"
        try:
            recorded = (folder / "key").read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            recorded = None
        if recorded != key:
            raise NotFound(f"no multipart upload {upload_id} for {key!r} in {self.url}")
        return folder

    def _start_upload(self, key: str) -> str:
        return self._new_upload(key, None)

    def _start_upload_with_part_size(self, key: str, part_size: int) -> str:
        upload_id = self._new_upload(key, part_size)
        with self._chains_lock:
            while len(self._chains) >= _MAX_CHAINS:  # abandoned uploads: they will be read back if completed
                self._chains.pop(next(iter(self._chains)))
            self._chains[upload_id] = _Chain(part_size)
        return upload_id

    def _new_upload(self, key: str, part_size: int | None) -> str:
        self._path(key)  # refuse a key that resolves outside the root before any state exists
        upload_id = secrets.token_hex(16)
        folder = self.root / _TMP / f"{_MPU_PREFIX}{upload_id}"
        folder.mkdir(parents=True)
        if part_size is not None:
            _write_durably(folder / _PART_SIZE, f"{part_size}\n")
            os.close(os.open(folder / _DATA, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _write_durably(folder / "key", key)  # written last: a folder without it is no upload (cleanup's)
        _fsync_dir(folder)
        _fsync_dir(folder.parent)
        return upload_id

    def _part_size(self, folder: Path) -> int | None:
        """The part size an in-place upload was started with; None for an upload of part files."""
        try:
            text = (folder / _PART_SIZE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip().isdigit() or int(text) < 1:
            raise IntegrityError(f"the upload folder {folder.name} in {self.url} is damaged ({_PART_SIZE})")
        return int(text)

    def _chain(self, upload_id: str, *, drop: bool = False) -> _Chain | None:
        with self._chains_lock:
            return self._chains.pop(upload_id, None) if drop else self._chains.get(upload_id)

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview
    ) -> PartInfo:
        folder = self._upload_dir(key, upload_id)
        if self._part_size(folder) is None:
            return self._upload_part_file(folder, number, data)
        view = memoryview(data).cast("B")

        def write(fd: int, offset: int) -> None:
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)

        return self._write_part(folder, key, upload_id, number, len(view), write)

    def can_copy_part_from(self, source: KeyValueStore) -> bool:
        return isinstance(source, LocalStore)

    def _copy_part_from(
        self,
        key: str,
        upload_id: str,
        number: int,
        source: KeyValueStore,
        source_key: str,
        offset: int,
        length: int,
    ) -> PartInfo:
        assert isinstance(source, LocalStore)
        folder = self._upload_dir(key, upload_id)
        with open(source._path(source_key), "rb") as handle:
            if self._part_size(folder) is None:  # an upload of part files: through this process
                data = os.pread(handle.fileno(), length, offset)
                if len(data) != length:
                    raise IntegrityError(f"{source_key!r} in {source.url} ends before byte {offset + length}")
                return self._upload_part_file(folder, number, data)

            def write(fd: int, at: int) -> None:
                _copy_range(handle.fileno(), offset, fd, at, length, f"{source_key!r} in {source.url}")

            return self._write_part(folder, key, upload_id, number, length, write)

    def _write_part(
        self,
        folder: Path,
        key: str,
        upload_id: str,
        number: int,
        size: int,
        write: Callable[[int, int], None],
    ) -> PartInfo:
        """Write part ``number`` of an in-place upload with ``write(fd, offset)``, hash it if it is next in
        order, make it durable, then claim it with a marker."""
        part_size = self._part_size(folder)
        assert part_size is not None
        if size > part_size:
            raise SpecError(
                f"part {number} of the upload of {key!r} holds {size} bytes, more than the part size "
                f"{part_size} the upload was started with"
            )
        offset = (number - 1) * part_size
        marker = folder / f"{number:05d}{_MARK}"
        token = secrets.token_hex(16)
        with self._locked_data(folder, key, upload_id, os.O_WRONLY, fcntl.LOCK_SH) as fd:
            with suppress(FileNotFoundError):
                marker.unlink()  # an earlier write of this part: unclaim it, durably, before its range changes
                _fsync_dir(folder)
            write(fd, offset)
            if _start_writeback is not None:  # the disk writes the range while it is hashed
                _start_writeback(fd, offset, size)
            chain = self._chain(upload_id)
            if chain is not None:
                chain.landed(number, token, size, folder / _DATA)
            _fdatasync(fd)  # the range is on disk before a marker claims it
            _write_marker(marker, token, size)
        return PartInfo(number, size, token, None)

    def _upload_part_file(self, folder: Path, number: int, data: bytes | bytearray | memoryview) -> PartInfo:
        sha = hashlib.sha256(data).hexdigest()
        final = folder / f"{number:05d}-{sha}.part"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{number:05d}-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        for older in folder.glob(f"{number:05d}-*.part"):  # an earlier upload of this number is replaced
            if older != final:
                with suppress(FileNotFoundError):
                    older.unlink()
        _fsync_dir(folder)
        size = len(memoryview(data).cast("B"))
        return PartInfo(number, size, sha, sha)

    @contextmanager
    def _locked_data(self, folder: Path, key: str, upload_id: str, flags: int, lock: int) -> Iterator[int]:
        """The data file of an in-place upload, open and ``flock``-ed: shared by part writers, exclusive for
        completion, so that no part is written while the object is verified and published."""
        path = folder / _DATA
        gone = NotFound(f"no multipart upload {upload_id} for {key!r} in {self.url}")
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise gone from None
        try:
            fcntl.flock(fd, lock)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # completed or aborted while we waited for the lock
                raise gone
            yield fd
        finally:
            os.close(fd)

    def _list_parts(self, key: str, upload_id: str) -> Iterable[PartInfo]:
        folder = self._upload_dir(key, upload_id)
        part_size = self._part_size(folder)
        if part_size is None:
            return self._list_part_files(folder)
        # a caller listing parts is resuming: what this process hashed so far is read back at completion instead
        self._chain(upload_id, drop=True)
        try:
            data_size = os.stat(folder / _DATA).st_size
        except FileNotFoundError:
            raise NotFound(f"no multipart upload {upload_id} for {key!r} in {self.url}") from None
        parts = []
        for entry in os.scandir(folder):
            match = _MARK_FILE.fullmatch(entry.name)
            held = _read_marker(Path(entry.path)) if match else None
            if match and held is not None:
                number, (token, size) = int(match.group(1)), held
                if size <= part_size and (number - 1) * part_size + size <= data_size:
                    parts.append(PartInfo(number, size, token, None))
        return parts

    @staticmethod
    def _list_part_files(folder: Path) -> list[PartInfo]:
        newest: dict[int, tuple[int, PartInfo]] = {}
        for entry in os.scandir(folder):
            match = _PART_FILE.fullmatch(entry.name)
            if not match:
                continue
            with suppress(FileNotFoundError):
                stat = entry.stat()
                number, sha = int(match.group(1)), match.group(2)
                if number not in newest or stat.st_mtime_ns > newest[number][0]:
                    newest[number] = (stat.st_mtime_ns, PartInfo(number, stat.st_size, sha, sha))
        return [part for _, part in newest.values()]

    def _complete_upload(
        self, key: str, upload_id: str, parts: list[PartInfo], expected_sha256: str | None
    ) -> PutResult:
        folder = self._upload_dir(key, upload_id)
        part_size = self._part_size(folder)
        self._path(key)
        if part_size is None:
            return self._complete_part_files(folder, key, parts, expected_sha256)
        where = f"the upload of {key!r} in {self.url}"
        if expected_sha256 is None:
            raise SpecError(f"{where} was laid out in place (part_size): completing it needs expected_sha256")
        numbers = [part.number for part in parts]
        if numbers != list(range(1, len(parts) + 1)):
            raise SpecError(f"{where} was laid out in place: complete it with parts 1..n, got {numbers}")
        for part in parts[:-1]:
            if part.size != part_size:
                raise SpecError(
                    f"part {part.number} of {where} holds {part.size} bytes; all parts but the last hold "
                    f"{part_size}"
                )
        total = sum(part.size for part in parts)
        chain = self._chain(upload_id, drop=True)
        with self._locked_data(folder, key, upload_id, os.O_RDWR, fcntl.LOCK_EX) as fd:
            for part in parts:
                if _read_marker(folder / f"{part.number:05d}{_MARK}") != (part.etag, part.size):
                    raise IntegrityError(
                        f"part {part.number} of {where} is not held with tag {part.etag[:64]!r} "
                        f"({part.size} bytes)"
                    )
            on_disk = os.fstat(fd).st_size
            if on_disk < total:
                raise IntegrityError(f"{where} holds {on_disk} bytes, fewer than the {total} of its parts")
            digest = chain.digest(parts) if chain is not None else None
            if digest is None:  # not hashed as it landed (a resumed upload): read it back now
                digest = _hash_fd(fd, 0, total, hashlib.sha256(), bytearray(_HASH_BLOCK)).hexdigest()
            if digest != expected_sha256:
                raise IntegrityError(
                    f"refused to publish {key!r} in {self.url}: its bytes hash to sha256 {digest}, "
                    f"not the expected {expected_sha256}"
                )
            if on_disk > total:  # parts written beyond the last one listed are not part of the object
                os.ftruncate(fd, total)
            _fdatasync(fd)
            self._publish(key, str(folder / _DATA))
        shutil.rmtree(folder, ignore_errors=True)
        return PutResult(key=key, size=total, sha256=digest)

    def _complete_part_files(
        self, folder: Path, key: str, parts: list[PartInfo], expected_sha256: str | None
    ) -> PutResult:
        fd, tmp = tempfile.mkstemp(dir=self.root / _TMP, prefix="put-")
        try:
            try:
                for part in parts:
                    self._append_part(fd, self._part_path(folder, key, part), part)
                # the fsync waits on the disk while the hash reads the page cache: run them side by side
                with ThreadPoolExecutor(1, thread_name_prefix="archipel-fsync") as pool:
                    synced = pool.submit(os.fsync, fd)
                    actual = self._verify_assembled(tmp, key, parts, expected_sha256)
                    synced.result()
            finally:
                os.close(fd)
            self._publish(key, tmp)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        shutil.rmtree(folder, ignore_errors=True)
        return PutResult(key=key, size=sum(part.size for part in parts), sha256=actual)

    def _part_path(self, folder: Path, key: str, part: PartInfo) -> Path:
        where = f"part {part.number} of the upload of {key!r} in {self.url}"
        if not _SHA256_HEX.fullmatch(part.etag):  # the tag names a file: never let it be anything else
            raise SpecError(f"{where}: {part.etag[:80]!r} is not a local part tag (a sha256)")
        path = folder / f"{part.number:05d}-{part.etag}.part"
        if not path.is_file():
            raise IntegrityError(f"{where} is not held with tag {part.etag}")
        return path

    @staticmethod
    def _append_part(out: int, path: Path, part: PartInfo) -> None:
        """Append the part file to ``out``, in the kernel where it can (``copy_file_range``)."""
        with open(path, "rb") as handle:
            remaining = os.fstat(handle.fileno()).st_size
            if remaining != part.size:
                raise IntegrityError(
                    f"part {part.number} holds {remaining} bytes, not the {part.size} acknowledged"
                )
            with suppress(OSError, AttributeError):  # no copy_file_range here: copy through user space
                while remaining and (copied := os.copy_file_range(handle.fileno(), out, remaining)):
                    remaining -= copied
            handle.seek(part.size - remaining)
            buffer = bytearray(_COPY_BLOCK)
            while remaining and (count := handle.readinto(buffer)):
                os.write(out, memoryview(buffer)[: min(count, remaining)])
                remaining -= min(count, remaining)

    def _verify_assembled(
        self, tmp: str, key: str, parts: list[PartInfo], expected_sha256: str | None
    ) -> str:
        """Hash the assembled file (exactly what will be published) and return its sha256.

        With ``expected_sha256`` the whole-object digest covers every part; each part is hashed on its own only
        without one, or after a mismatch to name the part that differs from its tag."""
        whole = hashlib.sha256()
        per_part = expected_sha256 is None
        bad: list[str] = []
        buffer = bytearray(_COPY_BLOCK)
        with open(tmp, "rb") as handle:
            for part in parts:
                hasher = hashlib.sha256() if per_part else None
                remaining = part.size
                while remaining and (
                    count := handle.readinto(memoryview(buffer)[: min(len(buffer), remaining)])
                ):
                    view = memoryview(buffer)[:count]
                    whole.update(view)
                    if hasher is not None:
                        hasher.update(view)
                    remaining -= count
                if hasher is not None and hasher.hexdigest() != part.etag:
                    bad.append(
                        f"part {part.number} is corrupt (sha256 {hasher.hexdigest()}, stored as {part.etag})"
                    )
        actual = whole.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            self._verify_assembled(tmp, key, parts, None)  # names a corrupt part if one is to blame
            raise IntegrityError(
                f"refused to publish {key!r} in {self.url}: its bytes hash to sha256 {actual}, "
                f"not the expected {expected_sha256}"
            )
        if bad:
            raise IntegrityError(f"refused to publish {key!r} in {self.url}: {', '.join(bad)}")
        return actual

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            folder = self._upload_dir(key, upload_id)
        except NotFound:
            return
        self._chain(upload_id, drop=True)
        shutil.rmtree(folder, ignore_errors=True)


class _Chain:
    """The sha256 of an in-place upload's data file, computed in order as the parts land in this process.

    A part is hashed as read back from the data file (the bytes that will be published, not the caller's
    buffer), right after it is written and before its marker exists, by the thread that wrote it when it is
    next in order: that thread first waits for the parts before it to be hashed if they have all landed, so
    hashing runs in part order while the writes run in parallel. A part that lands after a gap is left to the
    thread that fills the gap, which hashes on through such parts. Writing again a part already hashed, or any
    read error, makes the chain untrusted: the upload is then read back whole when it completes.
    """

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.cond = threading.Condition()
        self.hasher = hashlib.sha256()
        self.landed_parts: dict[int, tuple[str, int]] = {}  # number -> (token, size) of parts written here
        self.hashed: dict[int, tuple[str, int]] = {}
        self.orphans: set[int] = set()  # landed after a gap, their writers gone: hashed by whoever fills it
        self.next = 1  # parts 1..next-1 are hashed
        self.frontier = 1  # the first part, from next on, that has not landed
        self.busy = False
        self.trusted = True

    def landed(self, number: int, token: str, size: int, path: Path) -> None:
        """Part ``number`` is written to the data file at ``path``; hash it when its turn comes (see above)."""
        with self.cond:
            if number < self.next:  # a part already hashed was written again: the running hash is stale
                self._distrust()
            if not self.trusted:
                return
            self.landed_parts[number] = (token, size)
            while self.frontier in self.landed_parts:
                self.frontier += 1
            while True:
                if not self.trusted or number < self.next:  # hashed by a thread that went past it
                    return
                if self.frontier <= number:  # an earlier part has not landed: its writer will hash this one
                    self.orphans.add(number)
                    return
                if not self.busy:
                    self.busy = True
                    break
                self.cond.wait()
        self._hash_from(number, path)

    def _hash_from(self, number: int, path: Path) -> None:
        """Hash parts in order up to ``number``, then any orphans after it; the caller holds the turn."""
        fd = -1
        try:
            fd = os.open(path, os.O_RDONLY)
            buffer = bytearray(_HASH_BLOCK)
            while True:
                with self.cond:
                    current = self.next
                    if not self.trusted or (current > number and current not in self.orphans):
                        return
                    token, size = self.landed_parts[current]
                _hash_fd(fd, (current - 1) * self.part_size, size, self.hasher, buffer)
                with self.cond:
                    if self.landed_parts.get(current) != (token, size):  # written again while we read it
                        self._distrust()
                        return
                    self.hashed[current] = (token, size)
                    self.orphans.discard(current)
                    self.next = current + 1
                    self.cond.notify_all()  # a writer waiting on a part now hashed may return
        except (OSError, IntegrityError):
            with self.cond:
                self._distrust()
        finally:
            if fd >= 0:
                os.close(fd)
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def _distrust(self) -> None:
        self.trusted = False
        self.landed_parts.clear()
        self.orphans.clear()
        self.cond.notify_all()

    def digest(self, parts: list[PartInfo]) -> str | None:
        """The sha256 of exactly ``parts`` (numbered 1..n) if this chain hashed them as they landed, else None."""
        with self.cond:
            if not self.trusted or self.busy or self.next != len(parts) + 1:
                return None
            if any(self.hashed.get(part.number) != (part.etag, part.size) for part in parts):
                return None
            return self.hasher.hexdigest()


def _load_start_writeback() -> Callable[[int, int, int], object] | None:
    """Linux's ``sync_file_range(fd, offset, size, SYNC_FILE_RANGE_WRITE)``: start writing a range back to disk
    without waiting for it (only a hint; ``fdatasync`` still decides durability). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda fd, offset, size: function(fd, offset, size, 2)


_start_writeback = _load_start_writeback()


def _hash_fd(fd: int, offset: int, size: int, hasher: Any, buffer: bytearray) -> Any:
    """Feed ``size`` bytes of ``fd`` from ``offset`` to ``hasher`` through ``buffer``; return the hasher."""
    view = memoryview(buffer)
    end = offset + size
    while offset < end:
        count = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
        if count == 0:
            raise IntegrityError(f"the data file ends at byte {offset}, before {end}")
        hasher.update(view[:count])
        offset += count
    return hasher


def _copy_range(source: int, offset: int, dest: int, at: int, length: int, where: str) -> None:
    """Copy ``length`` bytes of ``source`` from ``offset`` to ``dest`` at ``at``: in the kernel
    (``copy_file_range``) where it can, else through a buffer. IntegrityError if the source ends first."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < length:
        count = 0
        if kernel:
            try:
                count = os.copy_file_range(source, dest, length - done, offset + done, at + done)
            except (
                OSError
            ):  # e.g. EXDEV or EINVAL on an older kernel or another file system: copy in user space
                kernel = False
                continue
        else:
            data = os.pread(source, min(_COPY_BLOCK, length - done), offset + done)
            count = len(data)
            written = 0
            while written < count:
                written += os.pwrite(dest, memoryview(data)[written:], at + done + written)
        if count == 0:
            raise IntegrityError(f"{where} ends at byte {offset + done}, before {offset + length}")
        done += count


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _write_marker(path: Path, token: str, size: int) -> None:
    """Claim a part: ``<token> <size>``. A marker torn by a crash does not parse, so it claims nothing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{token} {size}\n".encode())
    finally:
        os.close(fd)


def _read_marker(path: Path) -> tuple[str, int] | None:
    """The ``(token, size)`` a part marker claims, or None if it is missing or torn."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    match = _MARKER.fullmatch(text)
    return (match.group(1).decode(), int(match.group(2))) if match else None
