// Datasets: classification, jurisdiction, home site, where each copy is (a datasets x sites matrix), versions.

import { get } from "../api.js";
import { fill, h, tid } from "../dom.js";
import { bytes, int, short, when } from "../format.js";
import { card, classBadge, empty, jurisdictionTag, mono, table, tile, tiles } from "../ui.js";

function live(dataset) {
  return dataset.versions.filter((v) => !v.erased_at);
}

function latest(dataset) {
  const versions = live(dataset);
  return versions[versions.length - 1] || null;
}

function copySites(dataset) {
  const v = latest(dataset);
  // the home site first, then the others by name
  return v ? Object.keys(v.replicas).sort((a, b) => (b === dataset.home_site) - (a === dataset.home_site) || a.localeCompare(b)) : [];
}

function copies(dataset) {
  return h(
    "span",
    { class: "chips", testid: tid("dataset-replicas", dataset.name) },
    copySites(dataset).map((site) =>
      h("span", { class: `chip${site === dataset.home_site ? " home" : ""}`, title: site === dataset.home_site ? "home site" : "replica" }, site),
    ),
  );
}

function matrix(datasets, sites) {
  const rows = datasets.map((d) => {
    const held = new Set(copySites(d));
    return {
      testid: tid("dataset-matrix", d.name),
      cells: [
        h("b", d.name),
        ...sites.map((site) => {
          const kind = site === d.home_site && held.has(site) ? "home" : held.has(site) ? "copy" : "";
          const what = kind === "home" ? "home copy" : kind === "copy" ? "replica" : "no copy";
          return h("span", { class: `presence ${kind}`, title: `${d.name} at ${site}: ${what}` });
        }),
      ],
    };
  });
  return h(
    "div",
    table([{ label: "Dataset" }, ...sites.map((site) => ({ label: site, cls: "cell" }))], rows, { cls: "matrix compact", testid: "dataset-matrix" }),
    h(
      "div",
      { class: "legend" },
      h("span", { class: "legend-item" }, h("i", { class: "presence home" }), "home site"),
      h("span", { class: "legend-item" }, h("i", { class: "presence copy" }), "replica"),
      h("span", { class: "legend-item" }, h("i", { class: "presence" }), "no copy (not replicated, or not allowed there)"),
    ),
  );
}

export async function render(ctx) {
  const [datasets, sites] = await Promise.all([get("/api/v1/datasets"), get("/api/v1/sites")]);
  if (!ctx.alive) return;
  if (!datasets.length) {
    fill(ctx.el,
      empty("No datasets yet",
        "Add a file as a dataset at its home site; archipel records its classification and jurisdiction, " +
        "and the policies decide where it may go.",
        "archipel data add patients-eu patients.csv --site onprem-frankfurt --classification phi", "datasets-empty"),
    );
    return;
  }
  const versions = datasets.flatMap((d) => d.versions.map((v) => ({ d, v })));
  const stored = versions.filter(({ v }) => !v.erased_at).reduce((n, { v }) => n + v.bytes * Object.keys(v.replicas).length, 0);
  const personal = datasets.filter((d) => ["pii", "phi"].includes(d.classification)).length;
  const rows = datasets.map((d) => {
    const v = latest(d);
    return {
      testid: tid("dataset-row", d.name),
      cells: [
        h("div", h("b", d.name), d.description ? h("span", { class: "sub" }, d.description) : null),
        classBadge(d.classification, tid("dataset-class", d.name)),
        jurisdictionTag(d.jurisdiction),
        d.home_site,
        copies(d),
        h("span", { testid: tid("dataset-versions", d.name) }, int(live(d).length)),
        h("span", { testid: tid("dataset-rows", d.name) }, v ? int(v.rows) : "—"),
        h("span", { testid: tid("dataset-size", d.name) }, v ? bytes(v.bytes) : "—"),
        v ? mono(short(v.sha256), v.sha256) : "erased",
      ],
    };
  });
  const versionRows = versions.map(({ d, v }) => ({
    testid: tid("dataset-version", d.name, v.version),
    cls: v.erased_at ? "row-bad" : null,
    cells: [
      h("b", `${d.name}@v${v.version}`),
      when(v.created_at),
      int(v.rows),
      int(v.columns.length),
      bytes(v.bytes),
      mono(short(v.sha256, 16), v.sha256),
      Object.keys(v.replicas).sort().join(", ") || "—",
      v.erased_at ? `erased ${when(v.erased_at)}` : Object.values(v.replicas).some((r) => r?.sealed_key_id) ? "sealed copies" : "",
    ],
  }));
  fill(ctx.el,
    tiles(
      tile("Datasets", int(datasets.length), { testid: "datasets-count", sub: `${int(versions.length)} versions` }),
      tile("Personal data", int(personal), { testid: "datasets-personal", sub: "PII or PHI: kept in their jurisdiction" }),
      tile("Stored across sites", bytes(stored), { testid: "datasets-stored", sub: "every live copy of every version" }),
    ),
    card("Datasets", table(
      [{ label: "Dataset" }, { label: "Class" }, { label: "Jurisdiction" }, { label: "Home" }, { label: "Copies (latest version)" },
        { label: "Versions", num: true }, { label: "Rows", num: true }, { label: "Size", num: true }, { label: "sha256" }],
      rows,
      { testid: "datasets-table" },
    )),
    card("Where each copy is", matrix(datasets, sites.map((x) => x.name).sort()), {
      note: "the latest version of each dataset, per site",
    }),
    card("Versions", table(
      [{ label: "Version" }, { label: "Created" }, { label: "Rows", num: true }, { label: "Columns", num: true },
        { label: "Size", num: true }, { label: "sha256" }, { label: "At" }, { label: "" }],
      versionRows,
      { testid: "dataset-versions" },
    )),
  );
}
