// Sites: a map of the archipelago (sites grouped by jurisdiction, each a card with its health and what runs,
// serves and is stored there) and the full table.

import { get, getOrNull } from "../api.js";
import { colorFor } from "../charts.js";
import { fill, h, tid } from "../dom.js";
import { ago, int, plural, usd, when } from "../format.js";
import { badge, card, chips, empty, healthDot, jurisdictionTag, table, tile, tiles } from "../ui.js";

const STORAGE = { file: "local disk", s3: "S3", gs: "GCS", gcs: "GCS", az: "Azure Blob", abfs: "Azure Blob", memory: "memory" };
const PROVIDERS = { aws: "AWS", gcp: "GCP", azure: "Azure", onprem: "on-prem", edge: "edge", local: "local" };

export function storageKind(url) {
  const scheme = String(url).split("://")[0];
  return STORAGE[scheme] || scheme;
}

function computeKind(compute) {
  const text = String(compute);
  return text.includes("://") ? text.split("://")[0] : text;
}

function health(site) {
  return site.enabled === false ? "disabled" : site.health;
}

function activity(testid, n, one, many) {
  return h("div", { class: "act" }, h("b", { testid }, int(n)), h("span", n === 1 ? one : many));
}

function siteCard(site, act) {
  const name = site.name;
  const a = act || {};
  return h(
    "article",
    { class: "site-card", testid: tid("site-card", name), style: `--accent:${colorFor(name)}` },
    h(
      "header",
      h("div", { class: "site-name" }, healthDot(health(site)), name),
      badge(health(site), { testid: tid("site-health", name) }),
    ),
    h(
      "div",
      { class: "site-where" },
      h("span", { class: `provider provider-${site.provider}`, testid: tid("site-provider", name) }, PROVIDERS[site.provider] || site.provider),
      h("span", site.region),
    ),
    h(
      "dl",
      { class: "site-kinds" },
      h("dt", "storage"),
      h("dd", { title: site.storage }, storageKind(site.storage)),
      h("dt", "compute"),
      h("dd", { title: site.compute }, computeKind(site.compute)),
      h("dt", "capacity"),
      h("dd", `${int(site.capacity?.cpus)} CPU · ${site.capacity?.memory ?? "—"}`),
    ),
    act
      ? h(
          "div",
          { class: "site-activity" },
          activity(tid("site-attempts", name), a.attempts_running, "attempt running", "attempts running"),
          activity(tid("site-replicas", name), a.replicas, "replica serving", "replicas serving"),
          activity(tid("site-datasets", name), a.dataset_copies, "dataset copy", "dataset copies"),
          activity(tid("site-models", name), a.model_copies, "model copy", "model copies"),
        )
      : null,
    act && (a.runs.length || a.deployments.length)
      ? h(
          "div",
          { class: "site-what" },
          a.runs.map((r) => h("a", { href: `#/runs/${encodeURIComponent(r)}`, class: "chip chip-run" }, "▶ ", r)),
          a.deployments.map((d) => h("a", { href: "#/deployments", class: "chip chip-serve" }, "⇄ ", d)),
        )
      : null,
    h(
      "footer",
      act ? h("span", "spent ", h("b", { testid: tid("site-spent", name) }, usd(a.spent_usd))) : h("span"),
      h("span", { class: "muted", title: when(site.checked_at) }, site.checked_at ? `checked ${ago(site.checked_at)}` : "never checked"),
    ),
  );
}

function draw(el, sites, activity) {
  const byName = Object.fromEntries((activity || []).map((a) => [a.site, a]));
  const groups = new Map();
  for (const site of sites) {
    if (!groups.has(site.jurisdiction)) groups.set(site.jurisdiction, []);
    groups.get(site.jurisdiction).push(site);
  }
  const healthy = sites.filter((x) => health(x) === "healthy").length;
  const running = (activity || []).reduce((n, a) => n + a.attempts_running, 0);
  const replicas = (activity || []).reduce((n, a) => n + a.replicas, 0);
  const map = h(
    "div",
    { class: "archipelago", testid: "site-map" },
    [...groups.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([j, members]) =>
        h(
          "section",
          { class: "jurisdiction", testid: tid("jurisdiction", j), style: `flex: ${members.length} 1 ${members.length * 300}px` },
          h(
            "header",
            jurisdictionTag(j),
            h("span", { class: "muted" }, `${plural(members.length, "site")} · ${members.filter((m) => health(m) === "healthy").length} healthy`),
          ),
          h("div", { class: "site-cards" }, members.map((m) => siteCard(m, byName[m.name]))),
        ),
      ),
  );
  const rows = sites.map((x) => ({
    testid: tid("site-row", x.name),
    cells: [
      h("b", x.name),
      PROVIDERS[x.provider] || x.provider,
      x.region,
      jurisdictionTag(x.jurisdiction),
      h("span", { title: x.storage }, storageKind(x.storage)),
      computeKind(x.compute),
      int(x.capacity?.cpus),
      x.capacity?.memory ?? "—",
      chips(Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`)),
      badge(health(x)),
      h("span", { title: when(x.checked_at) }, x.checked_at ? ago(x.checked_at) : "never"),
      x.applied ? "yes" : badge("pending apply", { tone: "warn" }),
    ],
  }));
  fill(el,
    tiles(
      tile("Sites", int(sites.length), { testid: "sites-count", sub: `${plural(groups.size, "jurisdiction")}: ${[...groups.keys()].sort().join(", ")}` }),
      tile("Healthy", `${int(healthy)} of ${int(sites.length)}`, { testid: "sites-healthy", tone: healthy === sites.length ? "ok" : "bad" }),
      tile("Attempts running", int(running), { testid: "sites-attempts-running", sub: running ? "see Runs" : "nothing is training now" }),
      tile("Replicas serving", int(replicas), { testid: "sites-replicas", sub: replicas ? "see Deployments" : "nothing is served now" }),
    ),
    card("The archipelago", map, { note: "grouped by jurisdiction: data and models move between them only where the policies allow" }),
    card("All sites", table(
      [{ label: "Site" }, { label: "Provider" }, { label: "Region" }, { label: "Jurisdiction" }, { label: "Storage" },
        { label: "Compute" }, { label: "CPUs", num: true }, { label: "Memory", num: true }, { label: "Labels" },
        { label: "Health" }, { label: "Checked" }, { label: "Applied" }],
      rows,
      { testid: "sites-table", cls: "nowrap" },
    )),
  );
}

export async function render(ctx) {
  const load = async () => {
    const [sites, activity] = await Promise.all([get("/api/v1/sites"), getOrNull("/api/v1/sites/activity")]);
    if (!ctx.alive) return false;
    if (!sites.length) {
      fill(ctx.el,
        empty("No sites yet", "Declare sites (provider, region, jurisdiction, storage, compute) in archipel.yaml, then apply it.", "archipel apply", "sites-empty"),
      );
      return true;
    }
    draw(ctx.el, sites, activity);
    return true;
  };
  await load();
  ctx.every(10000, load);
}
