"""The checkpoint format: a state tree of JSON values and arrays, stored without pickle.

A state is a mapping of strings to JSON values (str, int, float, bool, None, lists, nested mappings) and
arrays (NumPy arrays and scalars; anything with ``.detach().cpu().numpy()``, such as a PyTorch tensor, is stored
as its NumPy array and comes back as one: ``torch.from_numpy`` restores it). Encoded as an uncompressed zip with
``state.json`` (arrays replaced by ``{"__array__": N}``) and ``N.npy`` files written and read with
``allow_pickle=False``, so loading a checkpoint never runs code. Encoding is deterministic: the same state gives
the same bytes (fixed zip timestamps), so equal states have equal sha256.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from archipel.errors import IntegrityError, SpecError

__all__ = ["decode_state", "encode_state"]

_EPOCH = (1980, 1, 1, 0, 0, 0)
_ARRAY = "__array__"
MAX_ARRAYS = 100_000


def _tree(value: Any, arrays: list[np.ndarray], path: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            arrays.append(np.asarray(value))  # JSON has no nan/inf: keep it exactly as an array scalar
            return {_ARRAY: len(arrays) - 1, "scalar": True}
        return value
    if isinstance(value, np.generic):
        arrays.append(np.asarray(value))
        return {_ARRAY: len(arrays) - 1, "scalar": True}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise SpecError(
                f"checkpoint value {path} is an object array; only numeric/bool/str arrays are stored"
            )
        arrays.append(np.ascontiguousarray(value))
        return {_ARRAY: len(arrays) - 1}
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a tensor: its NumPy array
        return _tree(value.detach().cpu().numpy(), arrays, path)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(f"checkpoint keys must be strings; {path} has {key!r}")
            if key == _ARRAY:
                raise SpecError(f"{_ARRAY!r} is reserved in checkpoint states ({path})")
            out[key] = _tree(item, arrays, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_tree(item, arrays, f"{path}[{i}]") for i, item in enumerate(value)]
    raise SpecError(
        f"checkpoint value {path} is a {type(value).__name__}; store JSON values, NumPy arrays or tensors"
    )


def encode_state(state: Mapping[str, Any]) -> bytes:
    """The bytes of ``state``; SpecError names the first value that cannot be stored."""
    if not isinstance(state, Mapping):
        raise SpecError(f"a checkpoint state is a mapping of names to values, not {type(state).__name__}")
    arrays: list[np.ndarray] = []
    tree = _tree(state, arrays, "state")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        info = zipfile.ZipInfo("state.json", _EPOCH)
        archive.writestr(info, json.dumps(tree, sort_keys=True, separators=(",", ":")))
        for index, array in enumerate(arrays):
            data = io.BytesIO()
            np.save(data, array, allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{index}.npy", _EPOCH), data.getvalue())
    return buffer.getvalue()


def _untree(value: Any, archive: zipfile.ZipFile, names: set[str]) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            name = f"{value[_ARRAY]}.npy"
            if not isinstance(value[_ARRAY], int) or name not in names:
                raise IntegrityError(f"the checkpoint refers to a missing array {value[_ARRAY]!r}")
            with archive.open(name) as handle:
                array = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            return array[()] if value.get("scalar") else array
        return {key: _untree(item, archive, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_untree(item, archive, names) for item in value]
    return value


def decode_state(data: bytes) -> dict[str, Any]:
    """The state ``encode_state`` wrote; IntegrityError if the bytes are not a checkpoint."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if len(names) > MAX_ARRAYS + 1 or "state.json" not in names:
                raise IntegrityError("not an archipel checkpoint (no state.json)")
            tree = json.loads(archive.read("state.json"))
            state = _untree(tree, archive, names)
    except (zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        raise IntegrityError(f"not a readable archipel checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise IntegrityError("not an archipel checkpoint (its state is not a mapping)")
    return state
