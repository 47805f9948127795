"""Object storage through fsspec: ``s3://``, ``gs://``, ``az://`` and ``memory://``.

Object stores publish an object only when its upload completes, so ``put`` streams into the SDK's buffered
writer (multipart on S3, resumable uploads on GCS, staged blocks on Azure), verifies, then commits; on any error
it *discards* the writer, which aborts the multipart upload instead of completing a partial object. A writer
killed mid-upload leaves an unfinished multipart upload, invisible to readers; :meth:`FsspecStore.cleanup`
aborts those. ``memory://`` (in-process tests only) has no such writer, so it spools and publishes in one step.

Filesystems are created with ``skip_instance_cache=True``: fsspec's shared instances would otherwise keep stale
credentials and listings across sites (STYLE: no hidden instance caches).

:class:`S3Store` adds explicit multipart uploads (:class:`WithMultipart`) for ``s3://``: every part is sent with
its SHA-256 (``ChecksumSHA256``, which S3 verifies and rejects with ``BadDigest``), and the part's ETag that comes
back is checked against the MD5 of the bytes sent wherever S3 defines it so (no SSE-KMS or SSE-C), which also
catches corruption on servers that do not verify checksums (moto 5.2.5 echoes ``ChecksumSHA256`` unchecked).
Completing lists each part's ETag and checksum, so S3 refuses a part that changed (``InvalidPart``). S3 cannot
hash an upload before publishing it: ``complete_upload`` takes the whole object's sha256 on the caller's word.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from archipel.backends.storage.base import (
    ObjectInfo,
    PartInfo,
    PutResult,
    WithCleanup,
    WithMultipart,
    WithServerSideCopy,
)
from archipel.errors import IntegrityError, NotFound, SpecError

__all__ = ["FsspecStore", "S3Store"]

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
        self._endpoint = str(dict(options or {}).get("endpoint_url") or "")
        super().__init__(url.rstrip("/"))

    def _location(self) -> Hashable:
        return (self.protocol, self._endpoint, self._root)

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


def _s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated into an OSError, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
        current = current.__cause__ or current.__context__
    return None


def _b64_to_hex(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


class S3Store(FsspecStore, WithMultipart):
    """``s3://`` storage with explicit multipart uploads (see the module docstring for the integrity checks)."""

    min_part_size = 5 * 1024 * 1024
    max_parts = 10_000
    complete_checks_sha256 = False
    # S3 upload ids are URL-safe tokens; they travel as a query parameter, but never let one look like a path
    upload_id_pattern = re.compile(r"[A-Za-z0-9_~+=-][A-Za-z0-9._~+=-]{0,1023}")

    def __init__(
        self, url: str, options: Mapping[str, Any] | None = None, *, block_size: int | None = None
    ) -> None:
        super().__init__(url, options, block_size=block_size)
        if self.protocol not in ("s3", "s3a"):
            raise SpecError(f"S3Store serves s3:// URLs, not {url!r}")

    def _bucket_key(self, key: str) -> tuple[str, str]:
        bucket, _, name = self._path(key).partition("/")
        return bucket, name

    def _missing_upload(self, exc: BaseException, key: str, upload_id: str) -> NotFound | None:
        if _s3_error_code(exc) == "NoSuchUpload" or isinstance(exc, FileNotFoundError):
            return NotFound(f"no multipart upload {upload_id[:24]}... for {key!r} in {self.url}")
        return None

    def _start_upload(self, key: str) -> str:
        bucket, name = self._bucket_key(key)
        response = self._fs.call_s3(
            "create_multipart_upload", Bucket=bucket, Key=name, ChecksumAlgorithm="SHA256"
        )
        return str(response["UploadId"])

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview
    ) -> PartInfo:
        bucket, name = self._bucket_key(key)
        body = bytes(data)
        sha = hashlib.sha256(body).digest()
        checksum = base64.b64encode(sha).decode()
        try:
            response = self._fs.call_s3(
                "upload_part",
                Bucket=bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
        except OSError as exc:
            if (missing := self._missing_upload(exc, key, upload_id)) is not None:
                raise missing from exc
            raise
        etag = str(response.get("ETag", ""))
        where = f"part {number} of the upload of {key!r} to {self.url}"
        echoed = response.get("ChecksumSHA256")
        if echoed is not None and echoed != checksum:
            raise IntegrityError(f"{where}: S3 holds checksum {echoed}, not the {checksum} of the bytes sent")
        sse = str(response.get("ServerSideEncryption") or "")
        if not sse.startswith("aws:kms") and "SSECustomerAlgorithm" not in response:
            # S3 defines a part's ETag as the MD5 of its bytes unless SSE-KMS or SSE-C is on
            md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
            if etag.strip('"') != md5:
                raise IntegrityError(f"{where}: S3 received other bytes (ETag {etag}, MD5 sent {md5})")
        return PartInfo(number, len(body), etag, sha.hex())

    def _list_parts(self, key: str, upload_id: str) -> Iterable[PartInfo]:
        bucket, name = self._bucket_key(key)
        parts: list[PartInfo] = []
        marker = 0
        while True:
            try:
                response = self._fs.call_s3(
                    "list_parts", Bucket=bucket, Key=name, UploadId=upload_id, PartNumberMarker=marker
                )
            except OSError as exc:
                if (missing := self._missing_upload(exc, key, upload_id)) is not None:
                    raise missing from exc
                raise
            for part in response.get("Parts", []):
                sha = _b64_to_hex(part.get("ChecksumSHA256"))
                parts.append(PartInfo(int(part["PartNumber"]), int(part["Size"]), str(part["ETag"]), sha))
            if not response.get("IsTruncated"):
                return parts
            marker = int(response["NextPartNumberMarker"])

    def _complete_upload(
        self, key: str, upload_id: str, parts: list[PartInfo], expected_sha256: str | None
    ) -> PutResult:
        assert expected_sha256 is not None  # complete_upload() requires it here
        bucket, name = self._bucket_key(key)
        listed: list[dict[str, Any]] = []
        for part in parts:
            entry: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
            if part.sha256 is not None:
                entry["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(part.sha256)).decode()
            listed.append(entry)
        try:
            self._fs.call_s3(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},
            )
        except OSError as exc:
            code = _s3_error_code(exc)
            if code in ("InvalidPart", "InvalidPartOrder", "BadDigest", "InvalidDigest"):
                raise IntegrityError(
                    f"S3 refused to complete {key!r} in {self.url}: a part does not hold the bytes it was "
                    f"acknowledged with ({code})"
                ) from exc
            if (missing := self._missing_upload(exc, key, upload_id)) is not None:
                raise missing from exc
            raise
        self._fs.invalidate_cache(self._path(key))
        return PutResult(key=key, size=sum(part.size for part in parts), sha256=expected_sha256)

    def _abort_upload(self, key: str, upload_id: str) -> None:
        bucket, name = self._bucket_key(key)
        try:
            self._fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload_id)
        except OSError as exc:
            if self._missing_upload(exc, key, upload_id) is None:
                raise
