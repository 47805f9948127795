// Audit: the hash chain's verification first, then what the log holds (entries per action family) and the
// entries themselves, filtered by an action prefix (kept in the address: #/audit?action=policy.).

import { get } from "../api.js";
import { COLORS, barChart } from "../charts.js";
import { fill, h, s, tid } from "../dom.js";
import { int, short, when } from "../format.js";
import { badge, card, chartWidth, grid, table, tile, tiles } from "../ui.js";

const SHOWN = 500;
const PAGE = 100;
const COUNTED = 10000;
const COLUMNS = ["# · hash", "When", "Action", "Subject", "Sites", "Outcome", "Rule and reason"].map((label) => ({ label }));
const OUTCOME_COLORS = { ok: COLORS.ok, allowed: COLORS.ok, refused: COLORS.bad, drift: COLORS.warn };
const OUTCOME_TONES = { allowed: "ok", refused: "bad", done: "neutral", drift: "warn", ok: "ok" };

function seal(ok) {
  const d = ok
    ? "M12 2 4 5v6c0 5 3.4 9.7 8 11 4.6-1.3 8-6 8-11V5zm-1.2 14.2-3.5-3.5 1.4-1.4 2.1 2.1 4.9-4.9 1.4 1.4z"
    : "M12 2 4 5v6c0 5 3.4 9.7 8 11 4.6-1.3 8-6 8-11V5zm1 15h-2v-2h2zm0-4h-2V7h2z";
  return s("svg", { viewBox: "0 0 24 24", class: "seal", "aria-hidden": "true" }, s("path", { d }));
}

function verifyBanner(v) {
  const ok = v.ok;
  return h(
    "div",
    { class: `verify ${ok ? "ok" : "bad"}`, testid: "audit-verify" },
    seal(ok),
    h(
      "div",
      h("h2", { testid: "audit-status" }, ok ? "Chain intact" : `Chain broken${v.bad_seq ? ` at entry #${v.bad_seq}` : ""}`),
      h(
        "p",
        ok
          ? [
              h("span", { testid: "audit-verified-entries" }, int(v.entries)),
              ` entries verified from the first; the head (#${v.head_seq ?? "—"}) matches the anchor kept outside the`,
              " database.",
            ]
          : [v.problem || "the chain does not verify", `. Entries verified before it: ${int(v.entries)}.`],
      ),
    ),
  );
}

function families(entries) {
  const counts = new Map();
  for (const e of entries) {
    const family = e.action.split(".")[0];
    counts.set(family, (counts.get(family) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

export async function render(ctx) {
  const action = ctx.query.get("action") || "";
  const [verify, all, filtered] = await Promise.all([
    get("/api/v1/audit/verify"),
    get("/api/v1/audit", { limit: COUNTED }),
    action ? get("/api/v1/audit", { action, limit: SHOWN }) : null,
  ]);
  if (!ctx.alive) return;
  const shown = (filtered || all.slice(-SHOWN)).slice().reverse();
  const refused = all.filter((e) => e.outcome === "refused").length;
  const fams = families(all);
  const go = (prefix) => {
    location.hash = prefix ? `#/audit?action=${encodeURIComponent(prefix)}` : "#/audit";
  };
  const input = h("input", {
    type: "search",
    placeholder: "action prefix, e.g. policy.replicate",
    value: action,
    testid: "audit-filter",
    "aria-label": "Filter by action prefix",
  });
  const form = h(
    "form",
    { class: "toolbar", onSubmit: (ev) => { ev.preventDefault(); go(input.value.trim()); } },
    input,
    h("button", { type: "submit", class: "button" }, "Filter"),
    h("span", { class: "seg" }, [["", "all"], ...fams.map(([f]) => [`${f}.`, f])].map(([p, label]) =>
      h("button", { type: "button", class: p === action ? "on" : null, testid: tid("audit-chip", label), onClick: () => go(p) }, label))),
  );
  const rows = shown.map((e) => ({
    testid: tid("audit-row", e.seq),
    cls: e.outcome === "refused" ? "outcome-refused" : null,
    cells: [
      h("div", { title: `sha256 ${e.hash}` }, h("b", `#${e.seq}`), h("code", { class: "sub hash" }, short(e.hash, 8))),
      h("div", { class: "nowrap" }, when(e.at), h("span", { class: "sub" }, e.actor)),
      h("code", e.action),
      h("span", { class: "subject", title: e.subject }, e.subject),
      h("span", { class: "sites" }, (e.sites || []).join(", ") || "—"),
      badge(e.outcome, { tone: OUTCOME_TONES[e.outcome] || "neutral" }),
      h("div", { class: "reason", title: e.reason }, e.rule ? h("code", e.rule) : null, e.rule ? " " : null, e.reason),
    ],
  }));
  const width = chartWidth(ctx, 2);
  const tableHolder = h("div");
  const showTable = (n) => {
    fill(tableHolder,
      h(
        "p",
        { class: "muted small", testid: "audit-shown" },
        `${int(Math.min(n, rows.length))} of ${int(rows.length)} shown, newest first`,
        rows.length >= SHOWN ? ` (at most the newest ${SHOWN})` : "",
      ),
      table(COLUMNS, rows.slice(0, n), {
        testid: "audit-table",
        cls: "audit-table",
        empty: h("p", { class: "muted", testid: "audit-none" }, `No entry's action starts with “${action}”.`),
      }),
      rows.length > n
        ? h("button", { type: "button", class: "button", testid: "audit-more", onClick: () => showTable(rows.length) },
            `Show all ${int(rows.length)}`)
        : null,
    );
  };
  showTable(PAGE);
  fill(ctx.el,
    verifyBanner(verify),
    tiles(
      tile("Entries", int(verify.entries), {
        testid: "audit-entries",
        sub: all.length < verify.entries ? `the newest ${int(all.length)} are counted below` : "every one counted below",
      }),
      tile("Refusals", int(refused), { testid: "audit-refused", tone: refused ? "warn" : null, sub: "actions a policy or gate refused" }),
      tile("Policy decisions", int(all.filter((e) => e.action.startsWith("policy.")).length), { testid: "audit-policy" }),
      tile("Actors", int(new Set(all.map((e) => e.actor)).size), { sub: [...new Set(all.map((e) => e.actor))].slice(0, 3).join(", ") }),
    ),
    grid(
      2,
      card(
        "What the log holds",
        barChart(
          fams.map(([f, n]) => ({ label: f, value: n, color: "#3867d6" })),
          { width, format: (v) => int(v), testid: "audit-families" },
        ),
        { note: "entries per action family" },
      ),
      card("Outcomes", barChart(
        [...new Set(all.map((e) => e.outcome))]
          .map((o) => ({ label: o, value: all.filter((e) => e.outcome === o).length, color: OUTCOME_COLORS[o] || COLORS.muted }))
          .sort((a, b) => b.value - a.value),
        { width, format: (v) => int(v), testid: "audit-outcomes" },
      )),
    ),
    card(
      action ? `Entries whose action starts with “${action}”` : "Entries",
      h("div", form, tableHolder),
    ),
  );
}
