"""Datasets: ingest to Parquet, versions ``name@vN``, schema and content identity."""
