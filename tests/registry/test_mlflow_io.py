"""MLflow interop: sklearn (pickle, cloudpickle, skops) and onnx flavors in, the onnx flavor out; malicious pickles
refused before they run, benign ones converted and predicting like the original."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from archipel.errors import Conflict, NotFound, SpecError
from archipel.registry.mlflow_io import read_mlflow_model, write_mlflow_model
from archipel.registry.safe_unpickle import (
    AllowListUnpickler,
    RefusedClass,
    RefusedPickle,
    allowed_global,
    convert_pickled_sklearn,
)
from tests.conftest import require

REQS = ["scikit-learn"]  # given, so that MLflow does not spend ~10 s inferring requirements


@pytest.fixture(scope="module")
def mlflow() -> Any:
    try:
        with warnings.catch_warnings():  # MLflow 3 warns about its own type hints while importing
            warnings.simplefilter("ignore")
            import mlflow.onnx
            import mlflow.pyfunc
            import mlflow.sklearn
    except ImportError as exc:
        require("mlflow", f"{exc} (pip install 'archipel[mlflow]')")
    return mlflow


@pytest.fixture(scope="module")
def cancer() -> tuple[Any, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, y.to_numpy()


def ort(onnx: bytes, X: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as rt

    session = rt.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: X}), strict=True))


def assert_predicts_like(onnx: bytes, model: Any, X: Any) -> None:
    """ONNX Runtime on float32 rows gives the labels and (within 1e-5) the probabilities of the original."""
    got = ort(onnx, np.asarray(X, dtype=np.float32))
    np.testing.assert_array_equal(got["label"], model.predict(X))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), atol=1e-5, rtol=0)


# --- benign models in ------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Operation with range is deprecated")  # MLflow's example writer, pandas 3
def test_pipeline_with_dataframe_example_imports_and_predicts_identically(
    mlflow, cancer, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    mlflow.sklearn.save_model(
        model,
        tmp_path / "m",
        serialization_format="cloudpickle",
        input_example=X.iloc[:5],
        pip_requirements=REQS,
    )
    got = read_mlflow_model(tmp_path / "m")
    assert (got.flavor, got.estimator, got.task, got.classes) == (
        "sklearn",
        "sklearn.pipeline.Pipeline",
        "classifier",
        [0, 1],
    )
    assert got.feature_names == list(X.columns)
    np.testing.assert_array_equal(got.sample_input, X.iloc[:5].to_numpy(np.float32))  # the input example
    np.testing.assert_array_equal(got.reference["label"], model.predict(X.iloc[:5]))
    assert got.source["sklearn"]["serialization_format"] == "cloudpickle"
    assert got.source["model_uuid"] and got.signature["inputs"][0]["name"] == "mean radius"
    assert_predicts_like(got.onnx, model, X)


@pytest.mark.parametrize("kind", ["random_forest", "gradient_boosting"])
def test_tree_ensembles_in_pickle_format(mlflow, cancer, tmp_path: Path, kind: str) -> None:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    X, y = cancer
    X = X.to_numpy()
    est = (
        RandomForestClassifier(20, random_state=0)
        if kind == "random_forest"
        else GradientBoostingClassifier()
    )
    model = est.fit(X, y)
    mlflow.sklearn.save_model(
        model, tmp_path / "m", serialization_format="pickle", input_example=X[:4], pip_requirements=REQS
    )
    got = read_mlflow_model(tmp_path / "m")
    assert got.feature_names is None and got.sample_input.shape == (4, 30)
    assert got.signature["inputs"][0]["tensor-spec"]["shape"] == [-1, 30]
    assert_predicts_like(got.onnx, model, X)


def test_skops_format_mlflow_default(mlflow, cancer, tmp_path: Path) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = cancer
    model = GradientBoostingClassifier(n_estimators=20).fit(X.to_numpy(), y)
    # skops (MLflow 3's default) refuses Tree unless told to trust it: its node indices are not bounds-checked
    trusted = ["sklearn.tree._tree.Tree"]
    mlflow.sklearn.save_model(model, tmp_path / "m", pip_requirements=REQS, skops_trusted_types=trusted)
    got = read_mlflow_model(tmp_path / "m")
    assert got.source["sklearn"]["serialization_format"] == "skops"
    assert got.sample_input.shape == (32, 30)  # no input example: rows drawn from a fixed seed
    assert_predicts_like(got.onnx, model, X.to_numpy())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_onnx_flavor_with_external_data(mlflow, cancer, tmp_path: Path) -> None:
    from onnx import numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = cancer
    model = make_pipeline(StandardScaler(), MLPClassifier((64,), max_iter=50, random_state=0)).fit(
        X.to_numpy(), y
    )
    onx = convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, 30]))], options={id(model): {"zipmap": False}}
    )
    for init in onx.graph.initializer:  # as raw bytes, the form onnx moves to external data (torch writes it)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init), init.name))
    mlflow.onnx.save_model(
        onx, tmp_path / "m", input_example=X.to_numpy(np.float32)[:3], pip_requirements=REQS
    )
    standard = {"MLmodel", "model.onnx", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
                "serving_input_example.json"}  # fmt: skip
    assert {p.name for p in (tmp_path / "m").iterdir()} - standard, "the weights are stored beside model.onnx"
    got = read_mlflow_model(tmp_path / "m")
    assert (got.flavor, got.reference, got.estimator) == ("onnx", None, None)
    assert got.sample_input.shape == (3, 30)
    assert len(got.onnx) > (tmp_path / "m" / "model.onnx").stat().st_size
    assert_predicts_like(got.onnx, model, X.to_numpy())


def _estimator(name: str) -> Any:
    from sklearn import (
        calibration,
        compose,
        ensemble,
        impute,
        linear_model,
        neighbors,
        neural_network,
        svm,
        tree,
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = compose.ColumnTransformer(
        [("s", StandardScaler(), [0, 1]), ("o", OneHotEncoder(handle_unknown="ignore"), [2])],
        remainder="passthrough",
    )
    return {
        "logistic": lambda: linear_model.LogisticRegression(),
        "forest": lambda: ensemble.RandomForestClassifier(5),
        "gbm": lambda: ensemble.GradientBoostingClassifier(n_estimators=5),
        "hist_gbm": lambda: ensemble.HistGradientBoostingClassifier(max_iter=5),
        "sgd": lambda: linear_model.SGDClassifier(loss="log_loss"),
        "tree": lambda: tree.DecisionTreeClassifier(),
        "impute_scale_logistic": lambda: make_pipeline(impute.SimpleImputer(), StandardScaler(),
                                                       linear_model.LogisticRegression()),
        "column_transformer": lambda: make_pipeline(columns, linear_model.LogisticRegression()),
        "kd_tree_knn": lambda: neighbors.KNeighborsClassifier(algorithm="kd_tree"),
        "mlp": lambda: neural_network.MLPClassifier(max_iter=5),
        "calibrated_svc": lambda: calibration.CalibratedClassifierCV(svm.LinearSVC(), cv=2),
        "ridge": lambda: linear_model.Ridge(),
        "linear": lambda: linear_model.LinearRegression(),
        "forest_regressor": lambda: ensemble.RandomForestRegressor(5),
        "gbm_regressor": lambda: ensemble.GradientBoostingRegressor(n_estimators=5),
        "hist_gbm_regressor": lambda: ensemble.HistGradientBoostingRegressor(max_iter=5),
    }[name]()  # fmt: skip


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, "cloudpickle"])
@pytest.mark.parametrize(
    "name",
    ["logistic", "forest", "gbm", "hist_gbm", "sgd", "tree", "impute_scale_logistic", "column_transformer",
     "kd_tree_knn", "mlp", "calibrated_svc", "ridge", "linear", "forest_regressor", "gbm_regressor",
     "hist_gbm_regressor"],
)  # fmt: skip
def test_allow_list_reads_common_estimators(cancer, name: str, protocol: int | str) -> None:
    """In-process (benign files only): the allow-list admits what people train, in every pickle dialect."""
    import io

    import cloudpickle

    X, y = cancer
    X = X.to_numpy()[:200].copy()
    X[:, 2] = X[:, 2] > 90  # a category for the OneHotEncoder
    model = _estimator(name).fit(X, y[:200])
    data = cloudpickle.dumps(model) if protocol == "cloudpickle" else pickle.dumps(model, protocol=protocol)
    loaded = AllowListUnpickler(io.BytesIO(data)).load()
    predict = "predict_proba" if hasattr(model, "predict_proba") else "predict"
    np.testing.assert_array_equal(getattr(loaded, predict)(X), getattr(model, predict)(X))


def test_a_regressor_converts_with_its_reference_outputs(cancer, tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge

    X, y = cancer
    model = Ridge().fit(X, y.astype(float))  # a DataFrame: the model keeps its feature names
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    got = convert_pickled_sklearn(tmp_path / "m.pkl", n_features=30)
    assert (got.task, got.classes, got.estimator) == ("regressor", None, "sklearn.linear_model._ridge.Ridge")
    assert got.feature_names == list(X.columns) and got.sample_input.shape == (32, 30)
    np.testing.assert_allclose(
        ort(got.onnx, got.sample_input)["variable"], got.reference["variable"], atol=1e-4
    )
    expected = got.sample_input.astype(np.float64) @ model.coef_ + model.intercept_
    np.testing.assert_allclose(got.reference["variable"][:, 0], expected, rtol=1e-5)
    with pytest.raises(SpecError, match="the model takes 30 features, the signature says 4"):
        convert_pickled_sklearn(tmp_path / "m.pkl", n_features=4)


# --- malicious models refused ------------------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``: what an attacker writes by hand."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _payload(kind: str, canary: Path) -> tuple[bytes, str]:
    """A malicious pickle that creates ``canary`` if loaded with plain pickle, and the global it is refused at."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    touch = f"open({str(canary)!r}, 'w').close()"
    if kind == "os_system":
        return pickle.dumps(_Reduce(os.system, f"touch {canary}")), "posix.system"
    if kind == "builtins_exec":
        return pickle.dumps(_Reduce(exec, touch)), "builtins.exec"
    if kind == "subprocess":
        return pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(canary)])), "subprocess.Popen"
    if kind == "protocol0_eval":  # hand-written, with a Python 2 module name mapped to builtins
        return f"c__builtin__\neval\n(V{touch}\ntR.".encode(), "builtins.eval"
    if kind == "partial_called":  # partial(posix.system, "touch ...") built, then called with ()
        return f"cfunctools\npartial\n(cposix\nsystem\nVtouch {canary}\ntR)R.".encode(), "functools.partial"
    lr = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    if kind == "nested_in_estimator_state":
        lr.solver_state_ = {"warm": [_Reduce(open, str(canary), "w")]}
        return pickle.dumps(make_pipeline(lr)), "io.open"
    if kind == "cloudpickle_lambda":
        import cloudpickle

        evil = FunctionTransformer(lambda X: (open(canary, "w").close(), X)[1])
        return cloudpickle.dumps(make_pipeline(evil, lr)), "cloudpickle.cloudpickle._make_function"
    raise AssertionError(kind)


PAYLOADS = ["os_system", "builtins_exec", "subprocess", "protocol0_eval", "nested_in_estimator_state",
            "partial_called", "cloudpickle_lambda"]  # fmt: skip


def _mlflow_dir(root: Path, data: bytes, fmt: str = "pickle", pickled_model: str = "model.pkl") -> Path:
    root.mkdir()
    (root / "model.pkl").write_bytes(data)
    flavor = {"pickled_model": pickled_model, "serialization_format": fmt, "sklearn_version": "1.9.1"}
    mlmodel = {"flavors": {"sklearn": flavor, "python_function": {"loader_module": "mlflow.sklearn"}}}
    (root / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return root


@pytest.mark.parametrize("kind", PAYLOADS)
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, kind: str) -> None:
    canary = tmp_path / "CANARY"
    data, refused = _payload(kind, canary)
    with pytest.raises(RefusedPickle) as caught:
        read_mlflow_model(_mlflow_dir(tmp_path / "m", data))
    assert caught.value.refused == refused and refused in str(caught.value)
    assert isinstance(caught.value, SpecError)
    assert not canary.exists()


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """Control: plain pickle (in a throwaway process) does create every canary, so the refusals above count."""
    files = []
    for kind in PAYLOADS:
        data, _ = _payload(kind, tmp_path / f"canary-{kind}")
        (tmp_path / f"{kind}.pkl").write_bytes(data)
        files.append(str(tmp_path / f"{kind}.pkl"))
    script = (
        "import pickle, sys, time\n"
        "for f in sys.argv[1:]:\n"
        "    obj = pickle.load(open(f, 'rb'))\n"
        "    if hasattr(obj, 'predict'): obj.predict([[0.0]])\n"
        "time.sleep(0.2)\n"  # os.system and Popen return before touch has run
    )
    subprocess.run([sys.executable, "-c", script, *files], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.glob("canary-*")) == sorted(f"canary-{k}" for k in PAYLOADS)


def test_dotted_names_never_walk_from_an_allowed_class() -> None:
    """Protocol 4 resolves ``a.b.c`` names attribute by attribute: from an admitted class to module globals."""
    import io

    data = b"\x80\x04csklearn.base\nBaseEstimator.get_params.__globals__\n."
    assert "inspect" in pickle.loads(data)  # plain pickle hands out sklearn.base's globals
    with pytest.raises(RefusedClass, match=r"sklearn\.base\.BaseEstimator\.get_params\.__globals__: dotted"):
        AllowListUnpickler(io.BytesIO(data)).load()


@pytest.mark.parametrize(
    "qualified",
    ["builtins.eval", "builtins.getattr", "builtins.__import__", "builtins.type", "os.system", "posix.system",
     "subprocess.run", "functools.partial", "operator.attrgetter", "copyreg._reconstructor", "numpy.load",
     "numpy.frombuffer", "sklearn.base.clone", "sklearn.utils.estimator_checks.check_estimator", "joblib.load",
     "cloudpickle.cloudpickle._make_skeleton_class", "pickle.loads", "__builtin__.getattr", "builtins.object"],
)  # fmt: skip
def test_allow_list_refuses_gadgets(qualified: str) -> None:
    module, _, name = qualified.rpartition(".")
    with pytest.raises(RefusedClass):
        allowed_global(module, name)


def test_protocol2_bytes_helper_only_decodes_latin1() -> None:
    encode = allowed_global("_codecs", "encode")
    assert encode("\x00\xff", "latin1") == b"\x00\xff"
    with pytest.raises(RefusedClass):
        encode("x", "rot13")


# --- limits ------------------------------------------------------------------------------------------------------


def test_a_pickle_that_allocates_too_much_is_stopped_by_the_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "big.pkl").write_bytes(pickle.dumps(_Reduce(bytes, 3 << 30)))  # bytes(3 GiB): allowed class
    with pytest.raises(SpecError, match="memory limit of 1 GiB"):
        convert_pickled_sklearn(tmp_path / "big.pkl", memory_bytes=1 << 30)


def test_a_slow_conversion_is_killed_at_the_timeout(tmp_path: Path) -> None:
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(_Reduce(bytes, 1)))
    with pytest.raises(SpecError, match=r"timed out after 0\.2 s"):
        convert_pickled_sklearn(tmp_path / "m.pkl", timeout_s=0.2)


def test_crafted_state_in_an_allowed_class_crashes_only_the_child(cancer, tmp_path: Path) -> None:
    """What the allow-list cannot stop (Tree's C code trusts its node indices) is contained by the child."""
    from sklearn.tree import DecisionTreeClassifier

    X, y = cancer
    model = DecisionTreeClassifier(max_depth=3).fit(X.to_numpy(), y)
    state = model.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = 10**9  # 64 GB past the node array
    model.tree_.__setstate__(state)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    with pytest.raises(SpecError, match="killed by SIGSEGV"):
        convert_pickled_sklearn(tmp_path / "m.pkl")


def test_a_pickle_that_is_not_an_estimator_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    with pytest.raises(SpecError, match="holds a dict, not a scikit-learn estimator"):
        convert_pickled_sklearn(tmp_path / "m.pkl")


# --- malformed directories ---------------------------------------------------------------------------------------


def test_model_paths_must_stay_inside_the_directory(tmp_path: Path) -> None:
    (tmp_path / "outside.pkl").write_bytes(b"")
    with pytest.raises(SpecError, match="outside the model directory"):
        read_mlflow_model(_mlflow_dir(tmp_path / "m", b"", pickled_model="../outside.pkl"))
    with pytest.raises(NotFound):
        read_mlflow_model(tmp_path / "missing")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "MLmodel").write_text("flavors: {transformers: {}}\n")
    with pytest.raises(SpecError, match="archipel imports onnx or sklearn"):
        read_mlflow_model(tmp_path / "t")


def test_onnx_external_data_must_stay_inside_the_directory(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    (tmp_path / "secret.bin").write_bytes(b"0123456789abcdef")
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weights.external_data.add(key=key, value=value)
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weights])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    (tmp_path / "m" / "MLmodel").write_text("flavors: {onnx: {data: model.onnx}}\n")
    with pytest.raises(SpecError, match="points outside"):
        read_mlflow_model(tmp_path / "m")


# --- export ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lr_onnx(cancer) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X.to_numpy(), y)
    options = {id(model): {"zipmap": False}}
    return convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, 30]))], options=options
    ).SerializeToString()


def test_export_serves_through_mlflow_pyfunc_like_onnxruntime(
    mlflow, cancer, lr_onnx: bytes, tmp_path: Path
) -> None:
    X = cancer[0].to_numpy(np.float32)
    dest = write_mlflow_model(tmp_path / "out", onnx=lr_onnx, metadata={"archipel": {"model": "cancer", "version": 3}},
                              input_example=X[:2])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temporary directory is left behind"
    served = mlflow.pyfunc.load_model(str(dest)).predict(X)
    expected = ort(lr_onnx, X)
    assert served.keys() == expected.keys() == {"label", "probabilities"}
    for name in expected:
        np.testing.assert_array_equal(served[name], expected[name])
    meta = mlflow.models.Model.load(str(dest))
    assert meta.metadata == {"archipel": {"model": "cancer", "version": 3}}
    assert meta.flavors["onnx"]["providers"] == ["CPUExecutionProvider"]
    assert "onnxruntime==" in (dest / "requirements.txt").read_text()
    again = read_mlflow_model(dest)  # and back in
    assert again.flavor == "onnx" and again.sample_input.shape == (2, 30)
    np.testing.assert_array_equal(ort(again.onnx, X)["probabilities"], expected["probabilities"])


def test_export_is_atomic(lr_onnx: bytes, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="plain YAML"):
        write_mlflow_model(tmp_path / "out", onnx=lr_onnx, metadata={"bad": object()})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SpecError, match="not an ONNX model"):
        write_mlflow_model(tmp_path / "out", onnx=b"not onnx")
    write_mlflow_model(tmp_path / "out", onnx=lr_onnx)
    with pytest.raises(Conflict):
        write_mlflow_model(tmp_path / "out", onnx=lr_onnx)
