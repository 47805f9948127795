"""A job that reads a model: the plan pins the version behind the alias and keeps the job where the model's
training data allows it; the run copies the ONNX to its site and the job scores with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archipel.registry.convert import convert
from archipel.services.models import promote, register_version
from archipel.services.plan import load_plan_spec, make_plan
from archipel.services.reconciler import Reconciler
from archipel.services.runs import get_run
from tests.executor.conftest import submit

FEATURES = ("mean_radius", "mean_texture", "mean_smoothness")
SCORE = f"""
import numpy as np, onnxruntime as ort
import archipel
ctx = archipel.job.context()
table = ctx.input("patients")
X = np.column_stack([table[c].to_numpy().astype(np.float32) for c in {FEATURES!r}])
session = ort.InferenceSession(ctx.input("model"))
labels = session.run(None, {{session.get_inputs()[0].name: X}})[0]
ctx.log_metric("scored", len(labels)); ctx.log_metric("positive", int(labels.sum()))
"""


def test_a_model_input_is_pinned_placed_by_its_data_and_served_to_the_job(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from archipel.data.samples import LABEL
    from archipel.services.data import read_dataset

    ws, engine = runs_ws
    table = read_dataset(ws, engine, "patients-eu", as_pandas=True)
    X, y = table[list(FEATURES)].astype("float32"), table[LABEL]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    v1 = register_version(
        ws, engine, "scorer", convert(model, X[:32]), site="onprem-frankfurt", datasets=["patients-eu"]
    )
    promote(ws, engine, "scorer", v1.version)
    job = tmp_path / "job"
    job.mkdir()
    (job / "score.py").write_text(SCORE)
    (job / "job.yaml").write_text(
        "name: score\nrun: python score.py\n"
        "inputs: {patients: patients-eu, model: models:/scorer@production}\n"
        "resources: {cpus: 1, memory: 1GiB, spot: false}\nconstraints: {sites: [gcp-europe-west4, aws-us-east-1]}\n"
    )
    result = make_plan(ws, engine, load_plan_spec(job / "job.yaml"))
    assert "models:/scorer/1" in result.pins
    placement = result.plan.placements[0]
    assert placement.chosen.site == "gcp-europe-west4"
    refused = {r.site: r.rule for r in placement.rejections if r.kind == "policy"}
    assert refused["aws-us-east-1"] == "default-personal-data-residency"
    run_id = submit(ws, engine, job / "job.yaml")
    reconciler = Reconciler(ws, engine)
    try:
        assert reconciler.drive(run_id, timeout_s=120) == "SUCCEEDED", get_run(engine, run_id).steps
    finally:
        reconciler.close()
    metrics = {m["key"]: m["value"] for m in get_run(engine, run_id).metrics}
    assert metrics["scored"] == len(table) and metrics["positive"] == int(model.predict(X).sum())
    assert ws.storage("gcp-europe-west4").exists(v1.key)  # copied there, policy-checked, for the job
