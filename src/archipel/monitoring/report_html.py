"""``archipel monitor report --html``: one self-contained page (inline SVG, no script, nothing fetched) with every
site's latest drift verdict and, per feature, the reference's and the window's distributions over the reference's
deciles, side by side, from the aggregates in the metadata store."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["render_report"]

WIDTH, HEIGHT = 260, 90
STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#1d2733;background:#fbfbfc}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}table{border-collapse:collapse;margin:8px 0}
td,th{padding:3px 10px;border-bottom:1px solid #e3e6ea;text-align:left}th{color:#5b6673;font-weight:600}
.drift{color:#b3261e;font-weight:600}.ok{color:#1b7a3e}.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:8px 10px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
"""


def _bars(reference: list[int], current: list[int]) -> str:
    """Two sets of bars per bin: the reference's share (grey) and the window's (blue)."""
    total_r, total_c = max(sum(reference), 1), max(sum(current), 1)
    shares = [(r / total_r, c / total_c) for r, c in zip(reference, current, strict=False)]
    top = max([max(pair) for pair in shares] or [1]) or 1
    slot = WIDTH / max(len(shares), 1)
    out = []
    for i, (r, c) in enumerate(shares):
        for j, (value, colour) in enumerate(((r, "#a9b2bd"), (c, "#2f6fdb"))):
            h = value / top * (HEIGHT - 12)
            x = i * slot + 2 + j * (slot - 4) / 2
            tip = f"bin {i + 1}: reference {r:.1%}, window {c:.1%}"
            out.append(f'<rect x="{x:.1f}" y="{HEIGHT - h:.1f}" width="{(slot - 4) / 2:.1f}" height="{h:.1f}" '
                       f'fill="{colour}"><title>{tip}</title></rect>')  # fmt: skip
    return f'<svg width="{WIDTH}" height="{HEIGHT}" role="img">{"".join(out)}</svg>'


def render_report(deployment: str, reports: list[dict[str, Any]]) -> str:
    """The page for ``deployment``'s latest report per site (:func:`archipel.services.monitoring.monitor_status`)."""
    esc = html.escape
    parts = [f"<!doctype html><meta charset=utf-8><title>drift: {esc(deployment)}</title><style>{STYLE}</style>",
             f"<h1>Drift of {esc(deployment)}</h1>",
             '<p class=legend>bars: share of rows per reference decile <span style="background:#a9b2bd"></span>'
             'reference <span style="background:#2f6fdb"></span>recent requests</p>',
             "<table><tr><th>site</th><th>model</th><th>window (UTC)</th><th>rows</th><th>verdict</th>"
             "<th>drifted</th></tr>"]  # fmt: skip
    for r in reports:
        parts.append(
            f"<tr><td>{esc(r['site'])}</td><td>{esc(r['model'])}/{r['version']}</td>"
            f"<td>{esc(r['since'][:19])} → {esc(r['until'][:19])}</td><td>{r['rows']}</td>"
            f"<td class={'drift' if r['verdict'] == 'drift' else 'ok'}>{esc(r['verdict'])}</td>"
            f"<td>{esc(', '.join(r['drifted']) or '-')}</td></tr>"
        )
    parts.append("</table>")
    for r in reports:
        share = f" ({r['share_drifted']:.0%} of features drifted)" if r["share_drifted"] is not None else ""
        parts.append(f"<h2>{esc(r['site'])}: {esc(r['verdict'])}{share}</h2>"
                     f"<p>every bin that left the site covers at least {r['min_count_per_bin']} rows</p>")  # fmt: skip
        parts.append("<table><tr><th>feature</th><th>test</th><th>score</th><th>threshold</th><th>PSI</th>"
                     "<th>verdict</th></tr>")  # fmt: skip
        for f in [*r["features"], *r["predictions"]]:
            verdict = "drift" if f.get("drifted") else "ok"
            psi = "-" if f.get("psi") is None else f"{f['psi']:.3f}"
            score = "-" if f.get("score") is None else f"{f['score']:.4g}"
            name, test = esc(str(f["feature"])), esc(str(f.get("test")))
            parts.append(f"<tr><td>{name}</td><td>{test}</td><td>{score}</td><td>{f.get('threshold')}</td>"
                         f"<td>{psi}</td><td class={verdict}>{verdict}</td></tr>")  # fmt: skip
        parts.append("</table><div class=grid>")
        drifted = set(r["drifted"])
        for name, h in r["histograms"].items():
            mark = " class=drift" if name in drifted else ""
            parts.append(
                f"<div class=card><div{mark}>{esc(name)}</div>{_bars(h['reference'], h['current'])}</div>"
            )
        parts.append("</div>")
    return "\n".join(parts) + "\n"
