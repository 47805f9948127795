"""The storage interface every site backend implements, and the capability mixins.

A :class:`KeyValueStore` maps validated keys (see :mod:`archipel.backends.storage.keys`) to immutable byte
objects. The contract, which the conformance suite in ``tests/conformance/storage.py`` checks for every backend:

- ``put`` is atomic: readers see the old object or the whole new one, never a prefix; a writer that dies or fails
  leaves nothing visible. With ``expected_sha256`` the bytes are verified *before* they become visible.
- ``get``/``open``/``read_range`` raise :class:`NotFound` for a missing key; ``list`` is recursive and sorted.
- Keys never leave the store's root; bad keys raise :class:`SpecError` before any I/O.
- Backend failures surface as :class:`StorageError` (never a raw SDK exception), so callers can retry elsewhere.

Public methods validate, wrap errors and call the ``_hooks`` a backend implements (STYLE 7). Optional abilities
are mixins; :meth:`KeyValueStore.features` derives the feature set from the class (STYLE 1).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, ClassVar, TypeAlias

from archipel.backends.storage.keys import validate_key, validate_prefix
from archipel.errors import ArchipelError, IntegrityError, NotFound, SpecError, StorageError

__all__ = [
    "CHUNK_SIZE",
    "Data",
    "KeyValueStore",
    "ObjectInfo",
    "PartInfo",
    "PutResult",
    "WithCleanup",
    "WithMultipart",
    "WithPartCopy",
    "WithServerSideCopy",
    "iter_chunks",
    "validate_sha256",
]

CHUNK_SIZE = 8 * 1024 * 1024
Data: TypeAlias = bytes | bytearray | memoryview | IO[bytes] | Iterable[bytes]
_SHA256 = re.compile(r"[0-9a-f]{64}")


def validate_sha256(value: str) -> str:
    """Return ``value`` if it is a lower-case hex sha256 digest; raise :class:`SpecError` otherwise."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise SpecError(f"{value!r} is not a sha256 digest (64 lower-case hex characters)")
    return value


def iter_chunks(data: Data, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield ``data`` (bytes, a binary file object or an iterable of bytes) as chunks of at most ``chunk_size``."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), chunk_size):
            yield bytes(view[start : start + chunk_size])
        return
    read = getattr(data, "read", None)
    if callable(read):
        while chunk := read(chunk_size):
            yield chunk
        return
    for chunk in data:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise SpecError(f"put() streams bytes; got a chunk of type {type(chunk).__name__}")
        yield bytes(chunk)


class _SourceFailed(Exception):
    """Carries an exception raised by the data a caller passed to ``put`` through the backend's hooks."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None


@dataclass(frozen=True)
class PutResult:
    key: str
    size: int
    sha256: str


class KeyValueStore(ABC):
    """Immutable objects under validated keys. Subclasses implement the ``_hooks``; callers use the rest."""

    scheme: ClassVar[str] = ""
    feature: ClassVar[str | None] = None

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:  # never show options: they may hold credentials
        return f"{type(self).__name__}({self.url!r})"

    @classmethod
    def features(cls) -> frozenset[str]:
        """Capabilities beyond the required core, derived from the mixins this class inherits."""
        return frozenset(f for klass in cls.__mro__ if (f := klass.__dict__.get("feature")))

    # -- public API -------------------------------------------------------------------------------------------

    def put(self, key: str, data: Data, *, expected_sha256: str | None = None) -> PutResult:
        """Store ``data`` under ``key`` atomically, streaming; verify ``expected_sha256`` before publishing."""
        validate_key(key)
        if expected_sha256 is not None:
            validate_sha256(expected_sha256)
        hasher = hashlib.sha256()
        size = 0

        def chunks() -> Iterator[bytes]:
            nonlocal size
            source = iter_chunks(data)
            while True:
                try:
                    chunk = next(source)
                except StopIteration:
                    return
                except Exception as exc:  # the caller's stream failed, not the backend
                    raise _SourceFailed(exc) from exc
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        def verify() -> None:
            actual = hasher.hexdigest()
            if expected_sha256 is not None and actual != expected_sha256:
                raise IntegrityError(
                    f"refused to store {key!r} in {self.url}: its {size} bytes hash to sha256 {actual}, "
                    f"not the expected {expected_sha256}"
                )

        try:
            with self._errors("put", key):
                self._put(key, chunks(), verify)
        except _SourceFailed as failed:
            raise failed.cause from None  # nothing was published; the caller sees its own error
        return PutResult(key=key, size=size, sha256=hasher.hexdigest())

    def get(self, key: str) -> bytes:
        """The whole object. Raises :class:`NotFound`."""
        with self._errors("get", validate_key(key)):
            return self._get(key)

    def open(self, key: str) -> IO[bytes]:
        """A binary file object for streaming reads; the caller closes it. Raises :class:`NotFound`."""
        with self._errors("open", validate_key(key)):
            return self._open(key)

    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The object as a stream of chunks."""
        with self.open(key) as handle, self._errors("read", key):
            while chunk := handle.read(chunk_size):
                yield chunk

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""
        if start < 0 or length < 0:
            raise SpecError(f"read_range needs start >= 0 and length >= 0, got {start} and {length}")
        with self._errors("read_range", validate_key(key)):
            return self._read_range(key, start, length) if length else b""

    def info(self, key: str) -> ObjectInfo:
        """Size and modification time. Raises :class:`NotFound`."""
        with self._errors("info", validate_key(key)):
            return self._info(key)

    def size(self, key: str) -> int:
        return self.info(key).size

    def exists(self, key: str) -> bool:
        try:
            self.info(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive), sorted by key."""
        with self._errors("list", validate_prefix(prefix)):
            return sorted(self._list(prefix), key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed. Deleting a missing key is not an error."""
        with self._errors("delete", validate_key(key)):
            return self._delete(key)

    # -- hooks ------------------------------------------------------------------------------------------------

    @abstractmethod
    def _put(self, key: str, chunks: Iterator[bytes], verify: Callable[[], None]) -> None:
        """Write every chunk, call ``verify()`` (it raises on a mismatch), and only then publish ``key``.

        Any exception, including one from ``verify`` or from the chunk iterator, must leave nothing visible.
        """

    @abstractmethod
    def _get(self, key: str) -> bytes: ...

    @abstractmethod
    def _open(self, key: str) -> IO[bytes]: ...

    @abstractmethod
    def _read_range(self, key: str, start: int, length: int) -> bytes: ...

    @abstractmethod
    def _info(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterable[ObjectInfo]: ...

    @abstractmethod
    def _delete(self, key: str) -> bool: ...

    @contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        """Turn SDK and OS errors into archipel's error tree; archipel's own errors pass through."""
        try:
            yield
        except (ArchipelError, _SourceFailed):
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"no object {key!r} in {self.url}") from exc
        except PermissionError as exc:
            raise StorageError(f"{op} {key!r} on {self.url}: permission denied ({exc})") from exc
        except Exception as exc:
            raise StorageError(f"{op} {key!r} on {self.url} failed: {type(exc).__name__}: {exc}") from exc


class WithServerSideCopy(KeyValueStore):
    """The backend copies an object within itself without streaming it through this process."""

    feature = "server_side_copy"

    def copy(self, source: str, dest: str) -> ObjectInfo:
        validate_key(source)
        validate_key(dest)
        with self._errors("copy", source):
            self._copy(source, dest)
        return self.info(dest)

    def shares_location(self, other: KeyValueStore) -> bool:
        """Whether ``other`` addresses the very same objects through the same service as this store, so that
        :meth:`copy` can move an object from one to the other without streaming it through this process."""
        return type(other) is type(self) and self._location() == other._location()  # type: ignore[attr-defined]

    def _location(self) -> Hashable:
        """What identifies the objects this store addresses (never credentials); two stores with equal
        locations see the same keys. The URL, unless a backend knows better (e.g. an endpoint)."""
        return self.url

    @abstractmethod
    def _copy(self, source: str, dest: str) -> None: ...


class WithCleanup(KeyValueStore):
    """The backend can remove what dead writers left behind (temp files, unfinished multipart uploads)."""

    feature = "cleanup"

    def cleanup(self, older_than_s: float = 3600.0) -> int:
        """Remove leftovers older than ``older_than_s`` seconds; return how many were removed."""
        if older_than_s < 0:
            raise SpecError(f"older_than_s must be >= 0, got {older_than_s}")
        with self._errors("cleanup", ""):
            return self._cleanup(older_than_s)

    @abstractmethod
    def _cleanup(self, older_than_s: float) -> int: ...


@dataclass(frozen=True)
class PartInfo:
    """One part of a multipart upload as the backend holds it.

    ``etag`` is the backend's tag for the part (what completing the upload needs); ``sha256`` is the hex
    sha256 of the part's bytes when the backend reports it (``None`` when it does not, e.g. moto's listings).
    """

    number: int
    size: int
    etag: str
    sha256: str | None = None


_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
MAX_PART_NUMBER = 10_000


class WithMultipart(KeyValueStore):
    """The backend assembles an object from parts uploaded independently, in any order and from any process.

    Contract, checked by ``MultipartConformance`` in ``tests/conformance/storage.py``:

    - Nothing is visible under ``key`` before :meth:`complete_upload` returns; :meth:`abort_upload` (or the
      store's ``cleanup``) removes every trace of an unfinished upload.
    - Parts are numbered from 1; every part but the last holds at least ``min_part_size`` bytes. Uploading a
      number again replaces that part. :meth:`list_parts` reports what the backend really holds, so a caller
      that died can resume by sending only the missing parts.
    - :meth:`complete_upload` publishes the listed parts, in ascending order, atomically, after checking that
      each part still holds the bytes it was acknowledged with (its ``etag``/``sha256``).
      Where ``complete_checks_sha256`` is true the store also hashes the assembled object and, on a mismatch
      with ``expected_sha256``, raises :class:`IntegrityError` and publishes nothing. Where it is false (S3:
      an upload's parts cannot be read before it completes) the store cannot hash the whole object, so it
      requires ``expected_sha256`` and reports it in the result on the caller's word: the caller must have
      hashed, in order, the bytes it uploaded (the transfer engine does).
    - Upload ids are opaque strings; any id that comes back from outside (a resume manifest) is validated
      against ``upload_id_pattern`` before use, so it can never become a path or inject a parameter.
    - ``start_upload(key, part_size=n)`` is a promise from the caller: every part but the last holds exactly
      ``n`` bytes (the last at most ``n``), so part ``k`` starts at byte ``(k - 1) * n`` of the object. A store
      may use it to write each part in place, straight into the object it will publish (a local folder does);
      such a store may then refuse a part larger than ``n`` and require :meth:`complete_upload` to list parts
      ``1..k`` without gaps and with ``expected_sha256``. A store that cannot use the promise ignores it.
    """

    feature = "multipart"
    min_part_size: ClassVar[int] = 5 * 1024 * 1024
    max_parts: ClassVar[int] = MAX_PART_NUMBER
    complete_checks_sha256: ClassVar[bool] = False
    upload_id_pattern: ClassVar[re.Pattern[str]] = _UPLOAD_ID

    def _check_upload_id(self, upload_id: str) -> str:
        if not isinstance(upload_id, str) or not self.upload_id_pattern.fullmatch(upload_id):
            shown = repr(upload_id)[:60]
            raise SpecError(f"{shown} is not a valid multipart upload id for {self.url}")
        return upload_id

    def _check_part_number(self, number: int) -> int:
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= self.max_parts:
            raise SpecError(f"part numbers run from 1 to {self.max_parts}, got {number!r}")
        return number

    def start_upload(self, key: str, *, part_size: int | None = None) -> str:
        """Begin an upload to ``key``; return its id. Nothing is visible under ``key`` yet.

        ``part_size`` promises that every part but the last holds exactly that many bytes (see the class
        contract); stores that can lay parts out in place use it, the others ignore it."""
        validate_key(key)
        if part_size is not None and (
            isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < 1
        ):
            raise SpecError(f"part_size must be an integer >= 1, got {part_size!r}")
        with self._errors("start_upload", key):
            if part_size is None:
                upload_id = self._start_upload(key)
            else:
                upload_id = self._start_upload_with_part_size(key, part_size)
        return self._check_upload_id(upload_id)

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview
    ) -> PartInfo:
        """Store part ``number`` (1-based) of the upload durably and return what the backend acknowledged."""
        validate_key(key)
        self._check_upload_id(upload_id)
        self._check_part_number(number)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SpecError(f"upload_part takes bytes, not {type(data).__name__}")
        with self._errors("upload_part", key):
            return self._upload_part(key, upload_id, number, data)

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """The parts the backend holds for this upload, by number. Raises :class:`NotFound` if it is gone."""
        validate_key(key)
        self._check_upload_id(upload_id)
        with self._errors("list_parts", key):
            return sorted(self._list_parts(key, upload_id), key=lambda part: part.number)

    def complete_upload(
        self, key: str, upload_id: str, parts: list[PartInfo], *, expected_sha256: str | None = None
    ) -> PutResult:
        """Publish ``parts`` (ascending numbers) as the object ``key``; see the class contract."""
        validate_key(key)
        self._check_upload_id(upload_id)
        if not parts:
            raise SpecError(f"completing the upload of {key!r} needs at least one part")
        numbers = [self._check_part_number(part.number) for part in parts]
        if any(b <= a for a, b in itertools.pairwise(numbers)):
            raise SpecError(f"parts must be listed in strictly ascending order, got {numbers}")
        if expected_sha256 is not None:
            validate_sha256(expected_sha256)
        elif not self.complete_checks_sha256:
            raise SpecError(
                f"{type(self).__name__} cannot hash an upload before publishing it: pass the expected_sha256 "
                "of the bytes uploaded, hashed in order"
            )
        with self._errors("complete_upload", key):
            return self._complete_upload(key, upload_id, parts, expected_sha256)

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Discard the upload and its parts. Aborting an upload that is already gone is not an error."""
        validate_key(key)
        self._check_upload_id(upload_id)
        with self._errors("abort_upload", key):
            self._abort_upload(key, upload_id)

    @abstractmethod
    def _start_upload(self, key: str) -> str: ...

    def _start_upload_with_part_size(self, key: str, part_size: int) -> str:
        """Begin an upload whose parts but the last all hold ``part_size`` bytes; by default the promise is
        not used."""
        return self._start_upload(key)

    @abstractmethod
    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview
    ) -> PartInfo:
        """Store the part durably (it survives this process) before returning; raise NotFound if the upload
        is gone."""

    @abstractmethod
    def _list_parts(self, key: str, upload_id: str) -> Iterable[PartInfo]: ...

    @abstractmethod
    def _complete_upload(
        self, key: str, upload_id: str, parts: list[PartInfo], expected_sha256: str | None
    ) -> PutResult: ...

    @abstractmethod
    def _abort_upload(self, key: str, upload_id: str) -> None: ...


class WithPartCopy(WithMultipart):
    """Multipart stores that can fill a part straight from another store's object, without the bytes passing
    through this process (a local folder from another local folder: ``copy_file_range`` in the kernel)."""

    def can_copy_part_from(self, source: KeyValueStore) -> bool:
        """Whether :meth:`copy_part_from` can read from ``source`` directly."""
        return False

    def copy_part_from(
        self,
        key: str,
        upload_id: str,
        number: int,
        source: KeyValueStore,
        source_key: str,
        offset: int,
        length: int,
    ) -> PartInfo:
        """Part ``number`` of the upload holds ``length`` bytes of ``source_key`` in ``source`` from ``offset``:
        the same contract as :meth:`upload_part`. :class:`IntegrityError` if the source ends before
        ``offset + length``; :class:`SpecError` unless :meth:`can_copy_part_from` says yes."""
        validate_key(key)
        validate_key(source_key)
        self._check_upload_id(upload_id)
        self._check_part_number(number)
        if offset < 0 or length < 1:
            raise SpecError(f"copy_part_from needs offset >= 0 and length >= 1, got {offset} and {length}")
        if not self.can_copy_part_from(source):
            raise SpecError(f"{self.url} cannot copy parts from {source.url}")
        with self._errors("copy_part_from", key):
            return self._copy_part_from(key, upload_id, number, source, source_key, offset, length)

    @abstractmethod
    def _copy_part_from(
        self,
        key: str,
        upload_id: str,
        number: int,
        source: KeyValueStore,
        source_key: str,
        offset: int,
        length: int,
    ) -> PartInfo: ...
