// Small SVG charts, no library: horizontal bars (optionally stacked, with a threshold marker), stacked columns,
// lines, a reference-vs-current histogram and a timeline of attempts. Each returns a <figure> holding the <svg>
// (scaled to its container through its viewBox) and an HTML legend; hovering a mark shows its <title>.

import { h, s } from "./dom.js";

const PALETTE = [
  "#3867d6", "#e8793a", "#20a39e", "#c2477d", "#8c6bd6", "#c9a227", "#4f8a3c", "#7b8794",
  "#5aa9e6", "#d95f5f",
];
const assigned = new Map();

/** A stable colour per key (a site keeps its colour on every chart of the session). */
export function colorFor(key) {
  if (!assigned.has(key)) assigned.set(key, PALETTE[assigned.size % PALETTE.length]);
  return assigned.get(key);
}

/** Give `keys` their colours in this order first (e.g. sites sorted by name), so colours do not depend on
 * which page was opened first. */
export function seedColors(keys) {
  for (const key of keys) colorFor(key);
}

export const COLORS = {
  ok: "#2f9e62",
  bad: "#d64545",
  warn: "#d99a1e",
  muted: "#9aa5b1",
  reference: "#9aa5b1",
  ink: "#1f2933",
  grid: "#e4e7eb",
};

/** About `count` round numbers spanning [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) hi = lo + (lo === 0 ? 1 : Math.abs(lo));
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function legend(entries) {
  if (!entries.length) return null;
  return h(
    "div",
    { class: "legend" },
    entries.map((e) =>
      h("span", { class: "legend-item" }, h("i", { class: `swatch${e.dashed ? " dashed" : ""}`, style: `--c:${e.color}` }), e.name),
    ),
  );
}

function figure(svg, entries, caption, testid) {
  return h("figure", { class: "chart", testid }, svg, legend(entries || []), caption ? h("figcaption", caption) : null);
}

function cut(text, n) {
  const str = String(text);
  return str.length > n ? `${str.slice(0, n - 1)}…` : str;
}

/**
 * Horizontal bars, one row per item: {label, value, color?, segments?: [{name, value, color}], marker?, title?}.
 * `segments` stack within the row; `marker` draws a threshold line on the row (e.g. a drift test's threshold).
 */
export function barChart(items, opts = {}) {
  const { format = String, width = 560, rowHeight = 30, labelWidth = 160, valueWidth = 92, testid } = opts;
  const top = 6;
  const height = top + items.length * rowHeight + 6;
  const plot = width - labelWidth - valueWidth;
  const max =
    opts.max ??
    Math.max(1e-12, ...items.map((i) => Math.max(i.value || 0, i.marker || 0)));
  const x = (v) => labelWidth + (Math.max(0, v) / max) * plot;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
  items.forEach((item, row) => {
    const y = top + row * rowHeight;
    const barY = y + rowHeight * 0.2;
    const barH = rowHeight * 0.6;
    svg.appendChild(
      s("text", { x: labelWidth - 10, y: y + rowHeight / 2, class: "label", "text-anchor": "end", "dominant-baseline": "middle" },
        s("title", String(item.label)), cut(item.label, 22)),
    );
    svg.appendChild(s("rect", { x: labelWidth, y: barY, width: plot, height: barH, class: "track", rx: 3 }));
    const segments = item.segments || [{ name: item.label, value: item.value, color: item.color || opts.color || PALETTE[0] }];
    let at = 0;
    for (const seg of segments) {
      if (!(seg.value > 0)) continue;
      const x0 = x(at);
      const w = Math.max(1.5, x(at + seg.value) - x0);
      svg.appendChild(
        s("rect", { x: x0, y: barY, width: w, height: barH, fill: seg.color, rx: segments.length > 1 ? 0 : 3 },
          s("title", `${item.label}${segments.length > 1 ? ` · ${seg.name}` : ""}: ${format(seg.value)}`)),
      );
      at += seg.value;
    }
    if (item.marker !== undefined && item.marker !== null) {
      const mx = x(item.marker);
      svg.appendChild(s("line", { x1: mx, x2: mx, y1: y + 2, y2: y + rowHeight - 2, class: "marker" },
        s("title", `${opts.markerName || "threshold"} ${format(item.marker)}`)));
    }
    svg.appendChild(
      s("text", { x: width - valueWidth + 8, y: y + rowHeight / 2, class: `value${item.valueClass ? ` ${item.valueClass}` : ""}`, "dominant-baseline": "middle" },
        item.valueText ?? format(item.value)),
    );
  });
  return figure(svg, opts.legend, opts.caption, testid);
}

function yAxis(svg, ticks, y, left, right, format) {
  for (const t of ticks) {
    svg.appendChild(s("line", { x1: left, x2: right, y1: y(t), y2: y(t), class: "grid" }));
    svg.appendChild(s("text", { x: left - 8, y: y(t), class: "tick", "text-anchor": "end", "dominant-baseline": "middle" }, format(t)));
  }
}

/**
 * Stacked columns: `labels` along x, `series` [{name, color, values}] stacked bottom-up.
 */
export function stackedColumns({ labels, series }, opts = {}) {
  const { format = String, xFormat = String, width = 720, height = 240, testid } = opts;
  const margin = { top: 12, right: 12, bottom: 30, left: 76 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const totals = labels.map((_, i) => series.reduce((sum, se) => sum + (se.values[i] || 0), 0));
  const ticks = niceTicks(0, Math.max(...totals, 0), 4);
  const top = ticks[ticks.length - 1] || 1;
  const y = (v) => margin.top + plotH - (v / top) * plotH;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
  yAxis(svg, ticks, y, margin.left, width - margin.right, format);
  const band = plotW / Math.max(1, labels.length);
  const barW = Math.max(1, Math.min(48, band * 0.72));
  const every = Math.max(1, Math.ceil(labels.length / Math.floor(plotW / 90)));
  labels.forEach((label, i) => {
    const cx = margin.left + band * i + band / 2;
    let acc = 0;
    for (const se of series) {
      const v = se.values[i] || 0;
      if (v <= 0) continue;
      const y0 = y(acc + v);
      svg.appendChild(
        s("rect", { x: cx - barW / 2, y: y0, width: barW, height: Math.max(0.75, y(acc) - y0), fill: se.color },
          s("title", `${xFormat(label)} · ${se.name}: ${format(v)}`)),
      );
      acc += v;
    }
    if (i % every === 0) {
      svg.appendChild(s("text", { x: cx, y: height - 10, class: "tick", "text-anchor": "middle" }, xFormat(label)));
    }
  });
  svg.appendChild(s("line", { x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0), class: "axis" }));
  return figure(svg, series.map((se) => ({ name: se.name, color: se.color })), opts.caption, testid);
}

/**
 * Lines: `series` [{name, color, points: [[x, y], ...], dashed?, area?}] over a numeric x.
 */
export function lineChart(series, opts = {}) {
  const { xFormat = String, yFormat = String, width = 720, height = 260, testid } = opts;
  const margin = { top: 14, right: 16, bottom: 34, left: 64 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const all = series.flatMap((se) => se.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (!(x1 > x0)) x1 = x0 + 1;
  const yTicks = niceTicks(opts.yMin ?? Math.min(...ys), opts.yMax ?? Math.max(...ys), 4);
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const x = (v) => margin.left + ((v - x0) / (x1 - x0)) * plotW;
  const y = (v) => margin.top + plotH - ((v - y0) / (y1 - y0 || 1)) * plotH;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
  yAxis(svg, yTicks, y, margin.left, width - margin.right, yFormat);
  const xTicks = opts.xTicks || niceTicks(x0, x1, Math.max(2, Math.floor(plotW / 110))).filter((t) => t >= x0 && t <= x1);
  for (const t of xTicks) {
    svg.appendChild(s("text", { x: x(t), y: height - 12, class: "tick", "text-anchor": "middle" }, xFormat(t)));
  }
  svg.appendChild(s("line", { x1: margin.left, x2: width - margin.right, y1: margin.top + plotH, y2: margin.top + plotH, class: "axis" }));
  if (opts.xLabel) {
    svg.appendChild(s("text", { x: width - margin.right, y: height - 1, class: "axis-label", "text-anchor": "end" }, opts.xLabel));
  }
  for (const se of series) {
    if (!se.points.length) continue;
    const path = se.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    if (se.area) {
      const last = se.points[se.points.length - 1];
      const first = se.points[0];
      svg.appendChild(s("path", { d: `${path}L${x(last[0])},${y(y0)}L${x(first[0])},${y(y0)}Z`, fill: se.color, class: "area" }));
    }
    svg.appendChild(s("path", { d: path, stroke: se.color, class: `line${se.dashed ? " dashed" : ""}` }));
    if (se.points.length <= 60) {
      for (const p of se.points) {
        svg.appendChild(s("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.6, fill: se.color },
          s("title", `${se.name} · ${xFormat(p[0])}: ${yFormat(p[1])}`)));
      }
    }
  }
  for (const m of opts.vmarkers || []) {
    svg.appendChild(s("line", { x1: x(m.x), x2: x(m.x), y1: margin.top, y2: margin.top + plotH, class: "marker" }, s("title", m.label)));
    svg.appendChild(s("text", { x: x(m.x) + 4, y: margin.top + 10, class: "marker-label" }, m.label));
  }
  return figure(svg, series.map((se) => ({ name: se.name, color: se.color, dashed: se.dashed })), opts.caption, testid);
}

/**
 * A histogram of reference and current counts over the same bins (`edges` has one more entry than each
 * series' counts); bars show each series' share of its rows, so samples of different sizes compare.
 */
export function histogram({ edges, series }, opts = {}) {
  const { width = 520, height = 200, binFormat = (v) => String(v), testid } = opts;
  const margin = { top: 10, right: 8, bottom: 34, left: 48 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const shares = series.map((se) => {
    const total = se.counts.reduce((a, b) => a + b, 0) || 1;
    return se.counts.map((c) => c / total);
  });
  const ticks = niceTicks(0, Math.max(...shares.flat(), 0.01), 3);
  const top = ticks[ticks.length - 1];
  const y = (v) => margin.top + plotH - (v / top) * plotH;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
  yAxis(svg, ticks, y, margin.left, width - margin.right, (v) => `${Math.round(v * 100)}%`);
  const bins = edges.length - 1;
  const band = plotW / Math.max(1, bins);
  const barW = (band * 0.8) / series.length;
  for (let b = 0; b < bins; b += 1) {
    const bx = margin.left + band * b + band * 0.1;
    series.forEach((se, k) => {
      const v = shares[k][b] || 0;
      svg.appendChild(
        s("rect", { x: bx + k * barW, y: y(v), width: Math.max(0.5, barW - 1), height: y(0) - y(v), fill: se.color },
          s("title", `${se.name}, ${binFormat(edges[b])}–${binFormat(edges[b + 1])}: ${(v * 100).toFixed(1)} % (${se.counts[b]} rows)`)),
      );
    });
  }
  const every = Math.max(1, Math.ceil((bins + 1) / Math.floor(plotW / 44)));
  edges.forEach((edge, i) => {
    if (i % every !== 0 && i !== edges.length - 1) return;
    svg.appendChild(s("text", { x: margin.left + band * i, y: height - 16, class: "tick", "text-anchor": "middle" }, binFormat(edge)));
  });
  svg.appendChild(s("line", { x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0), class: "axis" }));
  return figure(svg, series.map((se) => ({ name: se.name, color: se.color })), opts.caption, testid);
}

/**
 * A timeline: rows [{label, start, end, color, title, text}] with times in ms since the epoch; a row without an
 * end runs until now.
 */
export function timeline(rows, opts = {}) {
  const { width = 720, rowHeight = 30, labelWidth = 150, testid } = opts;
  const margin = { top: 8, bottom: 26, right: 14 };
  const now = Date.now();
  const t0 = Math.min(...rows.map((r) => r.start));
  const t1 = Math.max(...rows.map((r) => r.end ?? now));
  const span = Math.max(1, t1 - t0);
  const plotW = width - labelWidth - margin.right;
  const height = margin.top + rows.length * rowHeight + margin.bottom;
  const x = (t) => labelWidth + ((t - t0) / span) * plotW;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
  const ticks = niceTicks(0, span / 1000, Math.max(2, Math.floor(plotW / 100))).filter((t) => t * 1000 <= span + 1);
  for (const t of ticks) {
    const tx = x(t0 + t * 1000);
    svg.appendChild(s("line", { x1: tx, x2: tx, y1: margin.top, y2: height - margin.bottom, class: "grid" }));
    svg.appendChild(s("text", { x: tx, y: height - 8, class: "tick", "text-anchor": "middle" }, `${t} s`));
  }
  rows.forEach((r, i) => {
    const y = margin.top + i * rowHeight;
    svg.appendChild(s("text", { x: labelWidth - 10, y: y + rowHeight / 2, class: "label", "text-anchor": "end", "dominant-baseline": "middle" }, cut(r.label, 20)));
    const x0 = x(r.start);
    const w = Math.max(3, x(r.end ?? now) - x0);
    svg.appendChild(s("rect", { x: x0, y: y + rowHeight * 0.18, width: w, height: rowHeight * 0.64, rx: 3, fill: r.color, class: r.end ? "" : "live" },
      s("title", r.title || r.label)));
    if (r.text && w > 60) {
      svg.appendChild(s("text", { x: x0 + 6, y: y + rowHeight / 2, class: "in-bar", "dominant-baseline": "middle" }, cut(r.text, Math.floor(w / 7))));
    }
  });
  return figure(svg, opts.legend, opts.caption, testid);
}

/** A thin horizontal meter (budget use, share drifted): value in [0, 1+], coloured by thresholds. */
export function meter(share, { warn = 0.8, bad = 1.0, testid, label } = {}) {
  const color = share >= bad ? COLORS.bad : share >= warn ? COLORS.warn : COLORS.ok;
  return h(
    "div",
    { class: "meter", testid, role: "meter", "aria-valuenow": share, "aria-label": label || "" },
    h("div", { class: "meter-fill", style: `width:${Math.min(100, Math.max(0, share * 100)).toFixed(1)}%;background:${color}` }),
  );
}
