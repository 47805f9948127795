"""Chunk-level building blocks of the transfer engine: verified chunk reads, encoding, ordered parallel maps,
and retries.

Nothing here decides *what* to transfer; :mod:`archipel.transfer.engine` does. Each piece has one contract:

- :class:`ChunkReader` returns the plaintext of a byte range of a source object. A sealed source is decrypted
  chunk by chunk and every GCM tag checked; a plaintext source is only length-checked here (its sha256 is
  checked by the engine over the ordered stream).
- :class:`ChunkEncoder` turns plaintext chunk ``i`` into the bytes of part ``i + 1`` (sealed or not).
- :func:`ordered_map` runs a function over items on a thread pool, at most ``window`` ahead, and yields the
  results in item order; on any exit it cancels what has not started and waits for what has, so no worker
  outlives it.
- :func:`retry` re-runs an operation that failed with a (possibly transient) :class:`StorageError`, with
  short exponential backoff, and turns the final failure into :class:`TransferFailed`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from archipel.backends.storage.base import KeyValueStore
from archipel.errors import IntegrityError, NotFound, SpecError, StorageError, TransferFailed
from archipel.transfer.sealed import DataKey, SealedHeader, open_chunk, read_header, seal_chunk

__all__ = ["ChunkEncoder", "ChunkReader", "ordered_map", "retry", "window"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

RETRIES = 4
BACKOFF_S = 0.05
MEMORY_BUDGET = 256 * 1024 * 1024
"""Chunks held ahead of the in-order consumer stay under this, unless ``streams`` chunks alone exceed it."""


def window(streams: int, chunk: int) -> int:
    """How many chunks may be read ahead: two per stream, fewer for large chunks, never fewer than ``streams``."""
    return max(streams, min(2 * streams, MEMORY_BUDGET // max(chunk, 1)))


def retry(
    what: str,
    call: Callable[[], T],
    *,
    stop: threading.Event | None = None,
    integrity_is_transient: bool = False,
    backoff_s: float = BACKOFF_S,
) -> T:
    """``call()``, retried on :class:`StorageError` (not NotFound, SpecError, nor IntegrityError unless
    ``integrity_is_transient``: corruption in transit is worth a resend, a corrupt source is not), waiting
    ``backoff_s * 4**attempt`` between attempts."""
    last: StorageError | None = None
    for attempt in range(RETRIES):
        if stop is not None and stop.is_set() and last is not None:
            break
        try:
            return call()
        except (NotFound, SpecError):
            raise
        except IntegrityError as exc:
            if not integrity_is_transient:
                raise
            last = exc
        except StorageError as exc:
            last = exc
        logger.debug("%s failed (attempt %d of %d): %s", what, attempt + 1, RETRIES, last)
        if attempt < RETRIES - 1:
            if stop is not None:
                stop.wait(backoff_s * 4**attempt)
            else:
                time.sleep(backoff_s * 4**attempt)
    assert last is not None
    if isinstance(last, IntegrityError):
        raise last
    raise TransferFailed(f"{what} failed after {RETRIES} attempts: {last}") from last


def ordered_map(
    pool: concurrent.futures.Executor,
    fn: Callable[[T], R],
    items: Iterable[T],
    window: int,
    *,
    stop: threading.Event | None = None,
) -> Iterator[R]:
    """``fn(item)`` for every item, computed on ``pool`` at most ``window`` ahead, yielded in item order.

    When the consumer stops early (an error, or closing the generator) ``stop`` is set first, so that workers
    busy retrying give up, then the generator waits for every started call to return."""
    source = iter(items)
    pending: deque[concurrent.futures.Future[R]] = deque()

    def top_up() -> None:
        while len(pending) < window:
            try:
                item = next(source)
            except StopIteration:
                return
            pending.append(pool.submit(fn, item))

    try:
        top_up()
        while pending:
            result = pending.popleft().result()
            top_up()
            yield result
    finally:
        if pending and stop is not None:
            stop.set()
        for future in pending:
            future.cancel()
        concurrent.futures.wait(pending)


class ChunkReader:
    """Plaintext ranges of one source object, checked against its expected size (and tags, if sealed).

    Construction reads the object's size (and sealed header): :class:`NotFound` if it is missing,
    :class:`IntegrityError` if its size or sealed header contradicts the expected ``size`` and ``sha256``.
    """

    def __init__(
        self, store: KeyValueStore, key: str, seal_key: DataKey | None, *, sha256: str, size: int
    ) -> None:
        self.store, self.key, self.seal_key = store, key, seal_key
        self.where = f"source {key!r} in {store.url}"
        self.header: SealedHeader | None = None
        self._lock = threading.Lock()
        self.bytes_read = 0
        info = store.info(key)
        if seal_key is None:
            if info.size != size:
                raise IntegrityError(f"{self.where} holds {info.size} bytes, not the expected {size}")
            return
        self.header = header = read_header(store, key)
        header.check_key(seal_key, where=self.where)
        if header.sha256 != sha256 or header.size != size:
            raise IntegrityError(
                f"{self.where} is sealed as {header.size} bytes of sha256 {header.sha256}, not the expected "
                f"{size} bytes of sha256 {sha256}"
            )
        if info.size != header.sealed_size:
            raise IntegrityError(
                f"{self.where} holds {info.size} bytes, its header says {header.sealed_size}"
            )

    @property
    def unit(self) -> int:
        """Ranges start at multiples of this (a sealed source's chunk size) so chunks decrypt independently."""
        return self.header.chunk_size if self.header is not None else 1

    def read(self, start: int, end: int) -> bytes:
        """Plaintext bytes ``[start, end)``; ``start`` is a multiple of :attr:`unit`, ``end`` one or the size."""
        if self.header is None:
            data = self.store.read_range(self.key, start, end - start)
            self.count(len(data))
            if len(data) != end - start:
                raise IntegrityError(f"{self.where} ended at {start + len(data)} bytes, before {end}")
            return data
        header, unit = self.header, self.unit
        first = start // unit
        last = max(first, (end - 1) // unit)
        offset, _ = header.chunk_range(first)
        _, stop = header.chunk_range(last)
        blob = self.store.read_range(self.key, offset, stop - offset)
        self.count(len(blob))
        if len(blob) != stop - offset:
            raise IntegrityError(f"{self.where} is truncated inside chunk {last}")
        assert self.seal_key is not None
        plain = []
        for index in range(first, last + 1):
            begin, finish = header.chunk_range(index)
            piece = memoryview(blob)[begin - offset : finish - offset]
            plain.append(open_chunk(header, self.seal_key, index, piece, where=self.where))
        return plain[0] if len(plain) == 1 else b"".join(plain)

    def count(self, count: int) -> None:
        with self._lock:
            self.bytes_read += count


class ChunkEncoder:
    """Part ``i + 1`` of a destination from plaintext chunk ``i``: the chunk itself, or (sealed) the header
    in front of sealed chunk 0 and sealed chunk ``i`` alone after it. Sealing is deterministic for a header
    and a plaintext, so a resumed transfer reproduces the very same part bytes."""

    def __init__(self, header: SealedHeader | None, seal_key: DataKey | None) -> None:
        self.header, self.seal_key = header, seal_key

    def encode(self, index: int, plain: bytes) -> bytes:
        if self.header is None:
            return plain
        assert self.seal_key is not None
        sealed = seal_chunk(self.header, self.seal_key, index, plain)
        return self.header.to_bytes() + sealed if index == 0 else sealed
