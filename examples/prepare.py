"""Pipeline step: features from the raw records (stays where the data may be processed)."""

import pyarrow.compute as pc

import archipel

ctx = archipel.job.context()
table = ctx.input(ctx.inputs[0])
table = table.drop_columns([c for c in ("patient_id",) if c in table.column_names])
if "age" in table.column_names and "bmi" in table.column_names:
    table = table.append_column("age_x_bmi", pc.multiply(table["age"], table["bmi"]))
ctx.output("features", table)
print(f"prepared {table.num_rows} rows, {table.num_columns} columns", flush=True)
