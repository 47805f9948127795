"""Train a malignancy classifier on breast-cancer records, with checkpoints: the same script runs on every site.

Launched by archipel (``archipel run examples/train.yaml``): the input is read from the site's storage, the
model state is checkpointed when the spec's interval is due, and a recovered attempt resumes from the last
checkpoint, so the final model is bit-identical to an uninterrupted run's. ``TRAIN_STEPS`` and
``STEP_SECONDS`` (environment) set the length and pace of training.
"""

import json
import os
import time

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import archipel

FEATURES = [  # the ten mean_* measurements of the cell nuclei
    "mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
    "mean_compactness", "mean_concavity", "mean_concave_points", "mean_symmetry", "mean_fractal_dimension",
]  # fmt: skip
STATE = (  # what the model has learned so far: a resumed attempt continues exactly where this one stopped
    "coef_", "intercept_", "t_", "classes_", "n_iter_", "n_features_in_", "_expanded_class_weight",
    "_average_coef", "_average_intercept", "_standard_coef", "_standard_intercept",
)  # fmt: skip
BATCH = 64

ctx = archipel.job.context()
table = ctx.input(ctx.inputs[0])
columns = [c for c in FEATURES if c in table.column_names] or [
    c for c in table.column_names if c not in ("id", "patient_id", "malignant")
]
raw = np.column_stack([table[c].to_numpy().astype(np.float64) for c in columns])
scaler = StandardScaler().fit(raw)  # the served model takes raw features: the scaling travels inside it
X = scaler.transform(raw)
y = table["malignant"].to_numpy().astype(np.int64)
steps = int(os.environ.get("TRAIN_STEPS", "200"))
pause = float(os.environ.get("STEP_SECONDS", "0"))
ctx.log_params(
    {"model": "SGDClassifier", "loss": "log_loss", "average": True, "steps": steps, "batch": BATCH}
)

# averaged SGD: the mean of the weights over the steps, steadier than the last step's
model = SGDClassifier(loss="log_loss", shuffle=False, random_state=0, alpha=1e-3, average=True)
state = ctx.checkpoint.load()
start = 0
if state is not None:  # resume: the model's learned state and the next step
    for name in STATE:
        if name in state["model"]:
            setattr(model, name, state["model"][name])
    start = int(state["step"])
    print(f"resumed at step {start} from checkpoint {ctx.checkpoint.seq}", flush=True)

for step in range(start, steps):
    lo = (step * BATCH) % len(y)
    model.partial_fit(X[lo : lo + BATCH], y[lo : lo + BATCH], classes=np.array([0, 1]))
    ctx.log_metric("train_accuracy", float(model.score(X[lo : lo + BATCH], y[lo : lo + BATCH])), step=step)
    if pause:
        time.sleep(pause)
    if ctx.checkpoint.due():
        state = {"step": step + 1, "model": {n: getattr(model, n) for n in STATE if hasattr(model, n)}}
        ctx.checkpoint.save(state, step=step + 1)

accuracy = float(model.score(X, y))
ctx.log_metric("accuracy", accuracy, step=steps)
weights = {"features": columns, "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist()}
# the registry gets it as ONNX, checked against the model, with metrics, a model card and this run's lineage
served = Pipeline([("scale", scaler), ("model", model)])  # raw features in, as a caller sends them
ctx.log_model(
    os.environ.get("MODEL_NAME", "malignancy"),
    served,
    sample_input=raw[:64],
    eval_data=(raw, y),
    feature_names=columns,
)
ctx.output("model", json.dumps(weights, sort_keys=True).encode())
print(f"trained {steps} steps: accuracy {accuracy:.4f}", flush=True)
