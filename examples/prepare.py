"""Pipeline step: features from the raw records (stays where the data may be processed)."""

import math

import pyarrow.compute as pc

import archipel

ctx = archipel.job.context()
table = ctx.input(ctx.inputs[0])
table = table.drop_columns([c for c in ("patient_id",) if c in table.column_names])
if "mean_area" in table.column_names and "mean_perimeter" in table.column_names:  # 1.0 for a perfect circle
    roundness = pc.divide(pc.multiply(table["mean_area"], 4 * math.pi), pc.power(table["mean_perimeter"], 2))
    table = table.append_column("mean_roundness", roundness)
ctx.output("features", table)
print(f"prepared {table.num_rows} rows, {table.num_columns} columns", flush=True)
