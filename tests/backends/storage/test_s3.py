"""The conformance suite against S3, served by moto's server over HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from archipel.backends.storage.base import KeyValueStore
from archipel.backends.storage.fsspec_store import FsspecStore
from archipel.backends.storage.registry import open_store
from tests.conformance.storage import CrossProcessConformance, MultipartConformance, StoreSpec
from tests.conftest import S3Endpoint

PART = 5 * 1024 * 1024  # S3's smallest multipart part, so a few MiB already make a multipart upload

pytestmark = pytest.mark.s3


def _uploads(s3: S3Endpoint, bucket: str) -> list[dict]:
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


class TestS3Store(CrossProcessConformance, MultipartConformance):
    @pytest.fixture
    def store_spec(self, s3: S3Endpoint, s3_bucket: str) -> StoreSpec:
        return f"s3://{s3_bucket}/sites/aws", s3.options(default_block_size=PART), None

    @pytest.fixture
    def bucket(self, s3_bucket: str) -> str:
        return s3_bucket

    def assert_no_leftovers(self, store: KeyValueStore) -> None:
        assert isinstance(store, FsspecStore)
        assert store.multipart_uploads() == []


def test_a_failed_multipart_upload_is_aborted(s3: S3Endpoint, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/p", s3.options(default_block_size=PART))
    assert isinstance(store, FsspecStore)
    uploads_seen: list[int] = []

    def stream() -> Iterator[bytes]:
        for _ in range(3):
            yield b"y" * PART
        uploads_seen.append(len(_uploads(s3, s3_bucket)))  # parts are on the server by now
        raise ConnectionResetError("the source died mid-upload")

    with pytest.raises(ConnectionResetError):
        store.put("big", stream())
    assert uploads_seen == [1]
    assert _uploads(s3, s3_bucket) == []
    assert s3.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_objects_land_under_the_prefix_and_foreign_keys_are_not_listed(
    s3: S3Endpoint, s3_bucket: str
) -> None:
    store = open_store(f"s3://{s3_bucket}/sites/eu", s3.options())
    store.put("models/m.onnx", b"onnx")
    client = s3.client()
    client.put_object(Bucket=s3_bucket, Key="sites/eu/.hidden/x", Body=b"foreign")
    client.put_object(Bucket=s3_bucket, Key="sites/other/y", Body=b"neighbour")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "sites/eu/models/m.onnx" in keys
    assert [i.key for i in store.list()] == ["models/m.onnx"]


def test_credentials_come_from_named_variables_and_never_show(
    s3: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(s3.secret_env, "testing-secret-value")
    store = open_store(f"s3://{s3_bucket}/p", s3.options())
    assert "testing-secret-value" not in repr(store)
    assert "testing-secret-value" not in str(vars(store).get("url"))


def test_an_unreachable_endpoint_is_a_storage_error(s3: S3Endpoint) -> None:
    from archipel.errors import StorageError

    store = open_store(
        "s3://bucket/p",
        {
            "endpoint_url": "http://127.0.0.1:9",
            "key_env": s3.key_env,
            "secret_env": s3.secret_env,
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
        },
    )
    with pytest.raises(StorageError, match=r"127\.0\.0\.1:9"):
        store.put("k", b"x")


def test_multipart_is_a_feature_of_s3_only() -> None:
    from archipel.backends.storage.fsspec_store import S3Store

    assert S3Store.features() == {"server_side_copy", "cleanup", "multipart"}
    assert "multipart" not in FsspecStore.features()  # memory://, gs://, az:// stream through put()
    assert "multipart" not in type(open_store("memory://archipel-features")).features()
