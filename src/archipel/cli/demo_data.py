"""The demo's data step: data with a home, what the policies allow and refuse, verified copies, the audit log."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from sqlalchemy import Engine

from archipel.cli import render_data
from archipel.data.synthetic import write_patients_csv, write_reference_csv
from archipel.errors import PolicyViolation
from archipel.policy.audit import AuditLog
from archipel.services.data import add_dataset, list_datasets, read_dataset, replicate_dataset
from archipel.workspace import Workspace

__all__ = ["data_step", "patient_rows"]

EU_PATIENTS, US_PATIENTS, REFERENCE = 4000, 3000, 30000


def data_step(workspace: Workspace, engine: Engine, out: Console) -> tuple[dict[str, Any], dict[str, bool]]:
    """Run the step; return its summary figures and its checks."""
    inbox = workspace.state_dir / "demo-inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    eu = add_dataset(
        workspace,
        engine,
        "patients-eu",
        write_patients_csv(inbox / "eu.csv", EU_PATIENTS, seed=7, id_prefix="eu"),
        site="onprem-frankfurt",
        classification="phi",
        description="synthetic EU patient records",
    )
    us = add_dataset(
        workspace,
        engine,
        "patients-us",
        write_patients_csv(inbox / "us.csv", US_PATIENTS, seed=8, id_prefix="us"),
        site="aws-us-east-1",
        classification="phi",
        description="synthetic US patient records",
    )
    ref = add_dataset(
        workspace,
        engine,
        "diagnosis-codes",
        write_reference_csv(inbox / "codes.csv", REFERENCE, seed=9),
        site="aws-us-east-1",
        classification="public",
        description="synthetic public reference table",
    )
    for report in (eu, us, ref):
        render_data.added(report)
    render_data.datasets_table(list_datasets(engine))

    allowed = replicate_dataset(workspace, engine, "patients-eu", "gcp-europe-west4")
    render_data.replicated(allowed)
    aws = workspace.storage("aws-us-east-1")
    before = {i.key for i in aws.list("datasets/")}
    refusal: PolicyViolation | None = None
    try:
        replicate_dataset(workspace, engine, "patients-eu", "aws-us-east-1")
    except PolicyViolation as exc:
        refusal = exc
        out.print(f"[red]Refused[/] patients-eu → aws-us-east-1 by rule [bold]{exc.rule}[/]: {exc.reason}")
    untouched = {i.key for i in aws.list("datasets/")} == before
    public = replicate_dataset(workspace, engine, "diagnosis-codes", "gcp-europe-west4")
    render_data.replicated(public)
    again = replicate_dataset(workspace, engine, "patients-eu", "gcp-europe-west4")
    out.print(f"Replicating patients-eu to gcp-europe-west4 again moved {again.bytes_moved} bytes.")

    report = AuditLog(engine, workspace.state_dir).verify()
    render_data.verify_report(report)
    summary = {
        "datasets": {
            v.ref: {"rows": v.rows, "bytes": v.bytes, "sha256": v.sha256}
            for v in (eu.version, us.version, ref.version)
        },
        "replicated": allowed.as_json(),
        "refused": {"rule": refusal.rule if refusal else None, "reason": refusal.reason if refusal else None},
        "public_replica": public.as_json(),
        "second_copy_bytes_moved": again.bytes_moved,
        "egress_usd": round(allowed.egress_usd + public.egress_usd, 8),
        "audit": report.as_json(),
    }
    checks = {
        "eu_copy_verified": allowed.bytes_moved == eu.version.bytes,
        "us_copy_refused": refusal is not None and untouched,
        "second_copy_moved_nothing": again.bytes_moved == 0,
        "public_egress_charged": public.egress_usd > 0,
        "audit_verified": report.ok,
    }
    return summary, checks


def patient_rows(workspace: Workspace, engine: Engine, features: list[str], site: str) -> Any:
    """patients-eu as the model takes it (float32, ``features`` in order), read at ``site`` (Arrow, no pandas)."""
    import numpy as np

    table = read_dataset(workspace, engine, "patients-eu", at_site=site)
    return np.column_stack([table.column(name).to_numpy() for name in features]).astype(np.float32)
