"""The demo's data step: data with a home, what the policies allow and refuse, verified copies, the audit log."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from sqlalchemy import Engine

from archipel.cli import render_data
from archipel.data.samples import write_patients_csvs
from archipel.data.synthetic import write_reference_csv
from archipel.errors import PolicyViolation
from archipel.policy.audit import AuditLog
from archipel.services.data import add_dataset, list_datasets, read_dataset, replicate_dataset
from archipel.workspace import Workspace

__all__ = ["data_step", "patient_rows"]

REFERENCE = 30000
REFUSED_COPIES = (("patients-eu", "aws-us-east-1"), ("patients-us", "gcp-europe-west4"))


def data_step(workspace: Workspace, engine: Engine, out: Console) -> tuple[dict[str, Any], dict[str, bool]]:
    """Run the step; return its summary figures and its checks."""
    inbox = workspace.state_dir / "demo-inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    patients = write_patients_csvs(inbox)  # scikit-learn's breast-cancer data, split between two hospitals
    eu = add_dataset(
        workspace,
        engine,
        "patients-eu",
        patients["patients-eu"],
        site="onprem-frankfurt",
        classification="phi",
        description="breast-cancer records of an EU hospital",
    )
    us = add_dataset(
        workspace,
        engine,
        "patients-us",
        patients["patients-us"],
        site="aws-us-east-1",
        classification="phi",
        description="breast-cancer records of a US hospital",
    )
    ref = add_dataset(
        workspace,
        engine,
        "diagnosis-codes",
        write_reference_csv(inbox / "diagnosis-codes.csv", REFERENCE, seed=9),
        site="aws-us-east-1",
        classification="public",
        description="synthetic public reference table",
    )
    for report in (eu, us, ref):
        render_data.added(report)
    render_data.datasets_table(list_datasets(engine))

    allowed = replicate_dataset(workspace, engine, "patients-eu", "gcp-europe-west4")
    render_data.replicated(allowed)
    refusals = {name: _refused_copy(workspace, engine, out, name, site) for name, site in REFUSED_COPIES}
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
        "refused": refusals["patients-eu"],
        "refused_us": refusals["patients-us"],
        "public_replica": public.as_json(),
        "second_copy_bytes_moved": again.bytes_moved,
        "egress_usd": round(allowed.egress_usd + public.egress_usd, 8),
        "audit": report.as_json(),
    }
    checks = {
        "eu_copy_verified": allowed.bytes_moved == eu.version.bytes,
        "eu_patients_kept_out_of_us": refusals["patients-eu"]["untouched"]
        and bool(refusals["patients-eu"]["rule"]),
        "us_patients_kept_out_of_eu": refusals["patients-us"]["untouched"]
        and bool(refusals["patients-us"]["rule"]),
        "second_copy_moved_nothing": again.bytes_moved == 0,
        "public_egress_charged": public.egress_usd > 0,
        "audit_verified": report.ok,
    }
    return summary, checks


def _refused_copy(workspace: Workspace, engine: Engine, out: Console, name: str, site: str) -> dict[str, Any]:
    """Try a copy the residency rules forbid: the refusal, and whether the site's storage was left untouched."""
    store = workspace.storage(site)
    before = _keys(store)
    try:
        replicate_dataset(workspace, engine, name, site)
    except PolicyViolation as exc:
        out.print(f"[red]Refused[/] {name} → {site} by rule [bold]{exc.rule}[/]: {exc.reason}")
        return {"site": site, "rule": exc.rule, "reason": exc.reason, "untouched": _keys(store) == before}
    return {"site": site, "rule": None, "reason": None, "untouched": _keys(store) == before}


def _keys(store: Any) -> set[str]:
    return {i.key for i in store.list("datasets/")}


def patient_rows(workspace: Workspace, engine: Engine, features: list[str], site: str) -> Any:
    """patients-eu as the model takes it (float32, ``features`` in order), read at ``site`` (Arrow, no pandas)."""
    import numpy as np

    table = read_dataset(workspace, engine, "patients-eu", at_site=site)
    return np.column_stack([table.column(name).to_numpy() for name in features]).astype(np.float32)
