"""The reference storage backend: a folder on the local filesystem.

Writes go to ``<root>/.tmp/`` first, are fsynced, verified, then ``os.replace``-d into place and the directory
is fsynced: a reader sees the old object or the new one, and a writer killed at any moment leaves at most a
temp file under ``.tmp`` (invisible to ``list``; :meth:`LocalStore.cleanup` removes it). Every path is resolved
with ``realpath`` and must stay under the root, so a symlink planted inside the root cannot lead out of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from archipel.backends.storage.base import ObjectInfo, WithCleanup, WithServerSideCopy
from archipel.errors import NotFound, SpecError

__all__ = ["LocalStore"]

_TMP = ".tmp"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(WithServerSideCopy, WithCleanup):
    """Objects as files under ``root``; keys map to relative paths."""

    scheme = "file"

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
        dest = self._path(key)
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
            os.chmod(tmp, 0o644)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest = self._path(key)  # re-resolve: a parent may have been swapped for a symlink meanwhile
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

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
