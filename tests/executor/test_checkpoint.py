"""The checkpoint format: exact round trips, deterministic bytes, and nothing that could run code on load."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from archipel.errors import IntegrityError, SpecError
from archipel.executor.checkpoint import decode_state, encode_state


def test_round_trip_is_exact_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    state = {
        "weights": rng.normal(size=(100, 7)).astype(np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(3, 4))),
        "strided": np.arange(20)[::3],
        "nan": float("nan"),
        "scalar": np.int64(3),
        "nested": {"a": [1, 2.5, None, "x", True, np.arange(5)]},
        "text": np.array(["ab", "c"]),
    }
    data = encode_state(state)
    assert encode_state(state) == data  # same state, same bytes, same sha256
    back = decode_state(data)
    assert back["weights"].dtype == np.float32 and np.array_equal(back["weights"], state["weights"])
    assert back["weights"].flags.writeable and back["fortran"].flags.f_contiguous
    assert np.array_equal(back["fortran"], state["fortran"]) and np.array_equal(
        back["strided"], state["strided"]
    )
    assert np.isnan(back["nan"]) and back["scalar"] == 3
    assert back["nested"]["a"][:5] == [1, 2.5, None, "x", True] and list(back["nested"]["a"][5]) == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert list(back["text"]) == ["ab", "c"]


def test_values_that_are_not_data_are_refused_when_saving() -> None:
    with pytest.raises(SpecError, match=r"state.model is a object"):
        encode_state({"model": object()})
    with pytest.raises(SpecError, match="object array"):
        encode_state({"a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(SpecError, match="keys must be strings"):
        encode_state({"a": {1: 2}})


def test_a_pickle_or_an_object_array_is_never_loaded() -> None:
    with pytest.raises(IntegrityError):
        decode_state(pickle.dumps({"step": 1}))
    buffer = io.BytesIO()  # a hand-made archive whose array entry holds pickled objects
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("state.json", '{"a": {"__array__": 0}}')
        entry = io.BytesIO()
        np.save(entry, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        archive.writestr("0.npy", entry.getvalue())
    with pytest.raises(IntegrityError, match="Python objects"):
        decode_state(buffer.getvalue())


def test_a_truncated_checkpoint_is_refused() -> None:
    data = encode_state({"w": np.arange(1000.0)})
    with pytest.raises(IntegrityError):
        decode_state(data[: len(data) // 2])
