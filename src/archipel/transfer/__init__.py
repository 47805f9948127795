"""Moving objects between sites: the verified, resumable, parallel transfer engine and encryption at rest.

:func:`transfer` copies one object between two :class:`~archipel.backends.storage.base.KeyValueStore` endpoints
(see :mod:`archipel.transfer.engine` for its contract); :mod:`archipel.transfer.sealed` defines the sealed
(AES-256-GCM, chunked) format that either end may use.
"""

from __future__ import annotations

from archipel.transfer.engine import Endpoint, TransferResult, transfer
from archipel.transfer.sealed import (
    DataKey,
    SealedHeader,
    load_key,
    open_bytes,
    open_chunk,
    open_stream,
    seal_bytes,
    seal_chunk,
    seal_stream,
)

__all__ = [
    "DataKey",
    "Endpoint",
    "SealedHeader",
    "TransferResult",
    "load_key",
    "open_bytes",
    "open_chunk",
    "open_stream",
    "seal_bytes",
    "seal_chunk",
    "seal_stream",
    "transfer",
]
