// Models: each model's versions with their metrics, aliases and what each alias's gate says of each version;
// the lineage of a version (datasets with hashes -> run -> ONNX file -> copies per site); metrics by version.

import { get, getOrNull } from "../api.js";
import { colorFor, lineChart } from "../charts.js";
import { fill, h, tid } from "../dom.js";
import { bytes, metric, short, sig3, when } from "../format.js";
import { badge, card, chartWidth, chips, classBadge, empty, jurisdictionTag, mono, table } from "../ui.js";

const TEXT = {
  gates: "An alias moves to a version only when every clause holds; each version is checked above against what the " +
    "aliases point to now.",
  empty: "A run's model is registered as ONNX with its lineage (run, datasets with hashes); aliases such as " +
    "production move only when their gate holds.",
  register: "archipel models register malignancy model.onnx --site gcp-europe-west4 --data patients-eu",
};

function gateCell(name, version, gates) {
  const entries = Object.entries(gates?.gates || {});
  if (!entries.length) return h("span", { class: "muted" }, "no gate");
  return h(
    "div",
    { class: "gate" },
    entries.map(([alias, gate]) => {
      const verdict = gate.versions[String(version)];
      if (!verdict) return null;
      const failed = verdict.clauses.filter((c) => !c.passed);
      return h(
        "div",
        { testid: tid("model-gate", name, version, alias), title: verdict.clauses.map((c) => c.detail).join("\n") },
        h("span", { class: verdict.passed ? "pass" : "fail" }, `${alias}: ${verdict.passed ? "would pass" : "would fail"}`),
        failed.length ? h("span", { class: "sub" }, failed.map((c) => c.clause).join("; ")) : null,
      );
    }),
  );
}

function lineage(model, v) {
  const lin = v.lineage || {};
  const datasets = lin.datasets || [];
  const node = (kind, ...body) => h("div", { class: "lin-node" }, h("span", { class: "k" }, kind), ...body);
  const arrow = () => h("span", { class: "lin-arrow" }, "→");
  return h(
    "div",
    { class: "lineage", testid: tid("model-lineage", model.name, v.version) },
    datasets.length
      ? node("trained on", datasets.map((d) =>
          h("div", { testid: tid("lineage-dataset", d.ref) }, h("b", d.ref), " ", classBadge(d.classification), " ", jurisdictionTag(d.jurisdiction),
            h("div", mono(`sha256 ${short(d.sha256, 16)}`, d.sha256)))))
      : node("trained on", h("span", { class: "muted" }, "no dataset recorded")),
    arrow(),
    lin.run_id
      ? node("run", h("div", h("a", { href: `#/runs/${encodeURIComponent(lin.run_id)}`, testid: tid("lineage-run", model.name, v.version) }, mono(lin.run_id))),
          h("div", { class: "muted" }, `step ${lin.step ?? "—"} · attempt ${lin.attempt ?? "—"} · at ${lin.site ?? "—"}`),
          lin.code_revision ? h("div", mono(`code ${short(lin.code_revision, 12)}`, lin.code_revision)) : null)
      : node("run", h("span", { class: "muted" }, "registered by hand")),
    arrow(),
    node("version", h("div", h("b", `${model.name}/${v.version}`), " ", badge(v.flavor || "onnx", { tone: "info" })),
      h("div", mono(`sha256 ${short(v.sha256, 16)}`, v.sha256)),
      h("div", { class: "muted" }, `${bytes(v.bytes)} ONNX · ${v.signature?.feature_names?.length ?? "?"} features`)),
    arrow(),
    node("copies", chips((v.replicas || []).map((site) => h("span", { class: `chip${site === v.home_site ? " home" : ""}` }, site)))),
  );
}

function modelCard(ctx, model, gates) {
  const versions = [...model.versions].sort((a, b) => b.version - a.version);
  const keys = [...new Set(versions.flatMap((v) => Object.keys(v.metrics || {})))].sort();
  const aliasOf = (v) => Object.entries(model.aliases).filter(([, n]) => n === v.version).map(([a]) => a);
  const rows = versions.map((v) => ({
    testid: tid("model-version", model.name, v.version),
    cls: v.status !== "active" ? "row-bad" : null,
    cells: [
      h("div", h("b", `v${v.version}`), " ", aliasOf(v).map((a) => badge(a, { tone: "info" }))),
      when(v.created_at),
      ...keys.map((k) => h("span", { testid: tid("model-metric", model.name, v.version, k) }, metric(v.metrics?.[k]))),
      gateCell(model.name, v.version, gates),
      h("span", { testid: tid("model-replicas", model.name, v.version) }, chips(v.replicas || [])),
      v.lineage?.run_id ? h("a", { href: `#/runs/${encodeURIComponent(v.lineage.run_id)}` }, mono(v.lineage.run_id)) : "—",
      badge(v.status, { tone: v.status === "active" ? "ok" : "neutral" }),
    ],
  }));
  const pointed = model.aliases.production ?? Object.values(model.aliases)[0] ?? versions[0]?.version;
  const shown = versions.find((v) => v.version === pointed) || versions[0];
  const width = chartWidth(ctx, 2);
  const chart =
    versions.length > 1 && keys.length
      ? lineChart(
          keys.map((k) => ({
            name: k,
            color: colorFor(`metric-${k}`),
            points: [...versions].reverse().filter((v) => v.metrics?.[k] !== undefined).map((v) => [v.version, v.metrics[k]]),
          })),
          {
            width,
            height: 200,
            xFormat: (x) => `v${x}`,
            yFormat: (y) => sig3(y),
            xTicks: versions.map((v) => v.version),
            testid: tid("model-metrics-chart", model.name),
          },
        )
      : null;
  return card(
    h("span", model.name, " ", ...Object.entries(model.aliases).map(([a, n]) =>
      h("span", { class: "chip", testid: tid("model-alias", model.name, a) }, h("span", { class: "alias" }, a), ` → v${n}`))),
    h(
      "div",
      shown ? h("div", h("h3", `Lineage of ${model.name}/${shown.version}`), lineage(model, shown)) : null,
      h("h3", "Versions"),
      table(
        [
          { label: "Version" }, { label: "Registered" }, ...keys.map((k) => ({ label: k, num: true })),
          { label: "Gates" }, { label: "Copies at" }, { label: "Trained by" }, { label: "Status" },
        ],
        rows,
        { testid: tid("model-versions", model.name) },
      ),
      h(
        "div",
        { class: "grid grid-2" },
        chart ? h("div", h("h3", "Metrics by version"), chart) : null,
        Object.keys(gates?.gates || {}).length
          ? h("div", h("h3", "Gates (archipel.yaml)"), h("p", { class: "muted small" }, TEXT.gates),
              h("ul", { class: "gate-list" }, Object.entries(gates.gates).map(([alias, g]) =>
                h("li", h("b", alias), h("ul", g.clauses.map((c) => h("li", mono(c))))))))
          : h("div", h("h3", "Gates"), h("p", { class: "muted" }, "No gate is declared: any version can be promoted. Declare one under models: in archipel.yaml.")),
      ),
    ),
    {
      testid: tid("model-card", model.name),
      note: `${versions.length} version${versions.length === 1 ? "" : "s"}` +
        (shown ? ` · ${shown.classification.toUpperCase()} from ${shown.jurisdiction}` : ""),
    },
  );
}

export async function render(ctx) {
  const models = await get("/api/v1/models");
  if (!ctx.alive) return;
  if (!models.length) {
    fill(ctx.el, empty("No models yet", TEXT.empty, TEXT.register, "models-empty"));
    return;
  }
  const wanted = ctx.args[0] ? models.filter((m) => m.name === ctx.args[0]) : models;
  const full = await Promise.all(wanted.map((m) => get(`/api/v1/models/${encodeURIComponent(m.name)}`)));
  const gates = await Promise.all(wanted.map((m) => getOrNull(`/api/v1/models/${encodeURIComponent(m.name)}/gates`).catch(() => null)));
  if (!ctx.alive) return;
  fill(ctx.el, ...full.map((m, i) => modelCard(ctx, m, gates[i])));
}
