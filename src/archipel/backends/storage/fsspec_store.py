"""Object storage through fsspec: ``s3://``, ``gs://``, ``az://`` and ``memory://``.

Object stores publish an object only when its upload completes, so ``put`` streams into the SDK's buffered
writer (multipart on S3, resumable uploads on GCS, staged blocks on Azure), verifies, then commits; on any error
it *discards* the writer, which aborts the multipart upload instead of completing a partial object. A writer
killed mid-upload leaves an unfinished multipart upload, invisible to readers; :meth:`FsspecStore.cleanup`
aborts those. ``memory://`` (in-process tests only) has no such writer, so it spools and publishes in one step.

Filesystems are created with ``skip_instance_cache=True``: fsspec's shared instances would otherwise keep stale
credentials and listings across sites (STYLE: no hidden instance caches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from archipel.backends.storage.base import ObjectInfo, WithCleanup, WithServerSideCopy
from archipel.errors import SpecError

__all__ = ["FsspecStore"]

# protocols whose writers publish only on commit and can discard an unfinished upload
_COMMITTING_WRITERS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def _parse_modified(info: Mapping[str, Any]) -> datetime | None:
    for field in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
    return None


class FsspecStore(WithServerSideCopy, WithCleanup):
    """A bucket (and optional prefix) of an fsspec filesystem. ``options`` go to the filesystem unchanged."""

    def __init__(
        self, url: str, options: Mapping[str, Any] | None = None, *, block_size: int | None = None
    ) -> None:
        import fsspec

        parts = urlsplit(url)
        self.protocol = parts.scheme
        self.scheme = parts.scheme
        self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **dict(options or {}))
        self._root = self._fs._strip_protocol(url).rstrip("/")
        if not self._root.strip("/"):
            raise SpecError(
                f"storage URL {url!r} needs a bucket or container (e.g. {self.protocol}://bucket/prefix)"
            )
        self._block_size = block_size
        super().__init__(url.rstrip("/"))

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"

    def _put(self, key: str, chunks: Iterator[bytes], verify: Callable[[], None]) -> None:
        path = self._path(key)
        if self.protocol not in _COMMITTING_WRITERS:
            data = b"".join(chunks)
            verify()
            self._fs.pipe_file(path, data)
            return
        kwargs = {"block_size": self._block_size} if self._block_size else {}
        handle = self._fs.open(path, "wb", **kwargs)
        try:
            for chunk in chunks:
                handle.write(chunk)
            verify()
        except BaseException:
            with suppress(Exception):  # the original error matters more than a failed abort
                handle.discard()
            handle.closed = True  # a discarded writer must never be flushed (that would publish it)
            raise
        handle.close()
        self._fs.invalidate_cache(path)

    def _get(self, key: str) -> bytes:
        return self._fs.cat_file(self._path(key))

    def _open(self, key: str) -> IO[bytes]:
        self._fs.invalidate_cache(self._path(key))
        return self._fs.open(self._path(key), "rb")

    def _read_range(self, key: str, start: int, length: int) -> bytes:
        return self._fs.cat_file(self._path(key), start=start, end=start + length)

    def _info(self, key: str) -> ObjectInfo:
        path = self._path(key)
        self._fs.invalidate_cache(path)
        info = self._fs.info(path)
        if info.get("type") == "directory":
            raise FileNotFoundError(key)
        return ObjectInfo(key, int(info["size"]), _parse_modified(info))

    def _list(self, prefix: str) -> Iterable[ObjectInfo]:
        base = prefix if prefix.endswith("/") or not prefix else prefix.rpartition("/")[0]
        start = f"{self._root}/{base}".rstrip("/")
        self._fs.invalidate_cache()
        try:
            found = self._fs.find(start, detail=True, withdirs=False)
        except FileNotFoundError:
            return
        root = self._root + "/"
        for path, info in found.items():
            key = path[len(root) :]
            if not path.startswith(root) or info.get("type") == "directory" or not key.startswith(prefix):
                continue
            if any(segment.startswith(".") or not segment for segment in key.split("/")):
                continue  # not an archipel key (written by someone else): never hand it out
            yield ObjectInfo(key, int(info.get("size") or 0), _parse_modified(info))

    def _delete(self, key: str) -> bool:
        path = self._path(key)
        self._fs.invalidate_cache(path)
        if not self._fs.exists(path):
            return False
        self._fs.rm_file(path)
        self._fs.invalidate_cache(path)
        return True

    def _copy(self, source: str, dest: str) -> None:
        self._fs.copy(self._path(source), self._path(dest))
        self._fs.invalidate_cache(self._path(dest))

    def _cleanup(self, older_than_s: float) -> int:
        """Abort multipart uploads under this store's prefix that started more than ``older_than_s`` ago."""
        if self.protocol not in ("s3", "s3a"):
            return 0
        bucket, _, prefix = self._root.partition("/")
        cutoff = time.time() - older_than_s
        aborted = 0
        for upload in self._fs.list_multipart_uploads(bucket):
            key = upload["Key"]
            if prefix and not key.startswith(prefix + "/"):
                continue
            initiated = upload.get("Initiated")
            if isinstance(initiated, datetime) and initiated.timestamp() > cutoff:
                continue
            self._fs.abort_mpu(bucket, key, upload["UploadId"])
            aborted += 1
        return aborted

    def multipart_uploads(self) -> list[dict[str, Any]]:
        """Unfinished multipart uploads under this store's prefix (S3 only; empty elsewhere)."""
        if self.protocol not in ("s3", "s3a"):
            return []
        bucket, _, prefix = self._root.partition("/")
        return [
            u
            for u in self._fs.list_multipart_uploads(bucket)
            if not prefix or u["Key"].startswith(prefix + "/")
        ]
