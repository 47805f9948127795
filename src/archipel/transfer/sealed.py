"""Encryption at rest: objects sealed with AES-256-GCM in independently authenticated chunks.

A sealed object is::

    b"ARCHSEAL" | u32 big-endian header length | header (canonical JSON) | chunk 0 | chunk 1 | ... | chunk n-1

with the header ``{"v": 1, "alg": "AES-256-GCM", "key_id", "chunk_size", "size", "sha256", "nonce_prefix"}``:
``key_id`` is the first 16 hex digits of the key's sha256 (it names the key, never reveals it), ``size`` and
``sha256`` are the *plaintext's* (an object's identity does not change when it is sealed), ``nonce_prefix`` is 8
random bytes drawn per object. Plaintext chunk ``i`` (``chunk_size`` bytes, the last one shorter; an empty
object has one empty chunk so its header is still authenticated) is stored as
``AESGCM.encrypt(nonce_prefix | u32 i, chunk, aad = sha256(header bytes) | u64 i | final flag)`` where the
header bytes are everything before chunk 0. Hence:

- every chunk has its own nonce, and the GCM tag binds it to its position, to being (or not being) the last
  one and to this very object's header: reordered, dropped, truncated, appended or spliced-in chunks, and any
  edit to the header, fail authentication;
- chunk ``i`` starts at ``header_size + i * (chunk_size + 16)``, so a reader fetches and opens any chunk alone
  (``read_range``) and a writer seals parts in parallel;
- a chunk is only ever re-sealed with its nonce for the very same plaintext (the transfer engine checks the
  plaintext's sha256 before sealing a chunk again), so a GCM nonce never covers two different plaintexts.

Failures: a tampered or truncated object raises :class:`IntegrityError` naming the object and the chunk; a key
whose id differs from the header's raises :class:`IntegrityError` naming both key ids. No message, repr or log
ever shows key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from archipel.backends.storage.base import CHUNK_SIZE, Data, KeyValueStore, iter_chunks, validate_sha256
from archipel.errors import IntegrityError, SpecError

__all__ = [
    "MAGIC",
    "TAG_SIZE",
    "DataKey",
    "SealedHeader",
    "load_key",
    "open_bytes",
    "open_chunk",
    "open_stream",
    "read_header",
    "seal_bytes",
    "seal_chunk",
    "seal_stream",
]

MAGIC = b"ARCHSEAL"
TAG_SIZE = 16
_PREFIX = len(MAGIC) + 4
_MAX_HEADER = 4096
_MAX_CHUNK = 1 << 31
_ALG = "AES-256-GCM"
_FIELDS = {"v", "alg", "key_id", "chunk_size", "size", "sha256", "nonce_prefix"}
_HEX16 = re.compile(r"[0-9a-f]{16}")


# -- keys ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DataKey:
    """A 256-bit data key. Its bytes never appear in a repr, a message or a log; ``key_id`` names it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != 32:
            raise SpecError("a data key is exactly 32 bytes (AES-256)")

    @cached_property
    def key_id(self) -> str:
        """The first 16 hex digits of the key's sha256."""
        return hashlib.sha256(self.secret).hexdigest()[:16]

    @cached_property
    def _aead(self) -> AESGCM:
        return AESGCM(self.secret)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataKey) and other.key_id == self.key_id and other.secret == self.secret

    def __hash__(self) -> int:
        return hash(self.key_id)

    @classmethod
    def generate(cls) -> DataKey:
        return cls(os.urandom(32))


def _decode_key(raw: bytes, source: str) -> DataKey:
    """32 raw bytes, 64 hex characters or base64 of 32 bytes; the message names ``source``, never the content."""
    if len(raw) == 32:
        return DataKey(raw)
    text = raw.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{64}", text):
        return DataKey(bytes.fromhex(text.decode()))
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            decoded = decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(decoded) == 32:
            return DataKey(decoded)
    raise SpecError(
        f"{source} does not hold a 256-bit key: expected 32 raw bytes, 64 hex characters or base64 of 32 bytes"
    )


def load_key(key_file: Path | None = None, key_env: str | None = None) -> DataKey:
    """Load the data key from ``key_file`` (mode 600 or stricter) or from the variable named ``key_env``.

    Exactly one source must be given. Raises :class:`SpecError` naming the file or variable, never the key.
    """
    if (key_file is None) == (key_env is None):
        raise SpecError("give exactly one of key_file and key_env for the data key")
    if key_file is not None:
        path = Path(key_file)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise SpecError(f"key file {path} does not exist") from None
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SpecError(
                f"key file {path} is accessible to its group or to others (mode {stat.S_IMODE(info.st_mode):o}); "
                f"run: chmod 600 {path}"
            )
        return _decode_key(path.read_bytes(), f"key file {path}")
    assert key_env is not None
    value = os.environ.get(key_env)
    if not value:
        raise SpecError(f"the environment variable {key_env} that should hold the data key is not set")
    return _decode_key(value.encode(), f"the environment variable {key_env}")


# -- header -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedHeader:
    """The header of a sealed object, and the layout it implies. ``raw`` is the exact bytes before chunk 0."""

    key_id: str
    chunk_size: int
    size: int
    sha256: str
    nonce_prefix: bytes
    raw: bytes = field(repr=False, compare=False, default=b"")

    @classmethod
    def new(cls, key: DataKey, *, size: int, sha256: str, chunk_size: int = CHUNK_SIZE) -> SealedHeader:
        """A header for a new object, with a fresh random nonce prefix."""
        validate_sha256(sha256)
        if not 1 <= chunk_size <= _MAX_CHUNK or size < 0:
            raise SpecError(
                f"a sealed object needs 1 <= chunk_size <= 2**31 and size >= 0, got {chunk_size}, {size}"
            )
        header = cls(key.key_id, chunk_size, size, sha256, os.urandom(8))
        if header.n_chunks > 0xFFFFFFFF:
            raise SpecError(f"{size} bytes in chunks of {chunk_size} need more than 2**32 chunks")
        return header.with_raw()

    def with_raw(self) -> SealedHeader:
        body = json.dumps(
            {
                "v": 1,
                "alg": _ALG,
                "key_id": self.key_id,
                "chunk_size": self.chunk_size,
                "size": self.size,
                "sha256": self.sha256,
                "nonce_prefix": self.nonce_prefix.hex(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        return SealedHeader(
            self.key_id,
            self.chunk_size,
            self.size,
            self.sha256,
            self.nonce_prefix,
            MAGIC + struct.pack(">I", len(body)) + body,
        )

    @staticmethod
    def length(prefix: bytes, *, where: str = "object") -> int:
        """The header's total size, from at least its first 12 bytes."""
        if len(prefix) < _PREFIX or prefix[: len(MAGIC)] != MAGIC:
            raise IntegrityError(f"{where} is not a sealed object (no ARCHSEAL header)")
        (body,) = struct.unpack(">I", prefix[len(MAGIC) : _PREFIX])
        if not 2 <= body <= _MAX_HEADER:
            raise IntegrityError(f"{where} has a corrupt sealed header (length {body})")
        return _PREFIX + body

    @classmethod
    def parse(cls, data: bytes, *, where: str = "object") -> SealedHeader:
        """Parse the header at the start of ``data`` (which may continue past it). Raises IntegrityError."""
        total = cls.length(data[:_PREFIX], where=where)
        if len(data) < total:
            raise IntegrityError(f"{where} is truncated inside its sealed header")
        try:
            fields = json.loads(data[_PREFIX:total])
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise IntegrityError(f"{where} has a corrupt sealed header (not JSON)") from None
        if not isinstance(fields, dict) or set(fields) != _FIELDS:
            raise IntegrityError(f"{where} has a corrupt sealed header (unexpected fields)")
        ints = (fields["v"], fields["chunk_size"], fields["size"])
        if any(isinstance(v, bool) or not isinstance(v, int) for v in ints) or fields["v"] != 1:
            raise IntegrityError(f"{where} has a sealed header of an unknown version or with corrupt numbers")
        strings = (fields["alg"], fields["key_id"], fields["sha256"], fields["nonce_prefix"])
        if (
            not all(isinstance(v, str) for v in strings)
            or fields["alg"] != _ALG
            or not _HEX16.fullmatch(fields["key_id"])
            or not _HEX16.fullmatch(fields["nonce_prefix"])
            or not re.fullmatch(r"[0-9a-f]{64}", fields["sha256"])
            or not 1 <= fields["chunk_size"] <= _MAX_CHUNK
            or fields["size"] < 0
        ):
            raise IntegrityError(f"{where} has a corrupt sealed header (bad field values)")
        header = cls(
            fields["key_id"],
            fields["chunk_size"],
            fields["size"],
            fields["sha256"],
            bytes.fromhex(fields["nonce_prefix"]),
            bytes(data[:total]),
        )
        if header.n_chunks > 0xFFFFFFFF:
            raise IntegrityError(f"{where} has a corrupt sealed header (too many chunks)")
        return header

    def to_bytes(self) -> bytes:
        return self.raw if self.raw else self.with_raw().raw

    @property
    def header_size(self) -> int:
        return len(self.to_bytes())

    @cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    @property
    def sealed_size(self) -> int:
        return self.header_size + self.size + TAG_SIZE * self.n_chunks

    def plain_range(self, index: int) -> tuple[int, int]:
        """``(start, end)`` of plaintext chunk ``index``."""
        self._check_index(index)
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """``(start, end)`` of sealed chunk ``index`` within the sealed object."""
        start, end = self.plain_range(index)
        offset = self.header_size + index * (self.chunk_size + TAG_SIZE)
        return offset, offset + end - start + TAG_SIZE

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n_chunks:
            raise SpecError(f"chunk {index} is out of range: the object has {self.n_chunks} chunks")

    def _nonce_aad(self, index: int) -> tuple[bytes, bytes]:
        final = b"\x01" if index == self.n_chunks - 1 else b"\x00"
        return self.nonce_prefix + struct.pack(">I", index), self.digest + struct.pack(">Q", index) + final

    def check_key(self, key: DataKey, *, where: str = "object") -> None:
        if key.key_id != self.key_id:
            raise IntegrityError(
                f"{where} was sealed with key id {self.key_id}, not with the given key (id {key.key_id}): "
                "wrong key, or a tampered header"
            )


# -- chunks -------------------------------------------------------------------------------------------------------


def seal_chunk(header: SealedHeader, key: DataKey, index: int, plain: bytes | memoryview) -> bytes:
    """Encrypt plaintext chunk ``index`` (exactly its length per the header) into its sealed form."""
    header.check_key(key)
    start, end = header.plain_range(index)
    if len(plain) != end - start:
        raise SpecError(f"chunk {index} holds {end - start} bytes, got {len(plain)}")
    nonce, aad = header._nonce_aad(index)
    return key._aead.encrypt(nonce, bytes(plain), aad)


def open_chunk(
    header: SealedHeader, key: DataKey, index: int, sealed: bytes | memoryview, *, where: str = "object"
) -> bytes:
    """Decrypt and authenticate sealed chunk ``index``. Raises :class:`IntegrityError` naming ``where``."""
    header.check_key(key, where=where)
    start, end = header.chunk_range(index)
    if len(sealed) != end - start:
        raise IntegrityError(f"{where}: chunk {index} is truncated ({len(sealed)} of {end - start} bytes)")
    nonce, aad = header._nonce_aad(index)
    try:
        return key._aead.decrypt(nonce, bytes(sealed), aad)
    except InvalidTag:
        raise IntegrityError(
            f"{where}: chunk {index} failed authentication (tampered, truncated, reordered or spliced)"
        ) from None


def read_header(store: KeyValueStore, key: str) -> SealedHeader:
    """The header of the sealed object ``key`` in ``store`` (one ranged read, two for a long header)."""
    where = f"{key!r} in {store.url}"
    head = store.read_range(key, 0, 1024)
    total = SealedHeader.length(head[:_PREFIX], where=where)
    if total > len(head):
        head = store.read_range(key, 0, total)
    return SealedHeader.parse(head, where=where)


# -- whole streams ------------------------------------------------------------------------------------------------


def _rechunk(data: Data, size: int) -> Iterator[bytes]:
    """``data`` as pieces of exactly ``size`` bytes (the last one shorter)."""
    buffer = bytearray()
    for piece in iter_chunks(data, size):
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def seal_stream(
    data: Data, key: DataKey, *, size: int, sha256: str, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """The sealed form of ``data`` (whose plaintext ``size`` and ``sha256`` go in the header), as pieces.

    The plaintext is checked as it streams: a size or sha256 mismatch raises :class:`IntegrityError` before the
    final chunk is produced, so a stream that does not match its header can never be a complete sealed object.
    """
    header = SealedHeader.new(key, size=size, sha256=sha256, chunk_size=chunk_size)
    yield header.to_bytes()
    hasher = hashlib.sha256()
    seen = 0
    last = b""
    pieces = _rechunk(data, chunk_size)
    for index, plain in enumerate(pieces):
        seen += len(plain)
        hasher.update(plain)
        if index == header.n_chunks - 1 or len(plain) < chunk_size:
            last = plain  # sealed only once the whole plaintext checked out
            break
        yield seal_chunk(header, key, index, plain)
    if next(pieces, None) is not None:
        raise IntegrityError(f"refused to seal: the plaintext is longer than the declared {size} bytes")
    if seen != size or hasher.hexdigest() != sha256:
        raise IntegrityError(
            f"refused to seal: the plaintext ({seen} bytes, sha256 {hasher.hexdigest()}) does not match the "
            f"declared {size} bytes of sha256 {sha256}"
        )
    yield seal_chunk(header, key, header.n_chunks - 1, last)


def open_stream(data: Data, key: DataKey, *, where: str = "object") -> Iterator[bytes]:
    """Decrypt a whole sealed stream, yielding authenticated plaintext chunks.

    Raises :class:`IntegrityError` if any chunk fails authentication, if chunks are missing or trail the last
    one, or (after the last chunk) if the plaintext does not hash to the header's sha256.
    """
    pieces = _rechunk(data, 64 * 1024)
    buffer = bytearray()

    def fill(count: int) -> bool:
        while len(buffer) < count:
            piece = next(pieces, None)
            if piece is None:
                return False
            buffer.extend(piece)
        return True

    fill(_PREFIX)
    total = SealedHeader.length(bytes(buffer[:_PREFIX]), where=where)
    if not fill(total):
        raise IntegrityError(f"{where} is truncated inside its sealed header")
    header = SealedHeader.parse(bytes(buffer[:total]), where=where)
    header.check_key(key, where=where)
    del buffer[:total]
    hasher = hashlib.sha256()
    for index in range(header.n_chunks):
        start, end = header.chunk_range(index)
        if not fill(end - start):
            raise IntegrityError(f"{where} is truncated: chunk {index} of {header.n_chunks} is incomplete")
        plain = open_chunk(header, key, index, bytes(buffer[: end - start]), where=where)
        del buffer[: end - start]
        hasher.update(plain)
        if index == header.n_chunks - 1:
            if fill(1):
                raise IntegrityError(f"{where} has bytes after its final chunk")
            if hasher.hexdigest() != header.sha256:
                raise IntegrityError(
                    f"{where}: the plaintext does not hash to the sealed sha256 {header.sha256}"
                )
        yield plain


def seal_bytes(data: bytes, key: DataKey, *, chunk_size: int = CHUNK_SIZE) -> bytes:
    """The sealed form of ``data`` (a convenience for small objects and tests)."""
    return b"".join(
        seal_stream(data, key, size=len(data), sha256=hashlib.sha256(data).hexdigest(), chunk_size=chunk_size)
    )


def open_bytes(sealed: bytes, key: DataKey, *, where: str = "object") -> bytes:
    """The verified plaintext of a whole sealed object held in memory."""
    return b"".join(open_stream(sealed, key, where=where))
