"""The transfer engine: copy one object between two stores, verified, resumable, parallel, optionally sealed.

:func:`transfer` moves the object whose plaintext is ``size`` bytes of ``sha256`` from ``src`` to ``dst``.
Either end may be sealed (:mod:`archipel.transfer.sealed`); the identity is always the plaintext sha256.

Contract:

- **Verified end to end with sha256, never size or mtime alone.** Workers read chunks in parallel (and open
  them, checking each GCM tag, if the source is sealed). The whole plaintext is hashed in order and refused
  (:class:`IntegrityError`) unless it hashes to ``sha256``: by the destination store itself when it hashes the
  object it will publish (``complete_checks_sha256``, a local folder: the bytes are read back from the very
  file that will be renamed into place, in order, as the parts land or at completion, see
  :mod:`archipel.backends.storage.local`), otherwise by the engine, in chunk order, as the chunks come back
  from the workers (S3, and every sealed destination, where the engine also hashes the stored bytes in
  order). Every part is checked again when the upload completes (local: its marker still carries the tag it
  was acknowledged with, or, for part files, against the sha256 the file is named by; S3: ``ChecksumSHA256``
  and ETag per part, and the ETag is checked against the MD5 of the bytes sent when each part is
  acknowledged). A sealed destination also carries a GCM tag per chunk and the plaintext sha256 in its header.
  On any integrity failure the upload is aborted, the manifest removed, nothing is published and an object
  already under ``dst.key`` is left as it was.
- **Idempotent.** If ``dst`` already holds the object (plaintext: same size and sha256 of its bytes; sealed:
  header with the same sha256/size/key, every tag valid, plaintext hashing to ``sha256``), nothing is written:
  ``already_present=True, bytes_moved=0``. An object there that does not verify is overwritten.
- **Resumable after SIGKILL at any point** (multipart destinations). ``state_dir/<transfer id>.json`` (the id
  hashes both ends, ``sha256`` and the key ids) names the upload, the chunk size, the sealed header and every
  acknowledged part with its plaintext sha256 (none for a plaintext part of a destination that hashes the
  object itself); it is rewritten atomically as parts are acknowledged, one write covering every part
  acknowledged while the previous write ran (see :mod:`archipel.transfer.manifest`). A new call with
  the same arguments reuses the upload, cross-checks the manifest against ``list_parts`` (a part the backend
  no longer holds, or holds with another tag, is sent again) and sends only missing chunks
  (``chunks_resumed`` counts the others). When the destination cannot hash the assembled object itself
  (S3, or any sealed destination) the resumed chunks are *read* again from the source and checked against
  their recorded sha256 so that the whole plaintext is hashed in order; they are not sent again
  (``bytes_read`` counts those reads). A manifest whose upload vanished (aborted, cleaned up) or that does not
  fit this call starts a fresh upload. Success deletes the manifest; a transient failure (:class:`TransferFailed`,
  after a few retries per part) keeps it for the next call.
- **Atomic at the destination.** Nothing is visible under ``dst.key`` until the verified upload completes;
  a killed transfer leaves no visible partial object, only an unfinished upload (``cleanup`` removes those).
- **Nonce safety.** A sealed destination's chunk ``i`` is encrypted under nonce ``prefix | i``. Before a
  chunk is sealed its plaintext sha256 is recorded; a later attempt seals chunk ``i`` again only if the source
  yields the same plaintext, so a nonce never covers two different plaintexts.
- **Parallel.** ``streams`` worker threads read chunk ``i`` and write part ``i + 1``, at most ``2 * streams``
  chunks ahead of the in-order consumer. The chunk size is at least the destination's ``min_part_size``, large
  enough to stay within its ``max_parts``, and a multiple of a sealed source's chunk size. A plaintext
  destination's upload is started with ``part_size`` set to the chunk size, so a local folder writes every
  part in place, once, into the file it publishes.
  Between two local folders the destination fills each part from the source file
  itself (``copy_file_range``, :class:`~archipel.backends.storage.base.WithPartCopy`): no byte passes through
  this process, and the destination hashes the file it will publish as the parts land.
- **Fallbacks.** A destination without multipart uploads (``memory://``), and objects of one chunk or less,
  go through one streamed ``put`` verified before publishing; that path is not resumable. Two ends in the same
  backend location (:meth:`WithServerSideCopy.shares_location`), both plaintext, are copied server-side and
  then verified by reading the destination back (``server_side_copy=True``, ``bytes_moved=size``): a copy that
  does not verify is deleted, which is the one case where an unverified object is briefly visible.
- ``progress(done_bytes, total_bytes)`` is called from the calling thread as plaintext chunks complete.
- Errors: :class:`NotFound` if the source is missing; :class:`IntegrityError` on any hash, size or tag
  mismatch; :class:`TransferFailed` when a backend keeps failing; :class:`Conflict` if another process runs
  the same transfer. The engine never prints; it logs at debug level.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from archipel.backends.storage.base import (
    CHUNK_SIZE,
    KeyValueStore,
    PartInfo,
    WithMultipart,
    WithServerSideCopy,
    validate_sha256,
)
from archipel.backends.storage.keys import validate_key
from archipel.errors import ArchipelError, IntegrityError, NotFound, SpecError, StorageError, TransferFailed
from archipel.transfer.chunks import BACKOFF_S, ChunkEncoder, ChunkReader, ordered_map, retry, window
from archipel.transfer.manifest import Manifest, PartRecord, state_lock, transfer_id
from archipel.transfer.parts import PartSender, Run
from archipel.transfer.sealed import DataKey, SealedHeader, open_chunk, read_header, seal_stream

__all__ = ["Endpoint", "TransferResult", "transfer"]

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
T = TypeVar("T")
_VERIFY_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    """One end of a transfer: an object ``key`` in ``store``, stored sealed with ``seal_key`` if given."""

    store: KeyValueStore
    key: str
    seal_key: DataKey | None = None

    @property
    def where(self) -> str:
        return f"{self.key!r} in {self.store.url}"


@dataclass(frozen=True)
class TransferResult:
    """What one call did. ``sha256``/``size`` are the plaintext's; ``bytes_moved`` the bytes written to the
    destination by this call; ``bytes_read`` the bytes read from the source (including re-reads of resumed
    chunks for verification)."""

    sha256: str
    size: int
    bytes_moved: int
    chunks_total: int
    chunks_resumed: int
    already_present: bool
    server_side_copy: bool
    streams: int
    seconds: float
    bytes_read: int = 0


def transfer(
    src: Endpoint,
    dst: Endpoint,
    *,
    sha256: str,
    size: int,
    state_dir: Path,
    streams: int = 4,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
    retry_backoff_s: float = BACKOFF_S,
) -> TransferResult:
    """Copy the object ``src`` to ``dst``; see the module docstring for the contract.

    A failing backend call is retried a few times, ``retry_backoff_s * 4**attempt`` seconds apart."""
    validate_sha256(sha256)
    validate_key(src.key)
    validate_key(dst.key)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SpecError(f"size must be an integer >= 0, got {size!r}")
    if not 1 <= streams <= 64:
        raise SpecError(f"streams must be between 1 and 64, got {streams}")
    if chunk_size < 1:
        raise SpecError(f"chunk_size must be >= 1, got {chunk_size}")
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise TransferFailed(f"cannot create the transfer state folder {state_dir}: {exc}") from exc
    tid = transfer_id(
        f"{type(src.store).__name__}:{src.store.url}",
        src.key,
        f"{type(dst.store).__name__}:{dst.store.url}",
        dst.key,
        sha256,
        src.seal_key.key_id if src.seal_key else "",
        dst.seal_key.key_id if dst.seal_key else "",
    )
    job = _Transfer(
        src, dst, sha256, size, state_dir / f"{tid}.json", tid, streams, chunk_size, progress, retry_backoff_s
    )
    try:
        with (
            state_lock(state_dir, tid),
            concurrent.futures.ThreadPoolExecutor(streams, thread_name_prefix="archipel-transfer") as pool,
        ):
            job.pool = pool
            return job.run()
    except OSError as exc:  # the stores wrap theirs: this is the state folder (full disk, permissions)
        raise TransferFailed(f"transfer state in {state_dir} could not be written: {exc}") from exc


class _Transfer:
    """The state of one :func:`transfer` call; ``run`` picks the path and returns the result."""

    pool: concurrent.futures.Executor

    def __init__(
        self,
        src: Endpoint,
        dst: Endpoint,
        sha256: str,
        size: int,
        manifest_path: Path,
        tid: str,
        streams: int,
        chunk_size: int,
        progress: Progress | None,
        backoff_s: float,
    ) -> None:
        self.src, self.dst, self.sha256, self.size = src, dst, sha256, size
        self.manifest_path, self.tid, self.streams, self.chunk_size = manifest_path, tid, streams, chunk_size
        self.progress = progress
        self.backoff_s = backoff_s
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.moved_lock = threading.Lock()
        self.bytes_moved = 0
        self.reader: ChunkReader | None = None

    def _retry(self, what: str, call: Callable[[], T], **kwargs: Any) -> T:
        return retry(what, call, backoff_s=self.backoff_s, **kwargs)

    # -- paths ------------------------------------------------------------------------------------------------

    def run(self) -> TransferResult:
        logger.debug(
            "transfer %s: %s -> %s (%d bytes)", self.tid[:16], self.src.where, self.dst.where, self.size
        )
        if self._holds():
            self._forget_stale_upload()
            return self._result(already_present=True, chunks_total=0)
        if self._same_location():
            return self._server_side_copy()
        self.reader = ChunkReader(
            self.src.store, self.src.key, self.src.seal_key, sha256=self.sha256, size=self.size
        )
        store = self.dst.store
        chunk = self._chunk_size(store)
        n_chunks = max(1, -(-self.size // chunk))
        if not isinstance(store, WithMultipart) or n_chunks == 1:
            return self._streamed_put(chunk, n_chunks)
        return self._multipart(store, chunk, n_chunks)

    def _result(self, *, already_present: bool = False, copy: bool = False, **counts: int) -> TransferResult:
        return TransferResult(
            sha256=self.sha256,
            size=self.size,
            bytes_moved=self.bytes_moved,
            chunks_total=counts.get("chunks_total", 0),
            chunks_resumed=counts.get("chunks_resumed", 0),
            already_present=already_present,
            server_side_copy=copy,
            streams=self.streams,
            seconds=round(time.monotonic() - self.started, 6),
            bytes_read=self.reader.bytes_read if self.reader is not None else 0,
        )

    def _chunk_size(self, store: KeyValueStore) -> int:
        chunk = self.chunk_size
        if isinstance(store, WithMultipart):
            chunk = max(chunk, store.min_part_size, -(-self.size // store.max_parts))
        unit = self.reader.unit if self.reader is not None else 1
        return -(-chunk // unit) * unit

    def _report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.size)

    def _moved(self, count: int) -> None:
        with self.moved_lock:
            self.bytes_moved += count

    # -- idempotency and server-side copy ---------------------------------------------------------------------

    def _holds(self) -> bool:
        """Whether the destination already holds the verified object (see the module contract)."""
        store, key, seal_key = self.dst.store, self.dst.key, self.dst.seal_key
        try:
            info = store.info(key)
            if seal_key is None:
                if info.size != self.size:
                    return False
                spans = [(s, min(s + _VERIFY_BLOCK, self.size)) for s in range(0, self.size, _VERIFY_BLOCK)]
                digest = self._hash_in_order(
                    lambda span: store.read_range(key, span[0], span[1] - span[0]), spans, _VERIFY_BLOCK
                )
                return digest == self.sha256
            header = read_header(store, key)
            header.check_key(seal_key)
            if (header.sha256, header.size, header.sealed_size) != (self.sha256, self.size, info.size):
                return False

            def read_chunk(index: int) -> bytes:
                start, end = header.chunk_range(index)
                return open_chunk(header, seal_key, index, store.read_range(key, start, end - start))

            return self._hash_in_order(read_chunk, range(header.n_chunks), header.chunk_size) == self.sha256
        except NotFound:
            return False
        except IntegrityError as exc:
            logger.debug("destination %s does not verify (%s); it will be replaced", self.dst.where, exc)
            return False
        except StorageError as exc:
            raise TransferFailed(f"could not check the destination {self.dst.where}: {exc}") from exc

    def _hash_in_order(self, read: Callable[[T], bytes], items: Iterable[T], step: int) -> str:
        """sha256 of ``read(item)`` for every item, read in parallel and hashed in order."""
        hasher = hashlib.sha256()
        with closing(ordered_map(self.pool, read, items, window(self.streams, step))) as pieces:
            for piece in pieces:
                hasher.update(piece)
        return hasher.hexdigest()

    def _same_location(self) -> bool:
        src, dst = self.src, self.dst
        return (
            src.seal_key is None
            and dst.seal_key is None
            and isinstance(dst.store, WithServerSideCopy)
            and dst.store.shares_location(src.store)
        )

    def _server_side_copy(self) -> TransferResult:
        store = self.dst.store
        assert isinstance(store, WithServerSideCopy)
        if self.src.key == self.dst.key:  # the source is the destination, and it did not verify
            raise IntegrityError(f"{self.src.where} does not hold {self.size} bytes of sha256 {self.sha256}")
        if not store.exists(self.src.key):
            raise NotFound(f"no source object {self.src.where}")
        self._retry(
            f"copying {self.src.where} to {self.dst.key!r}", lambda: store.copy(self.src.key, self.dst.key)
        )
        if not self._holds():
            with suppress(ArchipelError):
                store.delete(self.dst.key)
            raise IntegrityError(
                f"the server-side copy of {self.src.where} does not hash to sha256 {self.sha256}; it was deleted"
            )
        self._moved(self.size)
        self._report(self.size)
        return self._result(copy=True, chunks_total=1)

    # -- streamed put (no multipart, or a single chunk) -------------------------------------------------------

    def _plaintext(self, chunk: int, n_chunks: int) -> Iterator[bytes]:
        """The source's plaintext in order; raises IntegrityError before the last chunk if it does not hash
        to ``sha256``, so a ``put`` of this stream never publishes wrong bytes."""
        assert self.reader is not None
        reader = self.reader
        hasher = hashlib.sha256()
        ranges = [(i * chunk, min((i + 1) * chunk, self.size)) for i in range(n_chunks)]

        def read(span: tuple[int, int]) -> bytes:
            return self._retry(f"reading {reader.where}", lambda: reader.read(*span), stop=self.stop)

        done = 0
        with closing(
            ordered_map(self.pool, read, ranges, window(self.streams, chunk), stop=self.stop)
        ) as chunks:
            for index, data in enumerate(chunks):
                hasher.update(data)
                done += len(data)
                if index == n_chunks - 1 and hasher.hexdigest() != self.sha256:
                    raise IntegrityError(
                        f"{reader.where} does not hash to sha256 {self.sha256} (got {hasher.hexdigest()})"
                    )
                self._report(done)
                yield data

    def _streamed_put(self, chunk: int, n_chunks: int) -> TransferResult:
        dst = self.dst
        data: Iterator[bytes] = self._plaintext(chunk, n_chunks)
        if dst.seal_key is not None:
            data = seal_stream(data, dst.seal_key, size=self.size, sha256=self.sha256, chunk_size=chunk)
        expected = self.sha256 if dst.seal_key is None else None
        try:
            result = dst.store.put(dst.key, data, expected_sha256=expected)
        except (IntegrityError, NotFound):
            raise
        except StorageError as exc:
            raise TransferFailed(f"writing {dst.where} failed: {exc}") from exc
        finally:
            self.stop.set()
        self._moved(result.size)
        return self._result(chunks_total=n_chunks)

    # -- multipart --------------------------------------------------------------------------------------------

    def _forget_stale_upload(self) -> None:
        """Drop a manifest (and abort its upload) left by an earlier attempt that is no longer needed."""
        if not self.manifest_path.exists():
            return
        upload_id = Manifest.load_upload_id(self.manifest_path)
        if upload_id is not None and isinstance(self.dst.store, WithMultipart):
            with suppress(ArchipelError):
                self.dst.store.abort_upload(self.dst.key, upload_id)
        for path in (self.manifest_path, self.manifest_path.with_name(self.manifest_path.name + ".tmp")):
            path.unlink(missing_ok=True)

    def _manifest_fits(self, manifest: Manifest, store: WithMultipart) -> bool:
        chunk, unit = manifest.chunk_size, self.reader.unit if self.reader else 1
        if chunk < store.min_part_size or chunk % unit or -(-self.size // chunk) > store.max_parts:
            return False
        seal_key = self.dst.seal_key
        if (manifest.header is None) != (seal_key is None):
            return False
        if manifest.header is not None and seal_key is not None:
            try:
                header = SealedHeader.parse(manifest.header)
            except IntegrityError:
                return False
            if (header.key_id, header.sha256, header.size) != (seal_key.key_id, self.sha256, self.size):
                return False
            if header.chunk_size != chunk:
                return False
        return True

    def _open_upload(self, store: WithMultipart, chunk: int) -> tuple[Manifest, dict[int, PartInfo]]:
        """Resume the upload a usable manifest names, or start a new one; return it with the parts held."""
        manifest = Manifest.load(self.manifest_path, transfer_id=self.tid, sha256=self.sha256, size=self.size)
        if manifest is not None and self._manifest_fits(manifest, store):
            try:
                held = self._retry(
                    "listing uploaded parts", lambda: store.list_parts(self.dst.key, manifest.upload_id)
                )
                logger.debug("transfer %s: resuming upload with %d parts held", self.tid[:16], len(held))
                return manifest, {part.number: part for part in held}
            except (NotFound, SpecError) as exc:
                logger.debug(
                    "transfer %s: the recorded upload is unusable (%s); starting over", self.tid[:16], exc
                )
        self._forget_stale_upload()
        header = None
        if self.dst.seal_key is not None:
            header = SealedHeader.new(self.dst.seal_key, size=self.size, sha256=self.sha256, chunk_size=chunk)
        # plaintext parts all hold ``chunk`` bytes but the last: a store may then write them in place
        part_size = chunk if header is None else None
        upload_id = self._retry(
            f"starting an upload to {self.dst.where}",
            lambda: store.start_upload(self.dst.key, part_size=part_size),
        )
        manifest = Manifest(
            self.manifest_path,
            self.tid,
            self.sha256,
            self.size,
            chunk,
            upload_id,
            header.to_bytes() if header is not None else None,
        )
        manifest.save()
        return manifest, {}

    def _multipart(self, store: WithMultipart, chunk: int, n_chunks: int) -> TransferResult:
        manifest, held = self._open_upload(store, chunk)
        chunk = manifest.chunk_size
        n_chunks = max(1, -(-self.size // chunk))
        resumed: set[int] = set()
        dropped = 0
        for number, record in list(manifest.parts.items()):
            if number <= n_chunks and _still_held(record, held.get(number)):
                resumed.add(number - 1)
            else:  # the backend lost it or holds other bytes: send it again, but remember what it carried
                del manifest.parts[number]
                if record.plain_sha256 is not None:
                    manifest.intents[number - 1] = record.plain_sha256
                dropped += 1
        logger.debug("transfer %s: %d of %d chunks already uploaded", self.tid[:16], len(resumed), n_chunks)
        if dropped:
            manifest.save()
        header = SealedHeader.parse(manifest.header) if manifest.header is not None else None
        run = Run(
            self.pool,
            self.streams,
            self.stop,
            self.sha256,
            self.size,
            store,
            self.dst.key,
            self.dst.where,
            self._report,
            self._moved,
            self.backoff_s,
        )
        assert self.reader is not None
        sender = PartSender(
            run, manifest, self.reader, ChunkEncoder(header, self.dst.seal_key), chunk, n_chunks, resumed
        )
        try:
            parts, stored_sha256 = sender.send_all()
            stored_size = self._complete(store, manifest, parts, stored_sha256)
        except IntegrityError:
            self.stop.set()
            with suppress(ArchipelError):
                store.abort_upload(self.dst.key, manifest.upload_id)
            manifest.remove()
            raise
        except StorageError as exc:
            raise TransferFailed(f"transfer to {self.dst.where} failed: {exc}") from exc
        finally:
            self.stop.set()
        logger.debug("transfer %s: published %s (%d bytes)", self.tid[:16], self.dst.where, stored_size)
        manifest.remove()
        return self._result(chunks_total=n_chunks, chunks_resumed=len(resumed))

    def _complete(
        self, store: WithMultipart, manifest: Manifest, parts: list[PartInfo], stored_sha256: str
    ) -> int:
        """Publish the upload; return the stored size."""
        key = self.dst.key
        try:
            return self._retry(
                f"completing the upload to {self.dst.where}",
                lambda: store.complete_upload(key, manifest.upload_id, parts, expected_sha256=stored_sha256),
            ).size
        except (NotFound, TransferFailed):
            # a completion whose answer was lost leaves the upload gone and the object published: check it
            if self._holds():
                return store.size(key)
            raise


def _still_held(record: PartRecord, part: PartInfo | None) -> bool:
    """Whether the backend still holds the part the manifest recorded (same size and tag, same sha256 if both
    sides know it)."""
    if part is None or (part.size, part.etag) != (record.size, record.etag):
        return False
    return part.sha256 is None or record.part_sha256 is None or part.sha256 == record.part_sha256
