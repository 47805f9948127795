"""MLflow model directories in and out: import an ``onnx`` or ``sklearn`` flavor, export the ``onnx`` flavor.

Neither direction imports MLflow. Reading parses ``MLmodel`` with ``yaml.safe_load``; a scikit-learn flavor's
pickle (``pickle``, ``cloudpickle``) or ``skops`` file is converted to ONNX by
:func:`archipel.registry.safe_unpickle.convert_pickled_sklearn` in a limited child process, so this process never
unpickles anything. Writing produces what ``mlflow.onnx.save_model`` (MLflow 3.x) writes: ``MLmodel`` with the
``onnx`` and ``python_function`` flavors and a tensor signature read from the ONNX graph, ``model.onnx``,
``requirements.txt``, ``conda.yaml`` and ``python_env.yaml``, so ``mlflow.pyfunc.load_model`` serves it.

Paths named inside ``MLmodel`` must stay inside the model directory.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from archipel.errors import Conflict, NotFound, SpecError
from archipel.registry.safe_unpickle import GiB, convert_pickled_sklearn

__all__ = ["FLAVORS", "MlflowModel", "read_mlflow_model", "write_mlflow_model"]

FLAVORS = ("onnx", "sklearn")
"""Flavors :func:`read_mlflow_model` imports, in order of preference when a model has several."""
MAX_EXAMPLE_BYTES = 64 << 20
_SOURCE_KEYS = ("run_id", "model_uuid", "model_id", "artifact_path", "utc_time_created", "mlflow_version")


@dataclass(frozen=True)
class MlflowModel:
    """An MLflow model read as ONNX. ``reference`` holds the source model's outputs on ``sample_input``, keyed
    by ONNX output name (sklearn flavor only; for the onnx flavor the caller runs ONNX Runtime itself)."""

    flavor: str
    onnx: bytes
    sample_input: np.ndarray | None
    """The MLflow input example as float32 rows, else (sklearn) the rows the converter drew; None if neither."""
    reference: dict[str, np.ndarray] | None
    feature_names: list[str] | None
    estimator: str | None
    """e.g. ``sklearn.pipeline.Pipeline``; None for the onnx flavor."""
    task: str | None
    classes: list[Any] | None
    signature: dict[str, Any] | None
    """MLflow's signature with its JSON strings parsed: ``inputs``, ``outputs``, ``params``."""
    source: dict[str, Any]
    """run_id, model_uuid, utc_time_created, mlflow_version, metadata, flavors, and the flavor's details."""


def read_mlflow_model(path: Path, *, timeout_s: float = 60.0, memory_bytes: int = 2 * GiB) -> MlflowModel:
    """Read the MLflow model directory ``path`` (see the module docstring).

    Raises NotFound if ``path`` does not exist, SpecError for a directory that is not an importable MLflow
    model, RefusedPickle (a SpecError) when a pickle names a global outside the allow-list."""
    path = Path(path)
    if not path.is_dir():
        raise NotFound(f"no MLflow model directory at {path}")
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        raise SpecError(f"{path} is not an MLflow model directory: it has no MLmodel file")
    try:
        doc = yaml.safe_load(mlmodel.read_text())
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: not UTF-8
        raise SpecError(f"{mlmodel} is not valid YAML: {exc}") from exc
    flavors = doc.get("flavors") if isinstance(doc, dict) else None
    if not isinstance(flavors, dict):
        raise SpecError(f"{mlmodel} has no flavors mapping")
    flavor = next((f for f in FLAVORS if isinstance(flavors.get(f), dict)), None)
    if flavor is None:
        raise SpecError(
            f"{path} has flavors {', '.join(map(str, flavors)) or 'none'}; archipel imports {' or '.join(FLAVORS)}"
        )
    conf: dict[str, Any] = flavors[flavor]
    signature = _signature(doc, mlmodel)
    width, signature_names = _input_width_and_names(signature)
    example, example_names = _input_example(path, doc)
    source = {k: doc[k] for k in _SOURCE_KEYS if doc.get(k) is not None}
    source |= {"metadata": doc.get("metadata"), "flavors": sorted(map(str, flavors)), flavor: conf}
    if flavor == "onnx":
        return MlflowModel(
            flavor=flavor, onnx=_read_onnx(_inside(path, conf.get("data") or "model.onnx")),
            sample_input=example, reference=None, feature_names=signature_names or example_names,
            estimator=None, task=None, classes=None, signature=signature, source=source,
        )  # fmt: skip
    pickled = _inside(path, conf.get("pickled_model") or "model.pkl")
    if example is not None and width is not None and example.shape[1] != width:
        example = None  # an example that disagrees with the signature is not worth failing the import for
    converted = convert_pickled_sklearn(
        pickled, n_features=width, sample_input=example,
        serialization_format=str(conf.get("serialization_format") or "cloudpickle"),
        timeout_s=timeout_s, memory_bytes=memory_bytes,
    )  # fmt: skip
    return MlflowModel(
        flavor=flavor, onnx=converted.onnx, sample_input=converted.sample_input, reference=converted.reference,
        feature_names=converted.feature_names or signature_names or example_names,
        estimator=converted.estimator, task=converted.task, classes=converted.classes, signature=signature,
        source=source,
    )  # fmt: skip


def _inside(root: Path, relative: Any) -> Path:
    """``root/relative``, refused unless it resolves inside ``root`` (no ``..``, absolute paths or symlinks out)."""
    if not isinstance(relative, str) or not relative:
        raise SpecError(f"{root / 'MLmodel'} names a model file as {relative!r}, not a relative path")
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise SpecError(f"{root / 'MLmodel'} names {relative!r}, which is outside the model directory")
    if not target.is_file():
        raise SpecError(f"{root / 'MLmodel'} names {relative!r}, which does not exist")
    return target


def _signature(doc: dict[str, Any], mlmodel: Path) -> dict[str, Any] | None:
    raw = doc.get("signature")
    if not isinstance(raw, dict):
        return None
    try:
        return {k: json.loads(v) if isinstance(v, str) else v for k, v in raw.items()}
    except json.JSONDecodeError as exc:
        raise SpecError(f"{mlmodel} has a signature that is not JSON: {exc}") from exc


def _input_width_and_names(signature: dict[str, Any] | None) -> tuple[int | None, list[str] | None]:
    """The number of input features and their names, from a single 2-D tensor spec or from column specs."""
    inputs = (signature or {}).get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        return None, None
    if len(inputs) == 1 and inputs[0].get("type") == "tensor":
        shape = (inputs[0].get("tensor-spec") or {}).get("shape") or []
        width = shape[1] if isinstance(shape, list) and len(shape) == 2 else None
        return (width if isinstance(width, int) and width > 0 else None), None
    if inputs and all(i.get("type") != "tensor" for i in inputs):
        names = [i.get("name") for i in inputs]
        return len(inputs), ([str(n) for n in names] if all(isinstance(n, str) for n in names) else None)
    return None, None


def _input_example(path: Path, doc: dict[str, Any]) -> tuple[np.ndarray | None, list[str] | None]:
    """The input example as float32 rows and its column names; (None, None) when absent or not numeric rows.

    MLflow writes an ndarray example as a list of rows (2.x: ``{"inputs": rows}``) and a DataFrame in pandas'
    ``split`` (``columns`` + ``data``) or ``records`` orient."""
    info = doc.get("saved_input_example_info")
    relative = info.get("artifact_path") if isinstance(info, dict) else None
    if not isinstance(relative, str):
        return None, None
    file = (path / relative).resolve()
    if (
        not file.is_relative_to(path.resolve())
        or not file.is_file()
        or file.stat().st_size > MAX_EXAMPLE_BYTES
    ):
        return None, None
    try:
        data: Any = json.loads(file.read_text())
    except ValueError:  # not JSON, or not UTF-8: the example is optional, the import goes on without it
        return None, None
    columns: list[Any] | None = None
    for key in ("inputs", "dataframe_split", "dataframe_records"):
        if isinstance(data, dict) and key in data:
            data = data[key]
    if isinstance(data, dict) and "columns" in data and "data" in data:
        columns, data = list(data["columns"]), data["data"]
    elif isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        columns = list(data[0])
        data = [[row.get(c) for c in columns] for row in data]
    try:
        rows = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        return None, None
    rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.size == 0:
        return None, None
    return rows, None if columns is None else [str(c) for c in columns]


def _read_onnx(file: Path) -> bytes:
    """The model's bytes with any external data (``mlflow.onnx.save_model``'s default for large tensors) inlined.

    onnx itself refuses external-data locations outside the model's directory."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    try:
        model = onnx.load_model_from_string(file.read_bytes())
        load_external_data_for_model(model, str(file.parent))
        return model.SerializeToString()
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError, its own checker errors
        raise SpecError(f"{file} is not a readable ONNX model: {type(exc).__name__}: {exc}") from exc


# --- export ----------------------------------------------------------------------------------------------------


def write_mlflow_model(
    dest: Path,
    *,
    onnx: bytes,
    metadata: dict[str, Any] | None = None,
    input_example: np.ndarray | None = None,
) -> Path:
    """Write ``onnx`` as an MLflow model directory at ``dest`` (the ``onnx`` flavor; see the module docstring).

    ``metadata`` (plain YAML types) becomes MLmodel's ``metadata``. The signature is a tensor signature from the
    ONNX graph, so ``pyfunc`` takes arrays of the graph's dtype (float32 for converted scikit-learn models) and
    returns a dict of outputs. The directory appears complete or not at all: it is written next to ``dest`` and
    renamed. Raises Conflict if ``dest`` exists, SpecError if ``onnx`` is not a model or ``metadata`` not YAML."""
    import onnx as onnx_lib

    dest = Path(dest)
    if dest.exists():
        raise Conflict(f"{dest} exists already; give a new directory for the MLflow model")
    try:
        graph = onnx_lib.load_model_from_string(onnx).graph
    except Exception as exc:
        raise SpecError(f"the bytes given are not an ONNX model: {type(exc).__name__}: {exc}") from exc
    requirements = [_pinned(p) for p in ("mlflow", "numpy", "onnx", "onnxruntime")]
    python = platform.python_version()
    mlmodel: dict[str, Any] = {
        "flavors": {
            "onnx": {
                "code": None, "data": "model.onnx", "onnx_session_options": None,
                "onnx_version": onnx_lib.__version__, "providers": ["CPUExecutionProvider"],
            },
            "python_function": {
                "data": "model.onnx", "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                "loader_module": "mlflow.onnx", "python_version": python,
            },
        },
        "metadata": metadata,
        "model_size_bytes": len(onnx),
        "model_uuid": uuid.uuid4().hex,
        "signature": {"inputs": _tensor_specs(graph, graph.input, inputs=True),
                      "outputs": _tensor_specs(graph, graph.output, inputs=False),
                      "params": None},
        "utc_time_created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    }  # fmt: skip
    files: dict[str, bytes] = {
        "model.onnx": onnx,
        "requirements.txt": "".join(f"{r}\n" for r in requirements).encode(),
    }
    if input_example is not None:
        rows = np.asarray(input_example).tolist()
        files["input_example.json"] = json.dumps(rows).encode()
        files["serving_input_example.json"] = json.dumps({"inputs": rows}, indent=2).encode()
        mlmodel["saved_input_example_info"] = {
            "artifact_path": "input_example.json", "serving_input_path": "serving_input_example.json",
            "type": "ndarray",
        }  # fmt: skip
    conda = {"channels": ["conda-forge"], "dependencies": [f"python={python}", "pip", {"pip": requirements}],
             "name": "mlflow-env"}  # fmt: skip
    python_env = {"python": python, "build_dependencies": ["pip", "setuptools", "wheel"],
                  "dependencies": ["-r requirements.txt"]}  # fmt: skip
    try:
        files["MLmodel"] = yaml.safe_dump(mlmodel, sort_keys=True).encode()
        files["conda.yaml"] = yaml.safe_dump(conda, sort_keys=False).encode()
        files["python_env.yaml"] = yaml.safe_dump(python_env, sort_keys=False).encode()
    except yaml.YAMLError as exc:
        raise SpecError(f"metadata must hold plain YAML values (str, numbers, lists, dicts): {exc}") from exc
    return _write_atomically(dest, files)


def _pinned(package: str) -> str:
    try:
        return f"{package}=={importlib_metadata.version(package)}"
    except importlib_metadata.PackageNotFoundError:
        return package


def _tensor_specs(graph: Any, values: Any, *, inputs: bool) -> str:
    """MLflow tensor specs (JSON) for graph inputs or outputs; -1 for a dynamic dimension."""
    from onnx.helper import tensor_dtype_to_np_dtype

    initializers = {i.name for i in graph.initializer}
    specs = []
    for value in values:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type))
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        specs.append({"type": "tensor", "tensor-spec": {"dtype": "str" if dtype.kind == "O" else dtype.name,
                                                        "shape": shape}, "name": value.name})  # fmt: skip
    if inputs and len(specs) == 1:
        del specs[0]["name"]  # an unnamed single input lets pyfunc take a bare array
    return json.dumps(specs)


def _write_atomically(dest: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` into a fresh directory beside ``dest``, fsync, rename it to ``dest``; nothing on failure.

    A ``dest`` created concurrently as an *empty* directory would be replaced (rename(2) semantics)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest
