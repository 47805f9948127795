// The page's building blocks: key figures, cards, badges, tables and the states between (loading, empty, error).

import { h } from "./dom.js";

/** A key figure: a small label over a large value, with an optional line under it. */
export function tile(label, value, { testid, sub, tone } = {}) {
  return h(
    "div",
    { class: `tile${tone ? ` tone-${tone}` : ""}` },
    h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value", testid }, value),
    sub ? h("div", { class: "tile-sub" }, sub) : null,
  );
}

export function tiles(...items) {
  return h("div", { class: "tiles" }, items);
}

/** A card with a heading, an optional note at the right of the heading, and a body. */
export function card(title, body, { note, testid, cls, id } = {}) {
  return h(
    "section",
    { class: `card${cls ? ` ${cls}` : ""}`, testid, id },
    title || note ? h("header", { class: "card-head" }, title ? h("h2", title) : null, note ? h("div", { class: "card-note" }, note) : null) : null,
    h("div", { class: "card-body" }, body),
  );
}

export function grid(cols, ...children) {
  return h("div", { class: `grid grid-${cols}` }, children);
}

const TONES = {
  healthy: "ok", ok: "ok", succeeded: "ok", allowed: "ok", done: "neutral", ready: "ok", passed: "ok", in: "ok",
  running: "info", placed: "info", pending: "info", recovering: "warn", degraded: "warn", drift: "bad",
  unreachable: "bad", failed: "bad", lost: "bad", refused: "bad", cancelled: "neutral", down: "neutral",
  unknown: "neutral", disabled: "neutral", withheld: "neutral", out: "bad", ejected: "bad", unhealthy: "bad", readmitted: "ok",
};

/** A pill: its colour follows the word (healthy, RUNNING, refused, drift, ...) unless `tone` says otherwise. */
export function badge(text, { tone, testid, title } = {}) {
  const t = tone || TONES[String(text).toLowerCase()] || "neutral";
  return h("span", { class: `badge tone-${t}`, testid, title }, String(text));
}

/** A run's or step's state, with a pulsing dot while it is active. */
export function stateBadge(state, testid) {
  const active = ["PENDING", "PLACED", "RUNNING", "RECOVERING"].includes(state);
  const tone = TONES[String(state).toLowerCase()] || "neutral";
  const cls = `badge tone-${tone}${active ? " active" : ""}`;
  return h("span", { class: cls, testid }, active ? h("i", { class: "pulse" }) : null, state);
}

const CLASSES = { public: "public", internal: "internal", confidential: "confidential", pii: "pii", phi: "phi" };

export function classBadge(classification, testid) {
  const c = CLASSES[classification] || "internal";
  return h("span", { class: `badge class-${c}`, testid, title: `classification: ${classification}` }, classification.toUpperCase());
}

export function jurisdictionTag(j) {
  return h("span", { class: "juris", title: `jurisdiction ${j}` }, j);
}

export function healthDot(health) {
  return h("i", { class: `dot tone-${TONES[health] || "neutral"}`, "aria-hidden": "true" });
}

/**
 * A table: `columns` [{label, num?, cls?}] and `rows` of cell arrays (or {cells, testid, cls, onClick}).
 */
export function table(columns, rows, { testid, cls, empty } = {}) {
  if (!rows.length && empty) return empty;
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: `table${cls ? ` ${cls}` : ""}`, testid },
      h("thead", h("tr", columns.map((c) => h("th", { class: c.num ? "num" : c.cls || null, title: c.title }, c.label)))),
      h(
        "tbody",
        rows.map((row) => {
          const r = Array.isArray(row) ? { cells: row } : row;
          return h(
            "tr",
            { testid: r.testid, class: r.cls || (r.onClick ? "clickable" : null), onClick: r.onClick },
            r.cells.map((cell, i) => h("td", { class: columns[i]?.num ? "num" : columns[i]?.cls || null }, cell)),
          );
        }),
      ),
    ),
  );
}

/** What a page shows when there is nothing yet: what it means and the command that changes that. */
export function empty(title, text, command, testid) {
  return h(
    "div",
    { class: "empty", testid: testid || "empty" },
    h("div", { class: "empty-title" }, title),
    text ? h("p", text) : null,
    command ? h("pre", { class: "command" }, command) : null,
  );
}

export function errorBox(message, testid = "page-error") {
  return h("div", { class: "error-box", role: "alert", testid }, h("strong", "Could not load this page. "), message);
}

export function loading() {
  return h("div", { class: "loading", testid: "loading" }, h("i", { class: "spinner" }), "Loading…");
}

export function link(href, text, attrs = {}) {
  return h("a", { href, ...attrs }, text);
}

export function mono(text, title) {
  return h("code", { class: "mono", title }, text);
}

/** A definition list: pairs of [term, value]. */
export function facts(pairs, cls) {
  return h(
    "dl",
    { class: `facts${cls ? ` ${cls}` : ""}` },
    pairs.filter(Boolean).map(([k, v]) => [h("dt", k), h("dd", v)]),
  );
}

export function chips(items, cls = "chip") {
  return h("span", { class: "chips" }, items.map((i) => (i instanceof Node ? i : h("span", { class: cls }, i))));
}

/** The width in CSS pixels a chart gets inside a card that spans `1 / columns` of the page, so its text is drawn
 * at the size the style sheet means (an SVG scales its text with its viewBox). */
export function chartWidth(ctx, columns = 1) {
  const page = ctx.el.clientWidth || 1000;
  return Math.max(320, Math.floor((page - 20 * (columns - 1)) / columns) - 38);
}
