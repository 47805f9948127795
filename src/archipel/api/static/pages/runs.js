// Runs: the list with live states (polled every 2 s while any run is active), and a run's page: its steps,
// attempts on a timeline (lost ones and the recoveries that followed), checkpoints, metrics by step per attempt,
// and its logs, refreshed while it runs.

import { get } from "../api.js";
import { COLORS, colorFor, lineChart, timeline } from "../charts.js";
import { fill, h, tid } from "../dom.js";
import { between, bytes, duration, int, metric, perHour, plural, short, sig3, usd, when } from "../format.js";
import { badge, card, chartWidth, chips, empty, facts, mono, stateBadge, table, tile, tiles } from "../ui.js";

const ACTIVE = new Set(["PENDING", "PLACED", "RUNNING", "RECOVERING"]);
const ACTIVE_MS = 2000;
const IDLE_MS = 5000;
const ATTEMPT_COLORS = { SUCCEEDED: COLORS.ok, RUNNING: "#3867d6", LOST: COLORS.bad, FAILED: COLORS.bad, CANCELLED: COLORS.muted };

function sitesOf(run) {
  return [...new Set(run.steps.map((st) => st.site).filter(Boolean))];
}

function stepDots(run) {
  return h(
    "span",
    { class: "chips" },
    run.steps.map((st) => {
      const tone = st.state === "SUCCEEDED" ? "ok" : ACTIVE.has(st.state) ? "info" : st.state === "FAILED" ? "bad" : "neutral";
      return badge(st.step, { tone, title: `${st.step}: ${st.state}` });
    }),
  );
}

// -- the list ----------------------------------------------------------------------------------------------------
function drawList(el, runs) {
  const active = runs.filter((r) => ACTIVE.has(r.state));
  const failed = runs.filter((r) => r.state === "FAILED").length;
  const recoveries = runs.reduce((n, r) => n + r.steps.reduce((m, st) => m + st.recoveries, 0), 0);
  const spent = runs.reduce((n, r) => n + r.cost_usd, 0);
  const rows = runs.map((r) => {
    const lost = r.attempts.filter((a) => a.state === "LOST").length;
    const rec = r.steps.reduce((m, st) => m + st.recoveries, 0);
    return {
      testid: tid("run-row", r.id),
      onClick: (ev) => {
        if (!(ev.target instanceof HTMLAnchorElement)) location.hash = `#/runs/${encodeURIComponent(r.id)}`;
      },
      cells: [
        h("div", h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, mono(r.id)), h("span", { class: "sub" }, r.name)),
        stateBadge(r.state, tid("run-state", r.id)),
        stepDots(r),
        chips(sitesOf(r)),
        h("span", { testid: tid("run-attempts", r.id) }, int(r.attempts.length), lost ? h("span", { class: "sub" }, `${lost} lost`) : null),
        h("span", { testid: tid("run-recoveries", r.id) }, int(rec)),
        when(r.created_at),
        duration(between(r.created_at, r.ended_at)),
        h("span", { testid: tid("run-cost", r.id) }, usd(r.cost_usd), h("span", { class: "sub" }, `plan ${usd(r.planned_usd)}`)),
      ],
    };
  });
  fill(el,
    tiles(
      tile("Runs", int(runs.length), { testid: "runs-count", sub: runs.length >= 100 ? "the newest 100" : "all runs" }),
      tile("Active", int(active.length), { testid: "runs-active", tone: active.length ? "ok" : null, sub: active.length ? "refreshing every 2 s" : "none running" }),
      tile("Recoveries", int(recoveries), { testid: "runs-recoveries", sub: "attempts lost to a dead worker or site, resumed" }),
      tile("Failed", int(failed), { testid: "runs-failed", tone: failed ? "bad" : null }),
      tile("Compute spent", usd(spent), { testid: "runs-spent", sub: "attempts' cost of these runs" }),
    ),
    card("Runs", table(
      [{ label: "Run" }, { label: "State" }, { label: "Steps" }, { label: "Sites" }, { label: "Attempts", num: true },
        { label: "Recoveries", num: true }, { label: "Started" }, { label: "Took", num: true }, { label: "Cost", num: true }],
      rows,
      { testid: "runs-table" },
    ), { note: "newest first; click a run for its steps, attempts, metrics and logs" }),
  );
  return active.length > 0;
}

async function renderList(ctx) {
  let wasActive = false;
  const load = async () => {
    const runs = await get("/api/v1/runs", { limit: 100 });
    if (!ctx.alive) return false;
    if (!runs.length) {
      fill(ctx.el, empty("No runs yet",
        "A run places each step of a job or pipeline at a site the policies allow, follows it, and recovers it " +
        "when a worker dies.", "archipel run job.yaml", "runs-empty"));
      return true;
    }
    wasActive = drawList(ctx.el, runs);
    ctx.live(wasActive, "Live · every 2 s");
    return true;
  };
  await load();
  // every 2 s while a run is active; otherwise every 5 s, so a run started elsewhere shows up soon
  ctx.every(() => (wasActive ? ACTIVE_MS : IDLE_MS), load);
}

// -- one run -----------------------------------------------------------------------------------------------------
function stepBox(st, attempts) {
  const mine = attempts.filter((a) => a.step === st.step);
  const cp = st.checkpoint;
  return h(
    "div",
    { class: "step-box", testid: tid("run-step", st.step) },
    h("div", { class: "run-head" }, h("span", { class: "step-name" }, st.step), stateBadge(st.state, tid("run-step-state", st.step))),
    facts([
      ["site", st.site || "—"],
      ["offer", st.offer ? `${st.offer}${st.spot ? " (spot)" : ""} · ${perHour(st.hourly_usd)}` : "—"],
      ["attempts", h("span", { testid: tid("run-step-attempts", st.step) }, int(mine.length))],
      ["recoveries", h("span", { testid: tid("run-step-recoveries", st.step) }, int(st.recoveries))],
      ["failures", int(st.failures)],
      cp
        ? ["checkpoint", h("span", { class: "checkpoint", testid: tid("run-checkpoint", st.step) },
            `#${cp.seq} at step ${int(cp.step)} · ${bytes(cp.size)} · on ${cp.sites.join(", ")}`)]
        : null,
      st.cached_from ? ["cached from", mono(st.cached_from)] : null,
      Object.keys(st.outputs || {}).length ? ["outputs", chips(Object.entries(st.outputs).map(([k, o]) => `${k} · ${bytes(o.size)} · ${short(o.sha256, 8)}`))] : null,
    ]),
    st.message ? h("div", { class: "muted small" }, st.message) : null,
  );
}

const CURVE_POINTS = 3; // a metric logged at fewer steps than this per attempt is a result, not a curve

function metricsCards(run, width) {
  const series = new Map(); // key -> Map(step#attempt -> points)
  const finals = [];
  const params = new Map();
  const steps = new Map(); // key -> most steps any one attempt logged it at
  for (const m of run.metrics) {
    if (m.kind !== "metric" || m.at_step === null) continue;
    const k = `${m.key}|${m.step}#${m.attempt}`;
    steps.set(k, (steps.get(k) || 0) + 1);
  }
  const curves = new Set([...steps.entries()].filter(([, n]) => n >= CURVE_POINTS).map(([k]) => k.split("|")[0]));
  for (const m of run.metrics) {
    if (m.kind === "param") {
      params.set(`${m.step}#${m.attempt}`, { ...(params.get(`${m.step}#${m.attempt}`) || {}), [m.key]: m.text });
    } else if (m.kind === "metric" && m.value !== null && m.at_step !== null && curves.has(m.key)) {
      if (!series.has(m.key)) series.set(m.key, new Map());
      const name = `${m.step} · attempt ${m.attempt}`;
      const byAttempt = series.get(m.key);
      if (!byAttempt.has(name)) byAttempt.set(name, { attempt: m.attempt, points: [] });
      byAttempt.get(name).points.push([m.at_step, m.value]);
    } else if (m.kind === "metric" && m.value !== null) {
      finals.push(m);
    }
  }
  const out = [];
  for (const [key, byAttempt] of series) {
    const lines = [...byAttempt.entries()].map(([name, { attempt, points }]) => ({
      name,
      color: attempt === 1 ? "#9aa5b1" : colorFor(`attempt-${attempt}`),
      points: points.sort((a, b) => a[0] - b[0]),
    }));
    const resumed = [...byAttempt.entries()]
      .filter(([, v]) => v.attempt > 1)
      .map(([name, v]) => ({ x: v.points[0][0], label: `${name.split(" · ")[1]} resumed here` }));
    const chart = lineChart(lines, {
      width,
      xFormat: (v) => int(v),
      yFormat: (v) => sig3(v),
      xLabel: "step",
      vmarkers: resumed,
      testid: tid("run-metric-chart", key),
    });
    out.push(card(`${key} by training step`, chart, {
      note: byAttempt.size > 1 ? "each attempt is a line: a resumed attempt starts at its checkpoint's step" : null,
    }));
  }
  if (finals.length || params.size) {
    out.push(card("Results and parameters", h(
      "div",
      finals.length
        ? table(
            [{ label: "Metric" }, { label: "Step" }, { label: "Attempt", num: true }, { label: "At step", num: true },
              { label: "Value", num: true }],
            finals.map((m) => ({
              testid: tid("run-final", m.key),
              cells: [m.key, m.step, int(m.attempt), m.at_step === null ? "—" : int(m.at_step), h("b", metric(m.value))],
            })),
          )
        : null,
      params.size ? table([{ label: "Attempt" }, { label: "Parameters" }],
        [...params.entries()].map(([k, p]) => [k, chips(Object.entries(p).map(([a, b]) => `${a}=${b}`))])) : null,
    )));
  }
  return out;
}

function logLines(text) {
  const lines = Array.isArray(text?.lines) ? text.lines : String(text || "").split("\n").filter((l) => l.length);
  return lines.map((line) => {
    const m = /^(\S+#\d+) (.*)$/.exec(line);
    return m ? [h("span", { class: "prefix" }, m[1]), ` ${m[2]}\n`] : `${line}\n`;
  });
}

function drawRun(ctx, run, logs) {
  const el = ctx.el;
  const width = chartWidth(ctx);
  const active = ACTIVE.has(run.state);
  const t0 = Math.min(...run.attempts.map((a) => new Date(a.started_at).getTime()));
  const rows = run.attempts.map((a) => ({
    label: `${a.step} #${a.number}`,
    start: new Date(a.started_at).getTime(),
    end: a.ended_at ? new Date(a.ended_at).getTime() : null,
    color: ATTEMPT_COLORS[a.state] || COLORS.muted,
    text: `${a.site} · ${a.state.toLowerCase()}`,
    title: `${a.step} attempt ${a.number} at ${a.site}: ${a.state} (${a.exit_reason || "running"}), ${duration(between(a.started_at, a.ended_at))}`,
  }));
  const attemptRows = run.attempts.map((a) => ({
    testid: tid("attempt", a.step, a.number),
    cls: a.state === "LOST" || a.state === "FAILED" ? "row-bad" : null,
    cells: [
      h("b", `${a.step} #${a.number}`),
      a.site,
      `${a.offer}${a.spot ? " (spot)" : ""}`,
      stateBadge(a.state, tid("attempt-state", a.step, a.number)),
      a.exit_reason || "—",
      `+${duration((new Date(a.started_at).getTime() - t0) / 1000)}`,
      duration(between(a.started_at, a.ended_at)),
      usd(a.cost_usd),
    ],
  }));
  const recoveries = run.steps.reduce((n, st) => n + st.recoveries, 0);
  const lines = logLines(logs);
  fill(el,
    h("a", { href: "#/runs", class: "back" }, "← All runs"),
    card(null, h(
      "div",
      h("div", { class: "run-head" }, h("h2", { testid: "run-id" }, run.id), stateBadge(run.state, tid("run-state", run.id)),
        Object.entries(run.tags || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`))),
      h("div", { class: "tiles", style: "margin-top:14px" },
        tile("Took", duration(between(run.created_at, run.ended_at)), { sub: run.ended_at ? `ended ${when(run.ended_at)}` : `started ${when(run.created_at)}` }),
        tile("Cost", usd(run.cost_usd), {
          testid: "run-cost",
          sub: active ? `so far (an attempt's cost is booked when it ends); planned ${usd(run.planned_usd)}` : `the plan said ${usd(run.planned_usd)} at full estimates`,
        }),
        tile("Attempts", int(run.attempts.length), { testid: "run-attempts", sub: `${plural(recoveries, "recovery", "recoveries")}` }),
        tile("Sites", int(sitesOf(run).length), { sub: sitesOf(run).join(", ") || "—" }),
      ),
    )),
    card("Steps", h("div", { class: "steps-flow" }, run.steps.flatMap((st, i) => [i ? h("span", { class: "arrow" }, "→") : null, stepBox(st, run.attempts)]))),
    run.attempts.length
      ? card("Attempts", h("div",
          timeline(rows, {
            width,
            testid: "run-timeline",
            legend: [
              { name: "succeeded", color: COLORS.ok },
              { name: "lost or failed", color: COLORS.bad },
              { name: "running", color: "#3867d6" },
            ],
          }),
          table([{ label: "Attempt" }, { label: "Site" }, { label: "Offer" }, { label: "State" }, { label: "Exit" },
            { label: "Started", num: true }, { label: "Took", num: true }, { label: "Cost", num: true }], attemptRows, { testid: "attempts-table" }),
        ), { note: "a lost attempt (worker or site died) is not the job's fault: the step resumes from its last checkpoint" })
      : null,
    ...metricsCards(run, width),
    card("Logs", lines.length
      ? h("pre", { class: "logs", testid: "run-logs" }, lines)
      : h("p", { class: "muted", testid: "run-logs" }, active ? "No output yet." : "This run wrote no output."), {
      note: active ? "refreshing every 2 s" : `${plural(lines.length, "line")}`,
    }),
  );
  return active;
}

async function renderRun(ctx, id) {
  const load = async () => {
    const [run, logs] = await Promise.all([
      get(`/api/v1/runs/${encodeURIComponent(id)}`),
      get(`/api/v1/runs/${encodeURIComponent(id)}/logs`).catch(() => ""),
    ]);
    if (!ctx.alive) return false;
    const pre = ctx.el.querySelector("pre.logs");
    const stick = pre && pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const active = drawRun(ctx, run, logs);
    const fresh = ctx.el.querySelector("pre.logs");
    if (fresh && (stick || !pre)) fresh.scrollTop = fresh.scrollHeight;
    ctx.live(active, "Live · every 2 s");
    return active;
  };
  if (await load()) ctx.every(ACTIVE_MS, load);
}

export async function render(ctx) {
  if (ctx.args[0]) return renderRun(ctx, ctx.args[0]);
  return renderList(ctx);
}
