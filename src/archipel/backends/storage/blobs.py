"""Content-addressed blobs on top of any :class:`KeyValueStore`.

A blob lives at ``blobs/sha256/<first two hex digits>/<sha256>``; its name *is* its checksum, so a put of bytes
already stored is free (deduplication), and every read is verified: ``get`` checks before returning, ``open``
checks when the stream reaches its end and raises :class:`IntegrityError` instead of a clean EOF.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from archipel.backends.storage.base import CHUNK_SIZE, Data, KeyValueStore, iter_chunks, validate_sha256
from archipel.errors import IntegrityError, NotFound

__all__ = ["BlobRef", "BlobStore", "VerifyingReader"]

_SPOOL_IN_MEMORY = 32 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


class VerifyingReader:
    """A read-only stream that raises :class:`IntegrityError` at the end if the bytes do not hash to ``sha256``."""

    def __init__(self, raw: IO[bytes], sha256: str, where: str) -> None:
        self._raw = raw
        self._expected = sha256
        self._where = where
        self._hasher = hashlib.sha256()
        self._done = False

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        self._hasher.update(chunk)
        if not self._done and (not chunk or size is None or size < 0):
            self._done = True
            actual = self._hasher.hexdigest()
            if actual != self._expected:
                raise IntegrityError(f"{self._where} is corrupt: its bytes hash to sha256 {actual}")
        return chunk

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobStore:
    """Immutable blobs named by their sha256 in ``kv`` under ``prefix``."""

    def __init__(self, kv: KeyValueStore, prefix: str = "blobs/sha256") -> None:
        self.kv = kv
        self.prefix = prefix.strip("/")

    def __repr__(self) -> str:
        return f"BlobStore({self.kv!r}, prefix={self.prefix!r})"

    def key(self, sha256: str) -> str:
        validate_sha256(sha256)
        return f"{self.prefix}/{sha256[:2]}/{sha256}"

    def put(self, data: Data, *, sha256: str | None = None) -> BlobRef:
        """Store ``data``; with ``sha256`` given it is verified before it becomes visible. Idempotent."""
        if sha256 is not None:
            return self._put_known(data, validate_sha256(sha256))
        if isinstance(data, bytes | bytearray | memoryview):
            return self._put_known(data, hashlib.sha256(data).hexdigest())
        # unknown digest and a stream: spool once to learn the name, then upload the spool
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
            hasher = hashlib.sha256()
            for chunk in iter_chunks(data):
                hasher.update(chunk)
                spool.write(chunk)
            spool.seek(0)
            return self._put_known(spool, hasher.hexdigest())

    def _put_known(self, data: Data, sha256: str) -> BlobRef:
        key = self.key(sha256)
        try:
            return BlobRef(sha256, self.kv.size(key))  # already stored: content addressing dedupes
        except NotFound:
            pass
        result = self.kv.put(key, data, expected_sha256=sha256)
        return BlobRef(sha256, result.size)

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, verified. Raises :class:`NotFound` or :class:`IntegrityError`."""
        key = self.key(sha256)
        data = self.kv.get(key)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise IntegrityError(f"blob {key} in {self.kv.url} is corrupt: its bytes hash to sha256 {actual}")
        return data

    def open(self, sha256: str) -> VerifyingReader:
        """A stream over the blob that raises :class:`IntegrityError` at its end if the bytes are wrong."""
        key = self.key(sha256)
        return VerifyingReader(self.kv.open(key), sha256, f"blob {key} in {self.kv.url}")

    def iter_bytes(self, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with self.open(sha256) as reader:
            while chunk := reader.read(chunk_size):
                yield chunk

    def verify(self, sha256: str) -> BlobRef:
        """Read the whole blob and check it; raises :class:`IntegrityError` on a mismatch."""
        size = sum(len(chunk) for chunk in self.iter_bytes(sha256))
        return BlobRef(sha256, size)

    def exists(self, sha256: str) -> bool:
        return self.kv.exists(self.key(sha256))

    def size(self, sha256: str) -> int:
        return self.kv.size(self.key(sha256))

    def delete(self, sha256: str) -> bool:
        return self.kv.delete(self.key(sha256))

    def list(self) -> list[BlobRef]:
        refs = []
        for info in self.kv.list(self.prefix + "/"):
            name = info.key.rsplit("/", 1)[-1]
            if _HEX64.fullmatch(name) and info.key == f"{self.prefix}/{name[:2]}/{name}":
                refs.append(BlobRef(name, info.size))
        return refs
