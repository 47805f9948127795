"""``memory://`` runs the same conformance suite (in-process only)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from archipel.backends.storage.registry import open_store
from tests.conformance.storage import StorageConformance, StoreSpec


class TestMemoryStore(StorageConformance):
    @pytest.fixture
    def store_spec(self) -> Iterator[StoreSpec]:
        url = f"memory://archipel-test-{uuid.uuid4().hex}/site"
        yield url, {}, None
        store = open_store(url)
        for info in store.list():  # the memory filesystem is process-global: free what the test wrote
            store.delete(info.key)
