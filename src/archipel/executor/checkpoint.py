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
_ZIP64_ABOVE = 2**31 - 2**20  # entries this large need zip64 sizes up front


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
        arrays.append(value)  # write_array keeps Fortran order and copies only what is not contiguous
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
    """The bytes of ``state``; SpecError names the first value that cannot be stored. Arrays are streamed into
    the archive (one copy of their bytes)."""
    if not isinstance(state, Mapping):
        raise SpecError(f"a checkpoint state is a mapping of names to values, not {type(state).__name__}")
    arrays: list[np.ndarray] = []
    tree = _tree(state, arrays, "state")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        info = zipfile.ZipInfo("state.json", _EPOCH)
        archive.writestr(info, json.dumps(tree, sort_keys=True, separators=(",", ":")))
        for index, array in enumerate(arrays):
            entry = zipfile.ZipInfo(f"{index}.npy", _EPOCH)
            with archive.open(entry, "w", force_zip64=array.nbytes > _ZIP64_ABOVE) as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)
    return buffer.getvalue()


def _stored_array(data: memoryview, info: zipfile.ZipInfo) -> np.ndarray:
    """The array in an uncompressed ``.npy`` entry, read in place from ``data`` (then copied once, so it is
    writable and does not pin the checkpoint's bytes). The caller has checked the whole checkpoint's sha256."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise IntegrityError(f"checkpoint entry {info.filename} is compressed; archipel writes them stored")
    local = bytes(data[info.header_offset : info.header_offset + 30])
    if local[:4] != b"PK\x03\x04":
        raise IntegrityError(f"checkpoint entry {info.filename} has no local header")
    start = (
        info.header_offset
        + 30
        + int.from_bytes(local[26:28], "little")
        + int.from_bytes(local[28:30], "little")
    )
    body = data[start : start + info.file_size]
    header = io.BytesIO(bytes(body[: min(len(body), 65536 + 16)]))
    version = np.lib.format.read_magic(header)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
    if dtype.hasobject:
        raise IntegrityError(f"checkpoint entry {info.filename} holds Python objects; refusing to load it")
    count = int(np.prod(shape, dtype=np.int64))
    offset = header.tell()
    if offset + count * dtype.itemsize != len(body):
        raise IntegrityError(f"checkpoint entry {info.filename} is truncated")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


def _untree(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            name = f"{value[_ARRAY]}.npy"
            if not isinstance(value[_ARRAY], int) or name not in arrays:
                raise IntegrityError(f"the checkpoint refers to a missing array {value[_ARRAY]!r}")
            array = arrays[name]
            return array[()] if value.get("scalar") else array
        return {key: _untree(item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [_untree(item, arrays) for item in value]
    return value


def decode_state(data: bytes) -> dict[str, Any]:
    """The state ``encode_state`` wrote; IntegrityError if the bytes are not a checkpoint."""
    view = memoryview(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            if len(infos) > MAX_ARRAYS + 1 or "state.json" not in infos:
                raise IntegrityError("not an archipel checkpoint (no state.json)")
            tree = json.loads(archive.read("state.json"))
            arrays = {
                name: _stored_array(view, info) for name, info in infos.items() if name.endswith(".npy")
            }
            state = _untree(tree, arrays)
    except (zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        raise IntegrityError(f"not a readable archipel checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise IntegrityError("not an archipel checkpoint (its state is not a mapping)")
    return state
