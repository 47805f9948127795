"""Request samples for monitoring, kept at the replica's own site: a share of the rows a replica scores, with
their predictions, written as Parquet to the site's storage (raw data never leaves the site; drift is computed
there). Writes happen off the event loop, in batches (``flush_rows`` rows or every ``flush_s`` seconds), and on
shutdown."""

from __future__ import annotations

import random
import secrets
import threading
import time
from typing import Any

import numpy as np

from archipel.backends.storage.base import KeyValueStore

__all__ = ["Sampler"]


class Sampler:
    def __init__(self, store: KeyValueStore, prefix: str, rate: float, feature_names: list[str] | None,
                 *, flush_rows: int = 2000, flush_s: float = 10.0, seed: int | None = None) -> None:  # fmt: skip
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate {rate} is not between 0 and 1")
        self.store, self.prefix, self.rate, self.names = store, prefix.rstrip("/"), rate, feature_names
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self._random = random.Random(seed)
        self._rows: list[np.ndarray] = []
        self._outputs: dict[str, list[np.ndarray]] = {}
        self._ids: list[str] = []
        self._times: list[float] = []
        self._count = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.written = 0

    def add(self, rows: np.ndarray, outputs: dict[str, np.ndarray], request_id: str) -> bool:
        """Keep this request's rows with probability ``rate``; True when a flush is due."""
        if self.rate <= 0 or self._random.random() >= self.rate:
            return False
        now = time.time()
        with self._lock:
            self._rows.append(rows)
            for name, values in outputs.items():
                self._outputs.setdefault(name, []).append(np.asarray(values).reshape(len(rows), -1))
            self._ids += [request_id] * len(rows)
            self._times += [now] * len(rows)
            self._count += len(rows)
            return self._count >= self.flush_rows or time.monotonic() - self._last >= self.flush_s

    def flush(self) -> str | None:
        """Write what was kept as one Parquet object; its key, or None when there was nothing."""
        import pyarrow as pa

        from archipel.data.ingest import parquet_bytes

        with self._lock:
            if not self._count:
                return None
            rows, outputs, ids, times = self._rows, self._outputs, self._ids, self._times
            self._rows, self._outputs, self._ids, self._times, self._count = [], {}, [], [], 0
            self._last = time.monotonic()
        matrix = np.concatenate(rows)
        names = self.names or [f"f{i}" for i in range(matrix.shape[1])]
        columns: dict[str, Any] = {"request_id": ids, "at": pa.array(times, pa.float64())}
        for i, name in enumerate(names):
            columns[name] = matrix[:, i]
        for name, parts in outputs.items():
            values = np.concatenate(parts)
            for j in range(values.shape[1]):
                columns[f"output_{name}" + (f"_{j}" if values.shape[1] > 1 else "")] = values[:, j]
        data = parquet_bytes(pa.table(columns))
        key = f"{self.prefix}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}.parquet"
        self.store.put(key, data)
        self.written += len(matrix)
        return key
