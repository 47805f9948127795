"""Pipeline step: a short report on the trained model (reads the model artifact the train step published)."""

import json

import archipel

ctx = archipel.job.context()
model = json.loads(ctx.input("model"))
weights = sorted(zip(model["features"], model["coef"][0], strict=True), key=lambda fw: -abs(fw[1]))
for feature, weight in weights:
    print(f"{feature:>20} {weight:+.4f}", flush=True)
ctx.log_metric("features", len(weights))
