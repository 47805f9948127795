// Deployments: per deployment its version (and canary), its replicas per site with the traffic each one counted
// itself (read from its /metrics, refreshed every 3 s), and what the gateways did when a replica failed
// (ejections, unhealthy marks, re-admissions, from the audit log).

import { get, getOrNull } from "../api.js";
import { COLORS, barChart } from "../charts.js";
import { fill, h, tid } from "../dom.js";
import { ago, int, ms, perHour, plural, when } from "../format.js";
import { badge, card, chartWidth, chips, empty, grid, jurisdictionTag, mono, table, tile, tiles } from "../ui.js";

const POLL_MS = 3000;
const ACTIONS = { "gateway.eject": "ejected", "gateway.unhealthy": "unhealthy", "gateway.readmit": "re-admitted" };

const TEXT = {
  down: "The deployment is down: its replicas were stopped and their hours are in the ledger. Start it again with its spec.",
  nothing:
    "A deployment serves a model version at the sites its training data allows, behind gateways that fail over " +
    "between them.",
};

function hourlyOf(deployment) {
  return deployment.replicas.reduce((n, r) => n + (r.hourly_usd || 0), 0);
}

function rotation(replica, failover) {
  const state = failover?.replicas?.[String(replica.id)];
  if (!replica.reachable) return badge("unreachable", { tone: "bad", title: replica.problem || "" });
  if (state?.out) {
    const word = state.last.action === "gateway.eject" ? "ejected" : "unhealthy";
    return badge(word, { tone: "bad", title: `${state.last.action} ${when(state.last.at)}` });
  }
  return badge("in rotation", { tone: "ok" });
}

function failoverCard(dep, failover) {
  const sites = Object.entries(failover?.by_site || {});
  const events = [...(failover?.events || [])].reverse().slice(0, 12);
  if (!sites.length) {
    return card("Failover", h("p", { class: "muted", testid: tid("failover-none", dep.name) },
      "No gateway has ejected a replica of this deployment or marked one unhealthy: every replica answered."), { cls: "failover" });
  }
  return card(
    "Failover",
    h(
      "div",
      table(
        [{ label: "Site" }, { label: "Ejected", num: true }, { label: "Unhealthy", num: true }, { label: "Re-admitted", num: true }, { label: "Last" }],
        sites.map(([site, f]) => ({
          testid: tid("failover", dep.name, site),
          cells: [
            h("b", site),
            h("span", { testid: tid("failover", dep.name, site, "ejections") }, int(f.ejections)),
            h("span", { testid: tid("failover", dep.name, site, "unhealthy") }, int(f.unhealthy)),
            h("span", { testid: tid("failover", dep.name, site, "readmits") }, int(f.readmits)),
            f.last ? h("span", { class: "nowrap", title: `${ACTIONS[f.last.action] || f.last.action} ${when(f.last.at)}` }, ago(f.last.at)) : "—",
          ],
        })),
        { testid: tid("failover-table", dep.name) },
      ),
      h("h3", "Gateway events, newest first"),
      h(
        "ul",
        { class: "events", testid: tid("failover-events", dep.name) },
        events.map((e) =>
          h("li", h("time", when(e.at)), badge(ACTIONS[e.action] || e.action, { tone: e.action === "gateway.readmit" ? "ok" : "bad" }),
            h("span", `replica ${e.replica ?? "?"} at ${e.site ?? "?"}`))),
      ),
    ),
    { note: "from the audit log's gateway.* entries", cls: "failover" },
  );
}

function deploymentSection(ctx, dep, traffic, failover) {
  const replicas = traffic?.replicas || dep.replicas.map((r) => ({ ...r, reachable: null, traffic: null }));
  const total = traffic?.total || { requests: 0, errors: 0 };
  const hourly = hourlyOf(dep);
  const canary = dep.spec?.canary;
  const versions = [...new Set(replicas.map((r) => r.version))].sort();
  const rows = replicas.map((r) => {
    const t = r.traffic;
    return {
      testid: tid("replica-row", r.id),
      cls: r.reachable === false ? "row-bad" : null,
      cells: [
        h("b", `#${r.id}`),
        h("span", { class: "nowrap" }, r.site, " ", jurisdictionTag(r.jurisdiction)),
        `v${r.version}`,
        mono(r.url),
        perHour(r.hourly_usd),
        h("span", { testid: tid("replica-requests", r.id) }, t ? int(t.requests) : "—"),
        h("span", { testid: tid("replica-errors", r.id), class: t?.errors ? "bad-text" : null }, t ? int(t.errors) : "—"),
        t ? ms(t.p50_ms) : "—",
        t ? ms(t.p99_ms) : "—",
        t ? int(t.in_flight) : "—",
        rotation(r, failover),
      ],
    };
  });
  const width = chartWidth(ctx, 2);
  const chart = replicas.length
    ? barChart(
        replicas.map((r) => ({
          label: `#${r.id} ${r.site}`,
          value: r.traffic?.requests || 0,
          segments: [
            { name: "answered", value: (r.traffic?.requests || 0) - (r.traffic?.errors || 0), color: COLORS.ok },
            { name: "errors (5xx)", value: r.traffic?.errors || 0, color: COLORS.bad },
          ],
          valueText: r.traffic ? `${int(r.traffic.requests)} req` : "unreachable",
        })),
        {
          width,
          format: (v) => int(v),
          legend: [{ name: "answered", color: COLORS.ok }, { name: "errors (5xx)", color: COLORS.bad }],
          testid: tid("traffic-chart", dep.name),
        },
      )
    : null;
  return h(
    "section",
    { class: "deployment", testid: tid("deployment", dep.name) },
    card(
      null,
      h(
        "div",
        h(
          "div",
          { class: "dep-head" },
          h("h2", dep.name),
          badge(dep.state, { testid: tid("deployment-state", dep.name) }),
          h("span", { class: "muted" }, "serves "),
          h("a", { href: `#/models/${encodeURIComponent(dep.model)}`, testid: tid("deployment-version", dep.name) }, `${dep.model} v${dep.version}`),
          canary ? badge(`canary ${canary.model} · ${Math.round(canary.weight * 100)} %`, { tone: "warn", testid: tid("deployment-canary", dep.name) }) : null,
          dep.previous_version ? h("span", { class: "muted" }, `· rollback to v${dep.previous_version}`) : null,
          h("span", { class: "muted" }, `· updated ${ago(dep.updated_at)}`),
        ),
        h("div", { class: "tiles", style: "margin-top:14px" },
          tile("Requests", int(total.requests), { testid: tid("deployment-requests", dep.name), sub: "answered by its replicas since they started" }),
          tile("Errors (5xx)", int(total.errors), {
            testid: tid("deployment-errors", dep.name),
            tone: total.errors ? "bad" : null,
            sub: total.requests ? `${((total.errors / total.requests) * 100).toFixed(2)} % of requests` : "no requests yet",
          }),
          tile("Replicas", int(replicas.length), { testid: tid("deployment-replicas", dep.name), sub: chips(versions.map((v) => `v${v}`)) }),
          tile("Serving cost", perHour(hourly), { sub: "sum of its replicas' prices" }),
        ),
      ),
    ),
    replicas.length
      ? card("Replicas", table(
          [{ label: "Replica" }, { label: "Site" }, { label: "Version" }, { label: "URL" }, { label: "Price", num: true },
            { label: "Requests", num: true }, { label: "Errors", num: true }, { label: "p50 ≤", num: true }, { label: "p99 ≤", num: true },
            { label: "In flight", num: true }, { label: "Gateway" }],
          rows,
          { testid: tid("replicas-table", dep.name) },
        ), { note: "each replica's own counters (latency: the histogram bucket that holds the quantile)" })
      : card("Replicas", empty("No replica is running", TEXT.down, "archipel deploy deployment.yaml", tid("replicas-empty", dep.name))),
    grid(2, chart ? card("Traffic per replica", chart, { note: `read ${traffic ? ago(traffic.at) : "—"}` }) : null, failoverCard(dep, failover)),
  );
}

export async function render(ctx) {
  const load = async () => {
    const deployments = await get("/api/v1/deployments");
    if (!ctx.alive) return false;
    if (!deployments.length) {
      fill(ctx.el, empty("Nothing is served", TEXT.nothing, "archipel deploy deployment.yaml", "deployments-empty"));
      return true;
    }
    const details = await Promise.all(
      deployments.map(async (d) => {
        const name = encodeURIComponent(d.name);
        const [traffic, failover] = await Promise.all([
          d.replicas.length ? getOrNull(`/api/v1/deployments/${name}/traffic`) : null,
          getOrNull(`/api/v1/deployments/${name}/failover`),
        ]);
        return [d, traffic, failover];
      }),
    );
    if (!ctx.alive) return false;
    const serving = deployments.filter((d) => d.replicas.length).length;
    fill(ctx.el,
      tiles(
        tile("Deployments", int(deployments.length), { testid: "deployments-count", sub: `${plural(serving, "serving now", "serving now")}` }),
        tile("Replicas", int(deployments.reduce((n, d) => n + d.replicas.length, 0)), { testid: "deployments-replicas" }),
        tile("Serving cost", perHour(deployments.reduce((n, d) => n + hourlyOf(d), 0)), { testid: "deployments-hourly" }),
      ),
      ...details.map(([d, t, f]) => deploymentSection(ctx, d, t, f)),
    );
    ctx.live(serving > 0, "Live · every 3 s");
    return true;
  };
  await load();
  ctx.every(POLL_MS, load);
}


