"""The reference storage backend: a folder on the local filesystem.

Writes go to ``<root>/.tmp/`` first, are fsynced, verified, then ``os.replace``-d into place and the directory
is fsynced: a reader sees the old object or the new one, and a writer killed at any moment leaves at most a
temp file under ``.tmp`` (invisible to ``list``; :meth:`LocalStore.cleanup` removes it). Every path is resolved
with ``realpath`` and must stay under the root, so a symlink planted inside the root cannot lead out of it.

Multipart uploads live in ``<root>/.tmp/mpu-<upload id>/``: a ``key`` file naming the target key and one file per
part, ``<number:05d>-<sha256 of its bytes>.part``, written to a temp name, fsynced and renamed, so a listed part
is always whole and its name says what it must hash to. Completing assembles the parts in order into a temp
file while hashing each part (a part altered since its upload is refused) and the whole (checked against
``expected_sha256``), fsyncs it and only then ``os.replace``-s it into place. ``cleanup`` removes abandoned
upload folders like any other stale ``.tmp`` entry; the folder's mtime moves with every part written.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from archipel.backends.storage.base import (
    ObjectInfo,
    PartInfo,
    PutResult,
    WithCleanup,
    WithMultipart,
    WithServerSideCopy,
)
from archipel.errors import IntegrityError, NotFound, SpecError

__all__ = ["LocalStore"]

_TMP = ".tmp"
_MPU_PREFIX = "mpu-"
_PART_FILE = re.compile(r"(\d{5})-([0-9a-f]{64})\.part")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_COPY_BLOCK = 8 * 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(WithServerSideCopy, WithCleanup, WithMultipart):
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
        self._path(key)  # refuse a key that resolves outside the root before any state exists
        upload_id = secrets.token_hex(16)
        folder = self.root / _TMP / f"{_MPU_PREFIX}{upload_id}"
        folder.mkdir(parents=True)
        with open(folder / "key", "w", encoding="utf-8") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(folder)
        _fsync_dir(folder.parent)
        return upload_id

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview
    ) -> PartInfo:
        folder = self._upload_dir(key, upload_id)
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
        return PartInfo(number, len(data), sha, sha)

    def _list_parts(self, key: str, upload_id: str) -> Iterable[PartInfo]:
        newest: dict[int, tuple[int, PartInfo]] = {}
        for entry in os.scandir(self._upload_dir(key, upload_id)):
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
        self._path(key)
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
        shutil.rmtree(folder, ignore_errors=True)
