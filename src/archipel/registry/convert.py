"""Models to ONNX, checked: scikit-learn (skl2onnx), PyTorch (``torch.onnx.export``) or ONNX bytes/files.

After converting, ONNX Runtime runs the ONNX model on the sample input and its outputs are compared with the
source model's; a conversion whose outputs differ by more than ``tolerance`` is refused with
:class:`ConversionMismatch`, which names the output and the row with the largest difference. Heavy libraries
are imported only when a model of their kind is converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archipel.errors import IntegrityError, SpecError

__all__ = ["ConversionMismatch", "Converted", "compare", "convert", "run_onnx", "signature_of"]

TOLERANCE = 1e-4
_OIP = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES", 9: "BOOL", 10: "FP16",
        11: "FP64", 12: "UINT32", 13: "UINT64"}  # fmt: skip


class ConversionMismatch(IntegrityError):
    """ONNX Runtime's outputs differ from the source model's beyond the tolerance."""


@dataclass(frozen=True)
class Converted:
    onnx: bytes
    flavor: str
    """sklearn, torch or onnx."""
    signature: dict[str, Any]
    check: dict[str, Any] = field(default_factory=dict)
    """The conversion check: outputs compared, rows, largest difference, tolerance."""


def run_onnx(onnx: bytes, inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model on ``inputs`` (one array for a single-input model)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    if not isinstance(inputs, dict):
        inputs = {session.get_inputs()[0].name: inputs}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def signature_of(onnx: bytes, feature_names: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Input and output names, OIP datatypes and shapes (None for a dynamic dimension), feature names."""
    import onnx as onnx_lib

    graph = onnx_lib.load_from_string(onnx).graph
    initializers = {i.name for i in graph.initializer}

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            tensor = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            out.append(
                {
                    "name": v.name,
                    "datatype": _OIP.get(tensor.elem_type, str(tensor.elem_type)),
                    "shape": shape,
                }
            )
        return out

    return {
        "inputs": describe(graph.input),
        "outputs": describe(graph.output),
        "feature_names": feature_names,
        **extra,
    }


def compare(
    reference: dict[str, np.ndarray], got: dict[str, np.ndarray], tolerance: float = TOLERANCE
) -> dict:
    """The largest difference per compared output; ConversionMismatch beyond ``tolerance``."""
    worst: dict[str, Any] = {"max_abs_diff": 0.0, "output": None, "row": None}
    for name, expected in reference.items():
        actual = np.asarray(got[name])
        expected = np.asarray(expected)
        if expected.dtype.kind in "OUS" or actual.dtype.kind in "OUS":
            bad = np.flatnonzero(
                expected.reshape(len(expected), -1).astype(str) != actual.reshape(len(actual), -1).astype(str)
            )
            if bad.size:
                raise ConversionMismatch(
                    f"output {name} differs at row {int(bad[0])}: {expected[bad[0]]!r} vs {actual[bad[0]]!r}"
                )
            continue
        if expected.shape != actual.shape:
            actual = actual.reshape(expected.shape) if actual.size == expected.size else actual
        if expected.shape != actual.shape:
            raise ConversionMismatch(
                f"output {name} has shape {actual.shape}, the source model gives {expected.shape}"
            )
        diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
        if diff.size and float(diff.max()) > worst["max_abs_diff"]:
            row = int(np.unravel_index(int(diff.argmax()), diff.shape)[0])
            worst = {"max_abs_diff": float(diff.max()), "output": name, "row": row}
    if worst["max_abs_diff"] > tolerance:
        raise ConversionMismatch(
            f"the ONNX model's output {worst['output']} differs from the source model's by {worst['max_abs_diff']:.3g} "
            f"at row {worst['row']} (tolerance {tolerance:g}); the conversion is refused"
        )
    return {**worst, "tolerance": tolerance, "outputs": sorted(reference)}


def _sklearn(model: Any, sample: np.ndarray, source: Any) -> tuple[bytes, dict, dict]:
    """``source`` is the sample as the caller gave it (a DataFrame keeps the feature names the model knows)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    classifier = hasattr(model, "predict_proba") and hasattr(model, "classes_")
    options = {id(model): {"zipmap": False}} if classifier else None
    onx = convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, sample.shape[1]]))], options=options
    )
    onnx = onx.SerializeToString()
    outputs = [o.name for o in onx.graph.output]
    if classifier:
        reference = {
            outputs[0]: model.predict(source),
            outputs[1]: model.predict_proba(source).astype(np.float32),
        }
        extra = {
            "task": "classifier",
            "classes": [c.item() if hasattr(c, "item") else c for c in model.classes_],
        }
    else:
        reference = {outputs[0]: np.asarray(model.predict(source), dtype=np.float32).reshape(len(sample), -1)}
        extra = {"task": "regressor"}
    return onnx, reference, extra


def _torch(model: Any, sample: np.ndarray) -> tuple[bytes, dict, dict]:
    """Export with torch's current (torch.export-based) exporter, batch dimension dynamic, weights inline."""
    import warnings

    import torch

    model.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(sample))
    with warnings.catch_warnings():  # the exporter's own deprecation notices about torch internals
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (tensor,),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            input_names=["input"],
            output_names=["output"],
            verbose=False,
        )
    with torch.no_grad():
        reference = {"output": model(tensor).detach().cpu().numpy()}
    return program.model_proto.SerializeToString(), reference, {"task": "torch"}


def convert(
    model: Any,
    sample_input: Any,
    *,
    feature_names: list[str] | None = None,
    tolerance: float = TOLERANCE,
) -> Converted:
    """``model`` as checked ONNX; see the module docstring. ``sample_input`` is a 2-D array (or a DataFrame)
    of rows the model accepts; its column names become the feature names unless given."""
    if hasattr(sample_input, "columns") and feature_names is None:
        feature_names = [str(c) for c in sample_input.columns]
    sample = np.asarray(sample_input, dtype=np.float32)
    if sample.ndim != 2 or len(sample) == 0:
        raise SpecError(f"sample_input must be a non-empty 2-D array of rows, got shape {sample.shape}")
    if isinstance(model, bytes | bytearray | str | Path):
        onnx = bytes(model) if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
        run_onnx(onnx, sample)  # it must at least run on the sample
        return Converted(
            onnx, "onnx", signature_of(onnx, feature_names), {"outputs": [], "rows": len(sample)}
        )
    kind = type(model).__module__.split(".")[0]
    if kind == "sklearn":
        source = sample_input if hasattr(sample_input, "columns") else sample
        onnx, reference, extra = _sklearn(model, sample, source)
        flavor = "sklearn"
    elif kind == "torch" or any(c.__module__.startswith("torch.nn") for c in type(model).__mro__):
        onnx, reference, extra = _torch(model, sample)
        flavor = "torch"
    else:
        raise SpecError(
            f"cannot register a {type(model).__module__}.{type(model).__name__}: give a scikit-learn estimator or "
            "pipeline, a PyTorch module, or ONNX bytes or a .onnx file"
        )
    check = compare(reference, run_onnx(onnx, sample), tolerance)
    return Converted(onnx, flavor, signature_of(onnx, feature_names, **extra), {**check, "rows": len(sample)})
