"""Rendering the registry: models, one version (signature, metrics, lineage, card), promotions, comparisons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from archipel.cli.render import console

if TYPE_CHECKING:
    from archipel.services.models import ModelView, Promotion, VersionView

__all__ = ["comparison", "console", "model", "promotion", "table", "version"]


def _metrics(metrics: dict[str, Any]) -> str:
    return (
        ", ".join(f"{k}={v:.4g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in metrics.items())
        or "-"
    )


def table(views: list[ModelView]) -> None:
    out = console()
    if not views:
        out.print(
            "No models yet: ctx.log_model(...) in a job, or archipel models register NAME FILE.onnx --site S"
        )
        return
    t = Table("model", "versions", "aliases", "latest", "metrics", "replicas")
    for m in views:
        latest = m.versions[-1] if m.versions else None
        t.add_row(
            m.name, str(len(m.versions)), ", ".join(f"{a}→{v}" for a, v in m.aliases.items()) or "-",
            str(latest.version) if latest else "-", _metrics(latest.metrics) if latest else "-",
            ", ".join(latest.replicas) if latest else "-",
        )  # fmt: skip
    out.print(t)


def model(m: ModelView) -> None:
    out = console()
    out.print(f"Model [bold]{escape(m.name)}[/] {escape(m.description)} aliases: {m.aliases or '-'}")
    t = Table(
        "version", "status", "aliases", "flavor", "metrics", "data", "run", "site", "replicas", "created"
    )
    for v in m.versions:
        t.add_row(
            str(v.version), v.status, ", ".join(v.aliases) or "-", v.flavor, _metrics(v.metrics),
            ", ".join(d["ref"] for d in v.lineage.get("datasets", [])) or "-", v.lineage.get("run_id") or "-",
            v.home_site, ", ".join(v.replicas), v.created_at.strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
    out.print(t)


def version(v: VersionView) -> None:
    out = console()
    out.print(
        f"[bold]{escape(v.ref)}[/] ({v.status}; {v.flavor} → ONNX, {v.bytes} bytes, sha256 {v.sha256[:16]}…) "
        f"aliases: {', '.join(v.aliases) or '-'}; {v.classification} data from {v.jurisdiction}, home {v.home_site}, "
        f"replicas: {', '.join(v.replicas)}"
    )
    sig = v.signature
    for side in ("inputs", "outputs"):
        out.print(
            f"  {side}: " + "; ".join(f"{i['name']} {i['datatype']} {i['shape']}" for i in sig.get(side, []))
        )
    if sig.get("feature_names"):
        out.print(f"  features: {', '.join(sig['feature_names'])}")
    out.print(f"  metrics: {_metrics(v.metrics)}")
    lineage = v.lineage
    data = ", ".join(f"{d['ref']} ({d['sha256'][:10]}…)" for d in lineage.get("datasets", [])) or "-"
    out.print(
        f"  lineage: data {data}; run {lineage.get('run_id') or '-'} step {lineage.get('step') or '-'}; "
        f"code {str(lineage.get('code_revision') or '-')[:12]}; site {lineage.get('site')}"
    )
    check = v.card.get("conversion_check", {})
    if check:
        out.print(
            f"  conversion check: max |diff| {check.get('max_abs_diff', 0):.3g} over {check.get('rows')} rows"
        )
    importance = v.card.get("importance")
    if importance:
        top = list(importance.items())[:5]
        out.print("  importance: " + ", ".join(f"{k} {i['mean']:+.4f}" for k, i in top))


def promotion(p: Promotion) -> None:
    out = console()
    for clause in p.clauses:
        mark = "[green]✓[/]" if clause.passed else "[red]✗[/]"
        out.print(f"  {mark} {escape(clause.clause)}: {escape(clause.detail)}")
    out.print(f"[green]Promoted[/] {p.model}/{p.version} to {p.alias} (was {p.previous or '-'})")


def comparison(data: dict[str, Any]) -> None:
    t = Table("", *data["runs"])
    for kind in ("params", "metrics"):
        for key, values in data[kind].items():
            cells = ["-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in values]
            t.add_row(f"{kind[:-1]} {key}", *cells)
    console().print(t)
