// Cost: the ledger's totals; spend by site, by provider and by a tag (bars split into compute, egress and other);
// spend over time (stacked columns per bucket and the running total); budgets with how much of each is used.

import { ApiError, get, getOrNull } from "../api.js";
import { COLORS, barChart, colorFor, lineChart, meter, stackedColumns } from "../charts.js";
import { fill, h, tid } from "../dom.js";
import { int, pct, usd, when } from "../format.js";
import { card, chartWidth, empty, grid, table, tile, tiles } from "../ui.js";

const KINDS = [
  { key: "compute_usd", name: "compute", color: "#264653" },
  { key: "egress_usd", name: "egress", color: "#e9b949" },
  { key: "other_usd", name: "other (serving, storage)", color: "#9d8df1" },
];

function split(rows, width, testid) {
  return barChart(
    rows.map((r) => ({ label: r.key, value: r.total_usd, segments: KINDS.map((k) => ({ name: k.name, value: r[k.key], color: k.color })) })),
    { width, format: usd, legend: KINDS.map((k) => ({ name: k.name, color: k.color })), testid },
  );
}

function breakdown(report, prefix) {
  const total = report.total.total_usd || 0;
  const split = (r) => KINDS.filter((k) => r[k.key]).map((k) => `${k.name.split(" ")[0]} ${usd(r[k.key])}`).join(" · ");
  return table(
    [
      { label: report.by === "tag" ? report.tag_key || "tag" : report.by },
      { label: "Total", num: true },
      { label: "Share", num: true },
      { label: "Entries", num: true },
    ],
    [
      ...report.rows.map((r) => ({
        testid: tid(prefix, r.key),
        cells: [h("div", h("b", r.key), h("span", { class: "sub" }, split(r) || "—")),
          h("b", { testid: tid(prefix, r.key, "total") }, usd(r.total_usd)), total ? pct(r.total_usd / total) : "—", int(r.entries)],
      })),
      { cls: "total", cells: ["total", usd(report.total.total_usd), "", int(report.total.entries)] },
    ],
    { cls: "compact" },
  );
}

function seg(options, current, onPick, testid) {
  return h(
    "div",
    { class: "seg", role: "group", testid },
    options.map(([value, label]) =>
      h("button", {
        type: "button",
        class: value === current ? "on" : null,
        "aria-pressed": value === current,
        dataset: { value },
        onClick: () => onPick(value),
      }, label)),
  );
}

async function byTag(key) {
  // the API groups by a tag at /cost/tags/{key}; older servers took ?by=tag&tag=KEY
  const report = await getOrNull(`/api/v1/cost/tags/${encodeURIComponent(key)}`);
  return report || get("/api/v1/cost", { by: "tag", tag: key });
}

const TEXT = {
  noBudgets:
    "A budget is a spending limit per day, week, month or in total, over the entries whose tags match. " +
    "Declare them in archipel.yaml:",
  budgetsYaml: "budgets:\n  research:\n    amount_usd: 500\n    period: month\n    tags: {team: research}",
  nothingSpent:
    "Every attempt's compute, every byte of egress and every replica-hour goes to the cost ledger as it happens, " +
    "priced from the sites' catalogs.",
  noTags: "No ledger entry carries a tag. Tag runs and deployments (tags: {team: research}) to split spend by team.",
};

const BUCKET_WORDS = { day: "day", hour: "hour", minute: "minute", second: "second" };

function bucketLabel(iso, bucket) {
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  if (bucket === "day") return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())}`;
  if (bucket === "hour") return `${p(d.getUTCDate())}/${p(d.getUTCMonth() + 1)} ${p(d.getUTCHours())}h`;
  if (bucket === "minute") return `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}`;
  return `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`;
}

async function timelineCard(ctx, state) {
  const holder = h("div", { testid: "cost-timeline" });
  const draw = async () => {
    let data;
    try {
      data = await get("/api/v1/cost/timeline", { bucket: state.bucket, by: state.by });
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      fill(holder, h("p", { class: "muted" }, err.message));
      return;
    }
    if (!ctx.alive) return;
    const half = Math.floor(chartWidth(ctx, 1) / 2) - 10;
    const labels = data.points.map((p) => p.at);
    const series = data.keys.map((k) => ({ name: k, color: state.by === "kind" ? kindColor(k) : colorFor(k), values: data.points.map((p) => p.values[k] || 0) }));
    const fmt = (iso) => bucketLabel(iso, data.bucket);
    fill(holder,
      h("p", { class: "muted small", testid: "cost-timeline-bucket" }, data.points.length
        ? `${int(data.points.length)} buckets of one ${BUCKET_WORDS[data.bucket]} (UTC), ` +
          `${fmt(data.points[0].at)} to ${fmt(data.points[data.points.length - 1].at)}`
        : "no ledger entries"),
      data.points.length
        ? grid(2,
            h("div", h("h3", `Spend per ${BUCKET_WORDS[data.bucket]}, by ${state.by}`),
              stackedColumns({ labels, series }, { width: half, format: usd, xFormat: fmt, testid: "cost-timeline-chart" })),
            h("div", h("h3", "Running total"), lineChart(
              [{ name: "cumulative spend", color: COLORS.ink, area: true, points: data.points.map((p, i) => [i, p.cumulative_usd]) }],
              {
                width: half,
                height: 240,
                yMin: 0,
                yFormat: usd,
                xFormat: (i) => (data.points[Math.round(i)] ? fmt(data.points[Math.round(i)].at) : ""),
                testid: "cost-cumulative-chart",
              },
            )))
        : null,
    );
  };
  const controls = h("div", { class: "toolbar" });
  const pick = (key) => (value) => {
    state[key] = value;
    redrawControls();
    draw();
  };
  const redrawControls = () => {
    fill(controls,
      h("span", { class: "muted small" }, "per"),
      seg(["auto", "day", "hour", "minute", "second"].map((b) => [b, b]), state.bucket, pick("bucket"), "cost-bucket"),
      h("span", { class: "muted small" }, "by"),
      seg(["site", "provider", "kind"].map((b) => [b, b]), state.by, pick("by"), "cost-timeline-by"),
    );
  };
  redrawControls();
  await draw();
  return card("Over time", h("div", controls, holder), { note: "auto: the largest bucket that gives at least six points" });
}

function kindColor(kind) {
  return { compute: "#264653", egress: "#e9b949", serving: "#9d8df1", storage: "#c2477d" }[kind] || colorFor(`kind-${kind}`);
}

function budgetsCard(budgets) {
  if (!budgets.length) {
    return card("Budgets", empty("No budgets", TEXT.noBudgets, TEXT.budgetsYaml, "budgets-empty"));
  }
  return card("Budgets", table(
    [{ label: "Budget" }, { label: "Period" }, { label: "Spent", num: true }, { label: "Limit", num: true }, { label: "Used", num: true }, { label: "" }],
    budgets.map((b) => ({
      testid: tid("budget", b.name),
      cls: b.exceeded ? "row-bad" : null,
      cells: [h("b", b.name), b.period, usd(b.spent_usd), usd(b.limit_usd),
        h("b", { testid: tid("budget-used", b.name), class: b.exceeded ? "bad-text" : null },
          `${(b.percent_used ?? (100 * b.spent_usd) / b.limit_usd).toFixed(1)} %`),
        h("div", { class: "budget-meter" }, meter(b.spent_usd / b.limit_usd, { label: `${b.name} used` }))],
    })),
  ), { note: "this period (UTC calendar)" });
}

export async function render(ctx) {
  const [site, provider, tags] = await Promise.all([
    get("/api/v1/cost", { by: "site" }),
    get("/api/v1/cost", { by: "provider" }),
    getOrNull("/api/v1/cost/tags"),
  ]);
  if (!ctx.alive) return;
  const t = site.total;
  if (!t.entries) {
    fill(ctx.el,
      empty("Nothing spent yet", TEXT.nothingSpent, "archipel cost --by site", "cost-empty"),
      budgetsCard(site.budgets),
    );
    return;
  }
  const half = chartWidth(ctx, 2);
  const tagKeys = (tags || []).map((x) => x.key);
  const state = { tag: ctx.query.get("tag") || (tagKeys.includes("team") ? "team" : tagKeys[0]), bucket: "auto", by: "site" };
  const tagHolder = h("div");
  const drawTag = async () => {
    if (!state.tag) {
      fill(tagHolder, h("p", { class: "muted" }, TEXT.noTags));
      return;
    }
    const report = await byTag(state.tag);
    if (!ctx.alive) return;
    fill(tagHolder,
      h("div", { class: "toolbar" }, h("span", { class: "muted small" }, "tag"),
        seg(tagKeys.map((k) => [k, k]), state.tag, (v) => { state.tag = v; drawTag(); }, "cost-tag-keys")),
      h("div", { class: "grid grid-2", style: "margin-top:10px" }, split(report.rows, half, "cost-tag-chart"), breakdown(report, `cost-tag-${state.tag}`)),
    );
  };
  const timeline = await timelineCard(ctx, state);
  await drawTag();
  if (!ctx.alive) return;
  fill(ctx.el,
    tiles(
      tile("Total spent", usd(t.total_usd), { testid: "cost-total", sub: `${int(t.entries)} ledger entries` }),
      tile("Compute", usd(t.compute_usd), { testid: "cost-compute", sub: t.total_usd ? `${pct(t.compute_usd / t.total_usd)} of the total` : null }),
      tile("Egress", usd(t.egress_usd), { testid: "cost-egress", sub: t.total_usd ? `${pct(t.egress_usd / t.total_usd)} of the total` : null }),
      tile("Other", usd(t.other_usd), { testid: "cost-other", sub: "serving replica-hours, storage" }),
      tile("Budgets", site.budgets.length ? `${site.budgets.filter((b) => b.exceeded).length} of ${site.budgets.length} over` : "none", {
        testid: "cost-budgets", tone: site.budgets.some((b) => b.exceeded) ? "bad" : null,
      }),
    ),
    grid(2,
      card("By site", h("div", split(site.rows, half, "cost-site-chart"), breakdown(site, "cost-site")), { note: "the site that pays" }),
      card("By provider", h("div", split(provider.rows, half, "cost-provider-chart"), breakdown(provider, "cost-provider")))),
    card("By tag", tagHolder, { note: tags ? `${tagKeys.length} tag keys on the ledger's entries` : "" }),
    timeline,
    budgetsCard(site.budgets),
    h("p", { class: "muted small" }, `Amounts are in USD, priced from each site's catalog when the work happened; as of ${when(new Date().toISOString())}.`),
  );
}
