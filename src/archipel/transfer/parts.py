"""Sending the parts of a multipart transfer in parallel, and hashing the whole plaintext in order.

:class:`PartSender` is the parallel core of :func:`archipel.transfer.engine.transfer` (whose docstring states
the contract): for every chunk not already uploaded it reads the plaintext, checks it against any sha256 an
earlier attempt recorded for it, records it first if it is about to be sealed (a nonce never covers two
plaintexts), encodes, uploads with retries and records the acknowledged part in the manifest (with the
plaintext's sha256 when it is known or will be needed: a plaintext part of a destination that hashes the
whole object itself, and did not report the part's sha256, is not hashed again here). Chunks resumed
from an earlier attempt are read again and checked, not sent, when the whole plaintext must be hashed here
(the destination cannot hash the assembled object itself, or it is sealed).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from archipel.backends.storage.base import PartInfo, WithMultipart, WithPartCopy
from archipel.errors import IntegrityError, NotFound, TransferFailed
from archipel.transfer.chunks import ChunkEncoder, ChunkReader, ordered_map, retry, window
from archipel.transfer.manifest import Manifest, PartRecord

__all__ = ["PartSender", "Run"]


@dataclass(frozen=True)
class Run:
    """What the part sender needs from the transfer call that drives it."""

    pool: concurrent.futures.Executor
    streams: int
    stop: threading.Event
    sha256: str
    size: int
    store: WithMultipart
    key: str
    where: str
    report: Callable[[int], None]
    """Called (on the calling thread) with the plaintext bytes done so far."""
    moved: Callable[[int], None]
    """Called (on a worker thread) with the bytes of each part written."""
    backoff_s: float
    """Base delay between retries of a failed backend call."""


class PartSender:
    """The parallel part of a multipart transfer: send missing chunks, re-verify resumed ones, hash in order."""

    def __init__(
        self,
        run: Run,
        manifest: Manifest,
        reader: ChunkReader,
        encoder: ChunkEncoder,
        chunk: int,
        n_chunks: int,
        resumed: set[int],
    ) -> None:
        self.job, self.store, self.manifest, self.encoder = run, run.store, manifest, encoder
        self.chunk, self.n_chunks, self.resumed = chunk, n_chunks, resumed
        self.reader = reader
        self.sealed = encoder.header is not None
        # the whole plaintext is hashed here unless the store hashes the assembled plaintext itself
        self.in_order = self.sealed or not run.store.complete_checks_sha256
        # plaintext to a store that hashes what lands and can read the source itself: no bytes pass through here
        self.direct = (
            not self.in_order
            and reader.header is None
            and isinstance(run.store, WithPartCopy)
            and run.store.can_copy_part_from(reader.store)
        )

    def send_all(self) -> tuple[list[PartInfo], str]:
        """Every chunk sent or re-verified; the parts to complete with and the sha256 of the stored bytes."""
        plain_hash, stored_hash = hashlib.sha256(), hashlib.sha256()
        done = sum(min(self.chunk, self.job.size - i * self.chunk) for i in self.resumed)
        self.job.report(done)
        todo = [i for i in range(self.n_chunks) if self.in_order or i not in self.resumed]
        with closing(
            ordered_map(
                self.job.pool, self._one, todo, window(self.job.streams, self.chunk), stop=self.job.stop
            )
        ) as results:
            for index, length, plain, stored in results:
                if self.in_order:
                    plain_hash.update(plain)
                    if self.sealed:
                        stored_hash.update(stored)
                if index not in self.resumed:
                    done += length
                    self.job.report(done)
        if self.in_order and plain_hash.hexdigest() != self.job.sha256:
            raise IntegrityError(
                f"{self.reader.where} does not hash to sha256 {self.job.sha256} (got {plain_hash.hexdigest()})"
            )
        records = sorted(self.manifest.parts.values(), key=lambda r: r.number)
        if [r.number for r in records] != list(range(1, self.n_chunks + 1)):
            raise TransferFailed(f"the upload to {self.job.where} is missing parts")
        parts = [PartInfo(r.number, r.size, r.etag, r.part_sha256) for r in records]
        return parts, stored_hash.hexdigest() if self.in_order and self.sealed else self.job.sha256

    def _read(self, index: int) -> bytes:
        start, end = index * self.chunk, min((index + 1) * self.chunk, self.job.size)
        return retry(
            f"reading {self.reader.where}",
            lambda: self.reader.read(start, end),
            stop=self.job.stop,
            backoff_s=self.job.backoff_s,
        )

    def _one(self, index: int) -> tuple[int, int, bytes, bytes]:
        """Send (or re-verify) chunk ``index``: its index, plaintext length, plaintext and stored bytes (both
        empty when the chunk was copied by the store itself)."""
        if self.job.stop.is_set():
            raise TransferFailed("transfer stopped")
        if self.direct and self.manifest.plain_sha256(index) is None:
            return self._copy_direct(index)
        plain = self._read(index)
        known = self.manifest.plain_sha256(index)
        digest = hashlib.sha256(plain).hexdigest() if self.sealed or known is not None else None
        if known is not None and digest != known:
            raise IntegrityError(
                f"{self.reader.where} changed since an earlier attempt: chunk {index} hashes to {digest}, "
                f"not the recorded {known}"
            )
        if index in self.resumed:
            stored = self.encoder.encode(index, plain)
            recorded = self.manifest.parts[index + 1].part_sha256
            if self.sealed and recorded is not None and hashlib.sha256(stored).hexdigest() != recorded:
                raise IntegrityError(f"part {index + 1} of the upload to {self.job.where} holds other bytes")
            return index, len(plain), plain, stored
        if self.sealed and known is None:  # record the plaintext before its nonce is ever used
            assert digest is not None

            def intend() -> None:
                self.manifest.intents[index] = digest

            self.manifest.commit(intend)
        payload = self.encoder.encode(index, plain)
        part = self._upload(
            index, lambda: self.store.upload_part(self.job.key, self.manifest.upload_id, index + 1, payload)
        )
        if part.size != len(payload):
            raise TransferFailed(f"part {index + 1} to {self.job.where} was stored with {part.size} bytes")
        plain_sha = digest or (part.sha256 if not self.sealed else None)
        if plain_sha is None and self.in_order:  # resumed chunks are re-read and checked against it
            plain_sha = hashlib.sha256(plain).hexdigest()
        record = PartRecord(part.number, part.size, part.etag, part.sha256, plain_sha)

        def acknowledge() -> None:
            self.manifest.parts[part.number] = record
            self.manifest.intents.pop(index, None)

        self.manifest.commit(acknowledge, durable=False)  # cross-checked against list_parts on resume
        self.job.moved(len(payload))
        return index, len(plain), plain, payload

    def _upload(self, index: int, send: Callable[[], PartInfo]) -> PartInfo:
        try:
            return retry(
                f"uploading part {index + 1} to {self.job.where}",
                send,
                stop=self.job.stop,
                integrity_is_transient=not self.direct,  # a short source is not worth a resend
                backoff_s=self.job.backoff_s,
            )
        except NotFound as exc:  # the upload, or the source gone mid-transfer: the next call starts over
            raise TransferFailed(f"the upload to {self.job.where} failed mid-transfer: {exc}") from exc

    def _copy_direct(self, index: int) -> tuple[int, int, bytes, bytes]:
        """Chunk ``index`` copied by the destination store straight from the source (see ``direct``)."""
        store = self.store
        assert isinstance(store, WithPartCopy)
        start, end = index * self.chunk, min((index + 1) * self.chunk, self.job.size)
        part = self._upload(
            index,
            lambda: store.copy_part_from(
                self.job.key,
                self.manifest.upload_id,
                index + 1,
                self.reader.store,
                self.reader.key,
                start,
                end - start,
            ),
        )
        self.reader.count(end - start)
        if part.size != end - start:
            raise TransferFailed(f"part {index + 1} to {self.job.where} was stored with {part.size} bytes")
        record = PartRecord(part.number, part.size, part.etag, part.sha256, None)

        def acknowledge() -> None:
            self.manifest.parts[part.number] = record

        self.manifest.commit(acknowledge, durable=False)
        self.job.moved(part.size)
        return index, part.size, b"", b""
