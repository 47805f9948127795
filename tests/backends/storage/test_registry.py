"""Opening stores from site URLs: schemes, install hints, credentials from named variables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from archipel.backends.storage.local import LocalStore
from archipel.backends.storage.registry import open_store, resolve_options
from archipel.errors import MissingDependency, SpecError


def test_relative_file_urls_are_taken_relative_to_the_workspace(tmp_path: Path) -> None:
    store = open_store("file://sites/eu", base_dir=tmp_path)
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "sites" / "eu").resolve()
    absolute = open_store(f"file://{tmp_path}/abs")
    assert isinstance(absolute, LocalStore) and absolute.root == (tmp_path / "abs").resolve()


def test_unknown_schemes_name_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown scheme 'ftp'.*s3://"):
        open_store("ftp://host/x")


def test_a_missing_sdk_is_a_missing_dependency_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed, whatever this machine has
    with pytest.raises(MissingDependency, match=r"pip install 'archipel\[gcs\]'"):
        open_store("gs://bucket/prefix")


def test_options_ending_in_env_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", "s3cr3t")
    assert resolve_options({"secret_env": "MY_SECRET", "endpoint_url": "http://x"}) == {
        "secret": "s3cr3t",
        "endpoint_url": "http://x",
    }


def test_a_missing_variable_is_named_and_no_value_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(SpecError, match=r"NOT_SET_ANYWHERE.*not set"):
        resolve_options({"secret_env": "NOT_SET_ANYWHERE"})


def test_file_storage_refuses_options(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no storage_options"):
        open_store("file://x", {"endpoint_url": "http://x"}, base_dir=tmp_path)


def test_object_stores_need_a_bucket() -> None:
    with pytest.raises(SpecError, match="bucket"):
        open_store("memory://")


def test_features_are_derived_from_mixins() -> None:
    assert LocalStore.features() == {"server_side_copy", "cleanup", "multipart"}
