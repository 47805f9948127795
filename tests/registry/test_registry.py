"""The registry end to end: train, convert (checked), register with lineage, gate, promote, replicate where the
policies allow, load there with ONNX Runtime and predict like the source model; versions stay dense under
concurrency on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from archipel.errors import PolicyViolation
from archipel.policy.audit import AuditLog
from archipel.registry.card import evaluate, permutation_importance, profile
from archipel.registry.convert import ConversionMismatch, convert, run_onnx
from archipel.services.models import (
    get_model,
    get_version,
    predict,
    promote,
    register_version,
    replicate_model,
    rollback,
    set_alias,
)


def _sklearn_model(X: Any, y: Any) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)


def _register(ws: Any, engine: Any, model: Any, X: Any, y: Any, **kwargs: Any) -> Any:
    converted = convert(model, X[:64])
    metrics = evaluate(converted.onnx, converted.signature, X, y)
    card = {
        "importance": permutation_importance(
            converted.onnx, converted.signature, X[:200], y[:200], repeats=2
        ),
        "profile": profile(X, list(X.columns)),
    }
    return register_version(ws, engine, "malignancy", converted, site="onprem-frankfurt",
        datasets=["patients-eu"], metrics=metrics, card=card, **kwargs)  # fmt: skip


def test_sklearn_round_trip_gate_promote_replicate_predict(
    reg_ws: tuple[Any, Any], breast_cancer: Any
) -> None:
    ws, engine = reg_ws
    X, y = breast_cancer
    model = _sklearn_model(X, y)
    v1 = _register(ws, engine, model, X, y, params={"C": 1.0})
    assert (v1.version, v1.flavor, v1.classification, v1.jurisdiction) == (1, "sklearn", "phi", "EU")
    assert v1.lineage["datasets"][0]["ref"] == "patients-eu@v1" and v1.lineage["site"] == "onprem-frankfurt"
    assert v1.signature["feature_names"] == list(X.columns) and v1.signature["task"] == "classifier"
    assert v1.card["conversion_check"]["max_abs_diff"] < 1e-4 and v1.metrics["auc"] > 0.99
    assert next(iter(v1.card["importance"].values()))["mean"] > 0
    # gates from archipel.yaml: the first production version has nothing to beat
    ws.file.write_text(ws.file.read_text() + "models:\n  malignancy:\n    gates:\n      production: "
        '["auc >= 0.9", "auc >= production.auc - 0.005"]\n')  # fmt: skip
    from archipel.workspace import load_workspace

    ws = load_workspace(ws.root)
    assert promote(ws, engine, "malignancy", 1).passed
    # a worse version: the gate names the failing clause, the alias does not move, both are audited
    weak = _register(
        ws, engine, model, X, y.sample(frac=1.0, random_state=0).to_numpy(), description="shuffled"
    )
    with pytest.raises(PolicyViolation, match=r"auc >= production.auc - 0.005") as refused:
        promote(ws, engine, "malignancy", weak.version)
    assert refused.value.rule == "gate:malignancy@production"
    assert get_version(engine, "malignancy@production").version == 1
    outcomes = [e.outcome for e in AuditLog(engine, ws.state_dir).entries() if e.action == "model.promote"]
    assert outcomes == ["allowed", "refused"]
    # replicate: to the other EU site, verified; to the US site, refused before a byte is written
    replica, moved = replicate_model(ws, engine, "models:/malignancy@production", "gcp-europe-west4")
    assert moved == v1.bytes and replica.replicas == ["gcp-europe-west4", "onprem-frankfurt"]
    with pytest.raises(PolicyViolation) as forbidden:
        replicate_model(ws, engine, "malignancy@production", "aws-us-east-1")
    assert forbidden.value.rule == "default-personal-data-residency"
    assert list(ws.storage("aws-us-east-1").list("models/")) == []
    # load at the replica with ONNX Runtime: the same predictions as the source model
    out = predict(ws, engine, "malignancy@production", X[:25].to_numpy().tolist(), site="gcp-europe-west4")
    np.testing.assert_allclose(
        np.asarray(out["outputs"]["probabilities"]), model.predict_proba(X[:25]), atol=1e-5
    )
    assert out["outputs"]["label"] == model.predict(X[:25]).tolist()
    by_name = predict(ws, engine, "malignancy/1", [dict(zip(X.columns, map(float, X.iloc[0]), strict=True))])
    assert by_name["outputs"]["label"] == [int(model.predict(X[:1])[0])]


def test_pytorch_round_trip(reg_ws: tuple[Any, Any], breast_cancer: Any) -> None:
    import torch

    ws, engine = reg_ws
    X, y = breast_cancer
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    data = torch.from_numpy(((X - X.mean()) / X.std()).to_numpy(np.float32).copy())
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(data), torch.from_numpy(y.to_numpy().copy()))
        loss.backward()
        optimiser.step()
    sample = data[:64].numpy()
    converted = convert(net, sample)
    assert converted.flavor == "torch" and converted.check["max_abs_diff"] < 1e-4
    v = register_version(
        ws, engine, "malignancy-net", converted, site="onprem-frankfurt", datasets=["patients-eu"]
    )
    replicate_model(ws, engine, v.ref, "gcp-europe-west4")
    out = predict(ws, engine, v.ref, sample[:10].tolist(), site="gcp-europe-west4")
    np.testing.assert_allclose(
        np.asarray(out["outputs"]["output"]), net(data[:10]).detach().numpy(), atol=1e-4
    )


def test_a_conversion_that_changes_the_outputs_is_refused(breast_cancer: Any) -> None:
    from archipel.registry.convert import compare

    X, y = breast_cancer
    converted = convert(_sklearn_model(X, y), X[:20])
    got = run_onnx(converted.onnx, X[:20].to_numpy())
    got["probabilities"] = got["probabilities"].copy()
    got["probabilities"][7, 1] += 0.01
    reference = run_onnx(converted.onnx, X[:20].to_numpy())
    with pytest.raises(ConversionMismatch, match=r"probabilities differs .* by 0.01 at row 7"):
        compare(reference, got)


def test_aliases_keep_history_and_roll_back(reg_ws: tuple[Any, Any], breast_cancer: Any) -> None:
    ws, engine = reg_ws
    X, y = breast_cancer
    model = _sklearn_model(X, y)
    for _ in range(3):
        _register(ws, engine, model, X, y)
    set_alias(ws, engine, "malignancy", "staging", 2)
    promote(ws, engine, "malignancy", 2)
    promote(ws, engine, "malignancy", 3)
    assert get_model(engine, "malignancy").aliases == {"production": 3, "staging": 2}
    assert rollback(ws, engine, "malignancy") == (3, 2)
    assert get_version(engine, "malignancy@production").version == 2
    assert get_version(engine, "models:/malignancy/3").aliases == []


def test_thirty_two_parallel_registrations_get_versions_one_to_thirty_two(
    reg_ws: tuple[Any, Any], breast_cancer: Any
) -> None:
    ws, engine = reg_ws
    X, y = breast_cancer
    converted = convert(_sklearn_model(X, y), X[:16])
    errors: list[BaseException] = []
    barrier = threading.Barrier(32)

    def register() -> None:
        try:
            barrier.wait()
            register_version(ws, engine, "concurrent", converted, site="onprem-frankfurt")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [v.version for v in get_model(engine, "concurrent").versions] == list(range(1, 33))


def test_the_python_sdk_registers_outside_a_job(reg_ws: tuple[Any, Any], breast_cancer: Any) -> None:
    import archipel

    ws, engine = reg_ws
    X, y = breast_cancer
    out = archipel.register_model("sdk-model", _sklearn_model(X, y), sample_input=X[:32], site="onprem-frankfurt",
        datasets=["patients-eu"], eval_data=(X[:200], y[:200]), workspace=ws.root)  # fmt: skip
    assert out["ref"] == "sdk-model/1" and out["metrics"]["accuracy"] > 0.9
    version = get_version(engine, "models:/sdk-model/1")
    assert (
        version.card["profile"]["rows"] == 200 and version.lineage["datasets"][0]["ref"] == "patients-eu@v1"
    )


def test_an_export_leaves_only_where_the_training_data_lets_derived_models_go(
    reg_ws: tuple[Any, Any], breast_cancer: Any, tmp_path: Any
) -> None:
    """`models export-mlflow` writes the model outside every site: a version trained on EU phi data is refused
    unless the folder is said to be at an EU site; nothing is written when refused; both outcomes are audited."""
    from archipel.services.models import export_mlflow

    ws, engine = reg_ws
    X, y = breast_cancer
    _register(ws, engine, _sklearn_model(X, y), X, y)
    for at in (None, "aws-us-east-1"):
        with pytest.raises(PolicyViolation) as refused:
            export_mlflow(ws, engine, "malignancy/1", tmp_path / f"out-{at}", at=at)
        assert refused.value.rule == "default-personal-data-residency"
        assert ("--at SITE" in str(refused.value)) == (at is None)
        assert not (tmp_path / f"out-{at}").exists()
    written = export_mlflow(ws, engine, "malignancy/1", tmp_path / "eu", at="onprem-frankfurt")
    assert (written / "model.onnx").is_file() and (written / "MLmodel").is_file()
    log = AuditLog(engine, ws.state_dir)
    decisions = [
        (e.outcome, e.sites) for e in log.entries(action="policy.derive_export") if "export" in e.details
    ]
    assert decisions == [("refused", ("a folder outside every site",)), ("refused", ("aws-us-east-1",)),
                         ("allowed", ("onprem-frankfurt",))]  # fmt: skip
    assert [e.subject for e in log.entries(action="model.export")] == ["malignancy/1"]
