// Drift: per deployment and site the latest check (run where the data lives; only aggregates come back): per
// feature the test's score against its threshold, the verdict, a reference-vs-current histogram; and the alerts.

import { get } from "../api.js";
import { COLORS, barChart, histogram } from "../charts.js";
import { fill, h, tid } from "../dom.js";
import { int, pct, sig3, when } from "../format.js";
import { badge, card, chartWidth, empty, grid, table, tile, tiles } from "../ui.js";

function tests(report) {
  return [...(report.features || []), ...(report.predictions || [])];
}

function featureHistogram(report, feature, width) {
  const hist = report.histograms?.[feature];
  if (!hist) return h("p", { class: "muted" }, `No histogram for ${feature} (categorical features are compared by their category shares).`);
  return histogram(
    {
      edges: hist.edges,
      series: [
        { name: "reference (training data)", counts: hist.reference, color: COLORS.reference },
        { name: "current (served requests)", counts: hist.current, color: "#3867d6" },
      ],
    },
    { width, height: 190, binFormat: (v) => sig3(v), testid: tid("drift-histogram", report.deployment, report.site) },
  );
}

function siteCard(report, width) {
  const rows = tests(report);
  const dep = report.deployment;
  const site = report.site;
  const chart = barChart(
    rows.map((f) => ({
      label: f.feature,
      value: f.score ?? 0,
      marker: f.threshold,
      color: f.drifted ? COLORS.bad : COLORS.ok,
      valueText: `${sig3(f.score)} / ${sig3(f.threshold)}`,
      valueClass: f.drifted ? "bad" : null,
    })),
    {
      width,
      labelWidth: 130,
      valueWidth: 104,
      format: (v) => sig3(v),
      legend: [{ name: "drifted", color: COLORS.bad }, { name: "within threshold", color: COLORS.ok }, { name: "threshold", color: COLORS.ink, dashed: true }],
      testid: tid("drift-chart", dep, site),
    },
  );
  const table_ = table(
    [{ label: "Feature" }, { label: "Test" }, { label: "Score", num: true }, { label: "Threshold", num: true }, { label: "PSI", num: true }, { label: "Verdict" }],
    rows.map((f) => ({
      testid: tid("drift-row", dep, site, f.feature),
      cls: f.drifted ? "row-bad" : null,
      cells: [
        h("b", f.feature),
        f.test,
        h("span", { testid: tid("drift-score", dep, site, f.feature) }, sig3(f.score)),
        sig3(f.threshold),
        sig3(f.psi),
        badge(f.drifted ? "drift" : "ok", { testid: tid("drift-feature-verdict", dep, site, f.feature) }),
      ],
    })),
    { cls: "compact" },
  );
  const withHist = Object.keys(report.histograms || {});
  const initial = (report.drifted || []).find((f) => withHist.includes(f)) || withHist[0];
  const holder = h("div", initial ? featureHistogram(report, initial, width) : null);
  const picker = withHist.length
    ? h(
        "label",
        { class: "feature-pick" },
        "Distribution of",
        h(
          "select",
          {
            testid: tid("drift-feature-select", dep, site),
            onChange: (ev) => fill(holder, featureHistogram(report, ev.target.value, width)),
          },
          withHist.map((f) => h("option", { value: f, selected: f === initial }, f)),
        ),
      )
    : null;
  return card(
    h("span", site, " ", badge(report.verdict, { testid: tid("drift-verdict", dep, site) })),
    h(
      "div",
      h(
        "p",
        { class: "muted small" },
        `${dep} v${report.version} · ${int(report.rows)} sampled rows from ${when(report.since, { zone: false })} to ${when(report.until)} · `,
        h("span", { testid: tid("drift-share", dep, site) }, `${pct(report.share_drifted)} of features drifted`),
        report.drifted?.length ? ` (${report.drifted.join(", ")})` : "",
        report.schema && report.schema.ok === false ? h("span", { class: "bad-text" }, " · the schema changed") : null,
      ),
      chart,
      picker,
      holder,
      h("details", h("summary", "Every test"), table_),
    ),
    { testid: tid("drift-site", dep, site), note: report.note || null },
  );
}

export async function render(ctx) {
  const [reports, alerts] = await Promise.all([get("/api/v1/monitoring"), get("/api/v1/alerts", { limit: 50 })]);
  if (!ctx.alive) return;
  if (!reports.length) {
    fill(ctx.el,
      empty("No drift checks yet",
        "A deployment that samples requests (sample_rate > 0) is checked at each site every monitoring.every_s by " +
        "the server; only aggregates leave the site. Check one now:",
        "archipel monitor run malignancy", "drift-empty"),
      alerts.length ? alertsCard(alerts) : null,
    );
    return;
  }
  const byDeployment = new Map();
  for (const r of reports) {
    if (!byDeployment.has(r.deployment)) byDeployment.set(r.deployment, []);
    byDeployment.get(r.deployment).push(r);
  }
  const drifting = reports.filter((r) => r.verdict === "drift");
  const features = reports.reduce((n, r) => n + (r.drifted?.length || 0), 0);
  const width = chartWidth(ctx, 2);
  fill(ctx.el,
    tiles(
      tile("Sites checked", int(reports.length), { testid: "drift-checked", sub: `${byDeployment.size} deployment${byDeployment.size === 1 ? "" : "s"}` }),
      tile("Drifting", int(drifting.length), {
        testid: "drift-drifting",
        tone: drifting.length ? "bad" : "ok",
        sub: drifting.map((r) => `${r.deployment} at ${r.site}`).join(", ") || "every site within thresholds",
      }),
      tile("Features drifted", int(features), { testid: "drift-features", tone: features ? "bad" : null }),
      tile("Alerts", int(alerts.length), {
        testid: "alerts-count",
        tone: alerts.length ? "warn" : null,
        sub: alerts[0] ? `latest ${when(alerts[0].created_at)}` : "none",
      }),
    ),
    ...[...byDeployment.entries()].map(([dep, rs]) =>
      h("section", { class: "deployment", testid: tid("drift-deployment", dep) },
        h("h2", { class: "section-title" }, dep, h("span", { class: "muted" }, ` · latest check per site`)),
        grid(2, rs.sort((a, b) => a.site.localeCompare(b.site)).map((r) => siteCard(r, width))))),
    alertsCard(alerts),
  );
}

function alertsCard(alerts) {
  return card("Alerts", table(
    [{ label: "When" }, { label: "Kind" }, { label: "Deployment" }, { label: "Site" }, { label: "What" }],
    alerts.map((a) => ({
      testid: tid("alert", a.id),
      cells: [when(a.created_at), badge(a.kind, { tone: a.kind === "drift" ? "bad" : "warn" }), a.deployment, a.site || "—", a.reason],
    })),
    { testid: "alerts-table", empty: h("p", { class: "muted" }, "No alert: no check found drift and no service level was breached.") },
  ), { note: "newest first; an alert fires the triggers that match it (e.g. a retraining pipeline)" });
}
