"""Pickled scikit-learn models to ONNX without trusting the pickle: an allow-listing unpickler in a limited child.

The registry never unpickles at serving time; it serves ONNX. A pickle (an MLflow ``model.pkl``) is read once, at
import, by :func:`convert_pickled_sklearn`, which runs a separate Python process that

1. imports numpy, scikit-learn and skl2onnx (trusted code; nothing imports later on behalf of the file),
2. lowers its own limits (address space, CPU seconds, open files, file size, no core dumps) before it reads a
   single byte of the file; the limits are set by the child itself rather than in ``preexec_fn``, which CPython
   documents as unsafe in a threaded parent such as the API server,
3. loads the file with :class:`AllowListUnpickler` (or, for MLflow's ``skops`` format, with skops after every
   type skops does not trust by default has passed the same allow-list),
4. converts the estimator with skl2onnx and writes ONNX bytes, the sample input, the source model's outputs on it
   and JSON metadata into its output directory (numpy files without pickle).

The parent reads only those files (``allow_pickle=False``); it never unpickles anything. The child runs with an
environment holding only ``PATH``, ``HOME`` and thread settings, stdin closed, a fresh temp dir as cwd, in its own
session so a timeout kills everything it started.

Why an allow-list: pickle is a small stack machine whose only dangerous instructions are the ones that look up a
global (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ``, extension codes); all of them go through ``find_class``.
A deny-list ("no ``os.system``, no ``eval``") or an opcode scanner misses equivalents (``posix.system``,
``subprocess.Popen``, ``builtins.getattr`` chains, ``functools.partial``, ``operator.attrgetter``, dotted names
such as ``BaseEstimator.get_params.__globals__``, codecs tricks); published pickle-scanner bypasses are exactly
such gaps. An allow-list refuses everything it does not name, so an unknown gadget fails closed.

What is admitted (found by pickling and loading the common estimators with pickle, cloudpickle and protocol 2):

* scikit-learn classes that subclass ``BaseEstimator``, looked up only in modules already imported by the child
  (the file can never cause an import); dotted names are refused outright;
* scikit-learn helpers that fitted models hold: ``tree._tree.Tree``, the histogram GBM ``TreePredictor``, the
  loss and link classes of ``sklearn._loss``, SGD loss classes, distance metrics, ``KDTree``/``BallTree`` and
  their ``newObj``, ``Bunch``, ``_CalibratedClassifier`` and the MLP optimizers;
* numpy array/scalar reconstruction (``_reconstruct``, ``scalar``, ``_frombuffer``, ``ndarray``, ``dtype``,
  scalar types such as ``numpy.float64``) and its random generators' state; ``numpy.core`` names of numpy 1
  pickles are read as ``numpy._core`` (numpy refuses object arrays built from raw bytes, so no pointer forgery);
* pure-data builtins (``int``, ``float``, ``str``, ``bytes``, ``list``, ``dict``, ``set``, ``slice``, ...) and,
  for protocol-2 pickles, ``_codecs.encode`` replaced by a function that only encodes latin-1.

Not admitted: every other callable, including ``builtins.eval/exec/getattr/__import__``, ``os``/``posix``,
``subprocess``, ``functools``, ``operator``, ``copyreg`` and cloudpickle's by-value functions and classes (a
model with a lambda or a class defined in ``__main__`` is refused; re-save it with importable code).

What a class allow-list still leaves open: admitted classes get attacker-chosen state. ``Tree``, ``TreePredictor``,
``KDTree`` and friends are Cython objects whose C code trusts their node indices (skops 0.16 refuses ``Tree`` and
``TreePredictor`` unless trusted for this reason, but every tree model needs them), so a crafted file can make
the child read out of bounds or crash when it predicts, in the worst case run code; sizes can be chosen to
exhaust memory or CPU. Hence the child: limits, a scrubbed environment, and nothing to hand back but files the
parent parses as data. It still runs as the same user on the same network; for stronger isolation run the
importer under a dedicated user or in a container.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import contextlib
import importlib
import json
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from archipel.errors import MissingDependency, SpecError

__all__ = [
    "AllowListUnpickler",
    "ConvertedModel",
    "RefusedClass",
    "RefusedPickle",
    "allowed_global",
    "convert_pickled_sklearn",
]

GiB = 1 << 30
SAMPLE_ROWS = 32
SAMPLE_SEED = 0
FORMATS = ("pickle", "cloudpickle", "skops")
_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_NUMPY = {
    ("numpy", "ndarray"), ("numpy", "dtype"), (f"{_CORE}.multiarray", "_reconstruct"),
    (f"{_CORE}.multiarray", "scalar"), (f"{_CORE}.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"), ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pcg64", "PCG64"), ("numpy.random._pcg64", "PCG64DXSM"), ("numpy.random._philox", "Philox"),
    ("numpy.random._sfc64", "SFC64"), ("numpy.random._generator", "Generator"), ("numpy.random.mtrand", "RandomState"),
}  # fmt: skip
_BUILTINS = {
    ("builtins", n)
    for n in ("bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict", "set",
              "frozenset", "slice")
}  # fmt: skip
_SKLEARN_HELPERS = {
    ("sklearn.tree._tree", "Tree"), ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
    ("sklearn.utils._bunch", "Bunch"), ("sklearn.calibration", "_CalibratedClassifier"),
    ("sklearn.neural_network._stochastic_optimizers", "AdamOptimizer"),
    ("sklearn.neural_network._stochastic_optimizers", "SGDOptimizer"),
    ("sklearn.neighbors._kd_tree", "KDTree"), ("sklearn.neighbors._kd_tree", "newObj"),
    ("sklearn.neighbors._ball_tree", "BallTree"), ("sklearn.neighbors._ball_tree", "newObj"),
    ("sklearn.metrics._dist_metrics", "newObj"),
}  # fmt: skip
_EXACT = frozenset(_NUMPY | _BUILTINS | _SKLEARN_HELPERS)
# every class defined in these modules is admitted: losses, links and distance metrics hold numbers only
_CLASS_MODULES = frozenset({"sklearn._loss.loss", "sklearn._loss._loss", "sklearn._loss.link",
                            "sklearn.linear_model._sgd_fast", "sklearn.metrics._dist_metrics"})  # fmt: skip
# imported before any file is read, so that find_class only ever looks modules up
_SKLEARN_PACKAGES = (
    "base", "calibration", "cluster", "compose", "covariance", "cross_decomposition", "decomposition",
    "discriminant_analysis", "dummy", "ensemble", "feature_extraction", "feature_selection", "gaussian_process",
    "impute", "isotonic", "kernel_approximation", "kernel_ridge", "linear_model", "manifold", "mixture",
    "multiclass", "multioutput", "naive_bayes", "neighbors", "neural_network", "pipeline", "preprocessing",
    "random_projection", "semi_supervised", "svm", "tree",
)  # fmt: skip


class RefusedClass(pickle.UnpicklingError):
    """``find_class`` refused a global; ``refused`` is its ``module.name``."""

    def __init__(self, refused: str, why: str = "it is not on the allow-list") -> None:
        super().__init__(f"refused to load {refused}: {why}")
        self.refused = refused


class RefusedPickle(SpecError):
    """A pickled model names a class or function outside the allow-list; ``refused`` is its ``module.name``."""

    def __init__(self, message: str, *, refused: str) -> None:
        super().__init__(message)
        self.refused = refused


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stands in for ``_codecs.encode``, which protocol-2 pickles use for bytes (always latin-1)."""
    if encoding != "latin1" or not isinstance(text, str):
        raise RefusedClass("_codecs.encode", f"only latin-1 text is decoded, not {encoding!r}")
    return text.encode("latin1")


def _preload_sklearn() -> None:
    for package in _SKLEARN_PACKAGES:
        importlib.import_module(f"sklearn.{package}")


def allowed_global(module: str, name: str) -> Any:
    """The object ``module.name`` names if the allow-list (module docstring) admits it; RefusedClass otherwise.

    scikit-learn classes are looked up among modules already imported, never imported on the file's behalf."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if module.startswith(("numpy.core.", "numpy._core.")):
        module = _CORE + module[module.index(".", 6) :]
    refused = f"{module}.{name}"
    if "." in name or not name.isidentifier():
        raise RefusedClass(refused, "dotted or odd names are never looked up")
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    if (module, name) in _EXACT:
        return getattr(importlib.import_module(module), name)
    loaded = sys.modules.get(module)
    obj = getattr(loaded, name, None) if loaded is not None else None
    if module == "numpy" and isinstance(obj, type) and issubclass(obj, np.generic):
        return obj
    base = sys.modules.get("sklearn.base")
    if module.startswith("sklearn.") and isinstance(obj, type) and base is not None:
        if issubclass(obj, base.BaseEstimator):
            return obj
        if module in _CLASS_MODULES and obj.__module__ == module:
            return obj
    raise RefusedClass(refused)


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only :func:`allowed_global`'s allow-list.

    Constructing one imports scikit-learn's estimator packages (so their classes can be found); use it in a
    limited child process (:func:`convert_pickled_sklearn`), not in a server."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        _preload_sklearn()

    def find_class(self, module: str, name: str) -> Any:
        return allowed_global(module, name)


@dataclass(frozen=True)
class ConvertedModel:
    """What the child returns: ONNX bytes, the rows it ran, the source model's outputs on them (keyed by the
    ONNX output they correspond to) and what it learned about the estimator."""

    onnx: bytes
    sample_input: np.ndarray
    reference: dict[str, np.ndarray]
    feature_names: list[str] | None
    estimator: str
    """module.qualname of the top-level estimator, e.g. ``sklearn.pipeline.Pipeline``."""
    task: str = "classifier"
    """classifier, regressor or transformer."""
    classes: list[Any] | None = None


def convert_pickled_sklearn(
    pickle_path: Path,
    *,
    n_features: int | None = None,
    sample_input: np.ndarray | None = None,
    serialization_format: str = "cloudpickle",
    timeout_s: float = 60.0,
    memory_bytes: int = 2 * GiB,
) -> ConvertedModel:
    """Convert a pickled scikit-learn estimator to ONNX in a limited child (see the module docstring).

    ``n_features`` must match the model's ``n_features_in_`` when both are known; ``sample_input`` (2-D, numeric)
    is used as the sample, else 32 rows drawn from a fixed seed. ``timeout_s`` bounds the child's wall-clock
    time and its CPU seconds after imports. Raises RefusedPickle for a refused global, SpecError for a file that
    is not a convertible estimator or exceeds the limits, MissingDependency when the child lacks a package."""
    pickle_path = Path(pickle_path).resolve()
    if serialization_format not in FORMATS:
        raise SpecError(f"serialization format {serialization_format!r} is not one of {', '.join(FORMATS)}")
    if not pickle_path.is_file():
        raise SpecError(f"{pickle_path} is not a file")
    with tempfile.TemporaryDirectory(prefix="archipel-unpickle-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        args = ["convert", str(pickle_path), str(out), "--format", serialization_format]
        args += ["--memory", str(memory_bytes), "--cpu", str(math.ceil(timeout_s))]
        if n_features is not None:
            args += ["--n-features", str(int(n_features))]
        if sample_input is not None:
            np.save(work / "sample_in.npy", np.asarray(sample_input, dtype=np.float32), allow_pickle=False)
            args += ["--sample", str(work / "sample_in.npy")]
        _run_child(args, work, timeout_s, what=pickle_path.name)
        return _read_outputs(out, memory_bytes, pickle_path.name)


_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from archipel.registry.safe_unpickle import _child_main; raise SystemExit(_child_main(sys.argv[2:]))"
)


def _run_child(args: list[str], work: Path, timeout_s: float, *, what: str) -> None:
    # -I: no PYTHON* variables, no user site, no cwd on sys.path; the bootstrap adds archipel's own root
    src_root = str(Path(__file__).resolve().parents[2])
    env = {"PATH": os.defpath, "HOME": str(work), "TMPDIR": str(work), "LC_ALL": "C.UTF-8"}
    env |= {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    with open(work / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, src_root, *args],
            cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:  # the whole session: anything the child started goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if code is None:
        raise SpecError(f"converting {what} timed out after {timeout_s:g} s; the model was refused")
    if code == 0:
        return
    error = _error_report(work / "out" / "error.json")
    if error is not None:
        message = f"cannot import {what}: {error['message']}"
        if error["kind"] == "refused":
            raise RefusedPickle(message, refused=str(error["refused"]))
        if error["kind"] == "missing":
            raise MissingDependency(f"{message} (pip install scikit-learn skl2onnx)")
        raise SpecError(message)
    if code < 0:
        why = {signal.SIGXCPU: f"its CPU limit of {timeout_s:g} s", signal.SIGKILL: "a limit"}
        name = signal.Signals(-code)
        raise SpecError(f"converting {what} was killed by {name.name} ({why.get(name, 'it crashed')})")
    tail = (work / "stderr").read_bytes()[-2000:].decode(errors="replace").strip()
    raise SpecError(f"converting {what} failed (exit status {code}): {tail or 'no output'}")


def _error_report(path: Path) -> dict[str, Any] | None:
    """The child's error.json if it is well-formed, else None (a misbehaving child falls back to its stderr)."""
    try:
        error = json.loads(path.read_bytes()[:65536])
        return error if isinstance(error, dict) and {"kind", "message"} <= error.keys() else None
    except (OSError, ValueError):
        return None


def _read_outputs(out: Path, max_bytes: int, what: str) -> ConvertedModel:
    """The child's files, read as data only; the child is not trusted to have written sensible ones."""
    try:
        meta = json.loads((out / "meta.json").read_text())
        onnx_path = out / "model.onnx"
        if onnx_path.stat().st_size > max_bytes:
            raise ValueError("the ONNX file is larger than the memory limit")
        sample = np.load(out / "sample.npy", allow_pickle=False)
        with np.load(out / "reference.npz", allow_pickle=False) as arrays:
            reference = {name: arrays[f"r{i}"] for i, name in enumerate(meta["outputs"])}
        return ConvertedModel(
            onnx=onnx_path.read_bytes(), sample_input=sample, reference=reference,
            feature_names=meta["feature_names"], estimator=str(meta["estimator"]), task=str(meta["task"]),
            classes=meta["classes"],
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"converting {what} gave unreadable results: {exc}") from exc


# --- the child -------------------------------------------------------------------------------------------------


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    """Lower (soft and hard) limits; CPU time counts from now, not from the imports before."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(used.ru_utime + used.ru_stime) + cpu_seconds
    for limit, value in (
        (resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_FSIZE, memory_bytes), (resource.RLIMIT_CORE, 0),
    ):  # fmt: skip
        resource.setrlimit(limit, (value, value))


def _load(path: Path, fmt: str) -> Any:
    if fmt == "skops":
        sio = sys.modules["skops.io"]  # imported before the limits, like everything else
        untrusted = sio.get_untrusted_types(file=path)
        for qualified in untrusted:  # skops trusts its defaults itself; the rest must pass our list
            module, _, name = qualified.rpartition(".")
            allowed_global(module, name)
        return sio.load(path, trusted=untrusted)
    with open(path, "rb") as f:  # cloudpickle writes plain pickle opcodes for importable classes
        return AllowListUnpickler(f).load()


def _sample(width: int | None, sample_path: str | None) -> np.ndarray:
    if sample_path is not None:
        sample = np.load(sample_path, allow_pickle=False).astype(np.float32)
    elif width is None:
        raise ValueError(
            "the input width is unknown: the model has no n_features_in_ and no sample was given"
        )
    else:
        sample = np.random.default_rng(SAMPLE_SEED).standard_normal((SAMPLE_ROWS, width), dtype=np.float32)
    if sample.ndim != 2 or len(sample) == 0 or sample.shape[1] != (width or sample.shape[1]):
        raise ValueError(f"the sample input has shape {sample.shape}, the model takes {width} features")
    return sample


def _convert(
    model: Any, n_features: int | None, sample_path: str | None
) -> tuple[bytes, np.ndarray, dict, dict]:
    """ONNX bytes, the sample, the model's outputs on it (by ONNX output name) and metadata for the parent."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import BaseEstimator, is_classifier

    if not isinstance(model, BaseEstimator):
        raise TypeError(f"the file holds a {type(model).__name__}, not a scikit-learn estimator")
    known = getattr(model, "n_features_in_", None)
    if n_features is not None and known is not None and int(known) != n_features:
        raise ValueError(f"the model takes {known} features, the signature says {n_features}")
    width = n_features if n_features is not None else (None if known is None else int(known))
    sample = _sample(width, sample_path)
    classifier = is_classifier(model)
    options = {id(model): {"zipmap": False}} if classifier else None
    initial = [("input", FloatTensorType([None, sample.shape[1]]))]
    onx = convert_sklearn(model, initial_types=initial, options=options)
    outputs = [o.name for o in onx.graph.output]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "X does not have valid feature names"
        if classifier:
            task, reference = "classifier", {outputs[0]: np.asarray(model.predict(sample))}
            if hasattr(model, "predict_proba") and len(outputs) > 1:
                reference[outputs[1]] = model.predict_proba(sample).astype(np.float32)
        elif hasattr(model, "predict"):
            task = "regressor"
            reference = {outputs[0]: np.asarray(model.predict(sample), np.float32).reshape(len(sample), -1)}
        else:
            task, reference = "transformer", {outputs[0]: np.asarray(model.transform(sample), np.float32)}
    classes = getattr(model, "classes_", None) if classifier else None
    names = getattr(model, "feature_names_in_", None)
    meta = {
        "outputs": list(reference), "task": task,
        "feature_names": None if names is None else [str(n) for n in names],
        "estimator": f"{type(model).__module__}.{type(model).__qualname__}",
        "classes": None if classes is None else [c.item() if hasattr(c, "item") else str(c) for c in classes],
    }  # fmt: skip
    reference = {k: v.astype(str) if v.dtype.kind == "O" else v for k, v in reference.items()}
    return onx.SerializeToString(), sample, reference, meta


def _child_main(argv: list[str]) -> int:
    """The child: ``convert FILE OUT_DIR --format F --memory BYTES --cpu S [--n-features N] [--sample S.npy]``.
    Exit status 0 with results in OUT_DIR, 3 with OUT_DIR/error.json."""
    parser = argparse.ArgumentParser(prog="archipel.registry.safe_unpickle")
    parser.add_argument("command", choices=["convert"])
    parser.add_argument("file", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=FORMATS, default="cloudpickle")
    parser.add_argument("--memory", type=int, default=2 * GiB)
    parser.add_argument("--cpu", type=int, default=60)
    parser.add_argument("--n-features", type=int)
    parser.add_argument("--sample")
    args = parser.parse_args(argv)
    error: dict[str, Any]
    try:
        import skl2onnx  # noqa: F401  (imported before the limits and the file, like scikit-learn)

        if args.format == "skops":
            import skops.io  # noqa: F401
        _preload_sklearn()
        _limit(args.memory, args.cpu)
        onnx, sample, reference, meta = _convert(_load(args.file, args.format), args.n_features, args.sample)
        (args.out / "model.onnx").write_bytes(onnx)
        np.save(args.out / "sample.npy", sample, allow_pickle=False)
        np.savez(
            args.out / "reference.npz",
            allow_pickle=False,
            **{f"r{i}": v for i, v in enumerate(reference.values())},
        )
        (args.out / "meta.json").write_text(json.dumps(meta))
        return 0
    except RefusedClass as exc:
        error = {"kind": "refused", "refused": exc.refused, "message": str(exc)}
    except MemoryError:
        error = {"kind": "memory", "message": f"it exceeded the memory limit of {args.memory / GiB:.3g} GiB"}
    except ImportError as exc:
        error = {"kind": "missing", "message": f"the converter lacks a package: {exc}"}
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"  # skl2onnx quotes whole attribute arrays in its messages
        error = {"kind": "invalid", "message": message if len(message) < 2000 else f"{message[:1500]} [...]"}
    (args.out / "error.json").write_text(json.dumps(error))
    return 3


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
