"""The Open Inference Protocol v2 (KServe, Triton, MLServer) request and response, parsed and checked strictly.

An infer request is ``{"id"?, "inputs": [{"name", "shape", "datatype", "data", "parameters"?}], "outputs"?}``.
:func:`parse_infer` turns it into one float32 matrix for a tabular model, either from one tensor named like the
model's input (shape ``[N, F]``) or from one tensor per feature (each shape ``[N]`` or ``[N, 1]``, named by the
model's feature names). Every problem is a :class:`BadRequest` with a message a client can act on: unknown or
missing inputs, a datatype other than the signature's, a shape whose product is not the number of values,
negative or non-integer dimensions, NaN or infinity (refused unless the model allows them), non-numeric data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BadRequest", "ModelInfo", "infer_response", "metadata", "parse_infer"]

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
          "FP16": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16}  # fmt: skip
_DATATYPE = {np.dtype(v).str: k for k, v in _NUMPY.items()}


class BadRequest(ValueError):
    """The request does not fit the protocol or the model's signature (HTTP 400)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a server knows of a loaded model: OIP names, its signature and feature names."""

    name: str
    version: str
    input_name: str
    input_datatype: str
    width: int
    feature_names: tuple[str, ...] | None
    outputs: tuple[dict[str, Any], ...]
    allow_nan: bool = False


def metadata(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": [info.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": info.input_name, "datatype": info.input_datatype, "shape": [-1, info.width]}],
        "outputs": [
            {
                "name": o["name"],
                "datatype": o["datatype"],
                "shape": [-1 if d is None else d for d in o["shape"]],
            }
            for o in info.outputs
        ],
        "parameters": {"feature_names": list(info.feature_names) if info.feature_names else None},
    }


def _shape(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest(f"{where}: shape must be a non-empty list of dimensions")
    for dim in raw:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise BadRequest(f"{where}: shape dimensions must be integers, got {dim!r}")
        if dim < 0:
            raise BadRequest(f"{where}: shape dimensions must be >= 0, got {dim}")
    return raw


def _values(tensor: dict[str, Any], shape: list[int], where: str, allow_nan: bool) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype not in _NUMPY:
        raise BadRequest(f"{where}: datatype {datatype!r} is not one this server takes ({', '.join(_NUMPY)})")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"{where}: data must be a list of numbers")
    try:
        array = np.asarray(data, dtype=_NUMPY[datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"{where}: data is not a list of {datatype} numbers ({exc})") from None
    count = math.prod(shape)
    if array.size != count or (array.ndim > 1 and list(array.shape) != shape):
        raise BadRequest(f"{where}: shape {shape} holds {count} values, data has {array.size}")
    if array.dtype.kind == "f" and not allow_nan and not np.isfinite(array).all():
        raise BadRequest(f"{where}: NaN or infinity in the data; the model's signature does not allow them")
    return array.reshape(shape)


def parse_infer(body: Any, info: ModelInfo) -> tuple[np.ndarray, str | None]:
    """(float32 rows x width, the request id) from a decoded request body; BadRequest on any mismatch."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with an 'inputs' list")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    tensors: dict[str, dict[str, Any]] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest(f"inputs[{i}] must be an object with a 'name'")
        tensors[tensor["name"]] = tensor
    if info.input_name in tensors:
        if len(tensors) != 1:
            raise BadRequest(
                f"give either the tensor {info.input_name!r} or one tensor per feature, not both"
            )
        tensor = tensors[info.input_name]
        where = f"input {info.input_name!r}"
        if tensor.get("datatype") != info.input_datatype:
            raise BadRequest(
                f"{where}: datatype {tensor.get('datatype')!r}; the model takes {info.input_datatype}"
            )
        shape = _shape(tensor.get("shape"), where)
        if len(shape) != 2 or shape[1] != info.width:
            raise BadRequest(f"{where}: shape {shape}; the model takes [N, {info.width}]")
        return _values(tensor, shape, where, info.allow_nan).astype(np.float32, copy=False), request_id
    if not info.feature_names:
        raise BadRequest(f"unknown inputs {sorted(tensors)}; this model's input is {info.input_name!r}")
    unknown = sorted(set(tensors) - set(info.feature_names))
    missing = [f for f in info.feature_names if f not in tensors]
    if unknown or missing:
        raise BadRequest(
            f"inputs by feature must name exactly the model's features; unknown {unknown}, missing {missing}"
        )
    columns = []
    rows: int | None = None
    for feature in info.feature_names:
        tensor, where = tensors[feature], f"input {feature!r}"
        shape = _shape(tensor.get("shape"), where)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise BadRequest(f"{where}: shape {shape}; a feature column is [N] or [N, 1]")
        if rows is not None and shape[0] != rows:
            raise BadRequest(f"{where}: {shape[0]} rows, other features have {rows}")
        rows = shape[0]
        columns.append(_values(tensor, shape, where, info.allow_nan).reshape(-1).astype(np.float32))
    return np.column_stack(columns), request_id


def infer_response(info: ModelInfo, outputs: dict[str, np.ndarray], request_id: str | None) -> dict[str, Any]:
    out = []
    for name, array in outputs.items():
        array = np.asarray(array)
        out.append({
            "name": name,
            "shape": list(array.shape),
            "datatype": _DATATYPE.get(array.dtype.str, "BYTES"),
            "data": array.reshape(-1).tolist(),
        })  # fmt: skip
    response: dict[str, Any] = {"model_name": info.name, "model_version": info.version, "outputs": out}
    if request_id is not None:
        response["id"] = request_id
    return response
