"""``archipel models import-mlflow`` / ``export-mlflow`` end to end: a benign scikit-learn MLflow model imports and
predicts like the original; a malicious pickle is refused and its payload never runs; an exported version loads in
MLflow and predicts the same."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.cli.conftest import run
from tests.conftest import require


@pytest.fixture(autouse=True)
def _mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        require("MLflow", "pip install 'archipel[mlflow]' (the dev extra has it)")


class _Payload:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.canary}",))


def test_import_predict_export_and_a_malicious_pickle(
    capsys: pytest.CaptureFixture[str], ws_with_data: Any, tmp_path: Path
) -> None:
    with warnings.catch_warnings():  # MLflow 3 warns about its own type hints while importing
        warnings.simplefilter("ignore")
        import mlflow.pyfunc
        import mlflow.sklearn
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(X, y)
    with warnings.catch_warnings():  # MLflow's own notices about type hints and environments
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            model, tmp_path / "benign", input_example=X[:5], serialization_format="pickle"
        )
    w = ["--workspace", str(ws_with_data.root)]
    code, out, err = run(capsys, *w, "models", "import-mlflow", str(tmp_path / "benign"), "--name", "bc",
        "--site", "onprem-frankfurt", "--json")  # fmt: skip
    assert code == 0, err
    version = json.loads(out)
    assert (
        version["flavor"] == "mlflow-sklearn" and version["card"]["conversion_check"]["max_abs_diff"] < 1e-4
    )
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(X[:20].tolist()))
    code, out, err = run(capsys, *w, "models", "predict", "bc/1", "--input", str(rows))
    assert code == 0, err
    outputs = json.loads(out)["outputs"]
    assert outputs["label"] == model.predict(X[:20]).tolist()
    np.testing.assert_allclose(outputs["probabilities"], model.predict_proba(X[:20]), atol=1e-5)

    # the same directory with a pickle whose __reduce__ runs a command: refused, nothing runs
    canary = tmp_path / "CANARY"
    (tmp_path / "benign" / "model.pkl").write_bytes(pickle.dumps(_Payload(canary)))
    code, _, err = run(capsys, *w, "models", "import-mlflow", str(tmp_path / "benign"), "--name", "bc",
        "--site", "onprem-frankfurt")  # fmt: skip
    assert code != 0 and "system" in err
    assert not canary.exists()
    assert json.loads(run(capsys, *w, "models", "show", "bc", "--json")[1])["versions"][-1]["version"] == 1

    # export: MLflow loads the onnx flavor and predicts what archipel predicts
    code, out, err = run(capsys, *w, "models", "export-mlflow", "bc/1", str(tmp_path / "exported"))
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mlflow.pyfunc.load_model(str(tmp_path / "exported"))
        predicted = loaded.predict(X[:20])
    probabilities = predicted["probabilities"] if isinstance(predicted, dict) else predicted
    np.testing.assert_allclose(np.asarray(probabilities), np.asarray(outputs["probabilities"]), atol=1e-6)
