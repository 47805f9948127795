// The dashboard's shell: the login screen, the sidebar, hash routes (#/sites, #/runs/ID, ...) and each page's
// polling, stopped when the user leaves the page. Pages live in pages/*.js and export render(ctx).

import { ApiError, SessionEnded, get, session, whenUnauthorized } from "./api.js";
import { clear, fill, h, s } from "./dom.js";
import { seedColors } from "./charts.js";
import { errorBox, loading } from "./ui.js";

const ICONS = {
  sites: "M12 2a7 7 0 0 0-7 7c0 5 7 13 7 13s7-8 7-13a7 7 0 0 0-7-7zm0 9.5A2.5 2.5 0 1 1 12 6.5a2.5 2.5 0 0 1 0 5z",
  datasets:
    "M12 3C7 3 4 4.6 4 6.5v11C4 19.4 7 21 12 21s8-1.6 8-3.5v-11C20 4.6 17 3 12 3zm0 2c4 0 6 1.1 6 1.5S16 8 12 8 6 6.9 " +
    "6 6.5 8 5 12 5zm6 12.5c0 .4-2 1.5-6 1.5s-6-1.1-6-1.5v-2.3c1.5.8 3.6 1.3 6 1.3s4.5-.5 6-1.3zm0-5c0 .4-2 1.5-6 " +
    "1.5s-6-1.1-6-1.5V9.2c1.5.8 3.6 1.3 6 1.3s4.5-.5 6-1.3z",
  runs: "M8 5v14l11-7z",
  models: "M12 2 3 7v10l9 5 9-5V7zm0 2.3 6.5 3.6L12 11.6 5.5 7.9zM5 9.6l6 3.4v6.8l-6-3.3zm8 10.2V13l6-3.4v6.9z",
  deployments: "M4 5h16v4H4zm0 5h16v4H4zm0 5h16v4H4zm2-8.5h2v1H6zm0 5h2v1H6zm0 5h2v1H6z",
  drift: "M3 17l5-6 4 4 7-9 2 1.5-8.8 11.3-4-4-3.7 4.4z",
  cost:
    "M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm1 15.9V19h-2v-1.1c-1.7-.3-3-1.4-3.1-3h2c.1.9.9 1.4 2.1 1.4 1.3 0 2-.6 " +
    "2-1.4 0-.7-.5-1.1-2.1-1.5-2.2-.5-3.6-1.2-3.6-3 0-1.4 1.1-2.5 2.7-2.8V6h2v1.2c1.6.3 2.6 1.4 2.7 2.8h-2c-.1-.8-.7-1.3-" +
    "1.8-1.3s-1.7.5-1.7 1.2.6 1 2.2 1.4c2 .5 3.5 1.2 3.5 3.1 0 1.5-1.1 2.6-2.9 2.9z",
  audit: "M12 2 4 5v6c0 5 3.4 9.7 8 11 4.6-1.3 8-6 8-11V5zm-1.2 14.2-3.5-3.5 1.4-1.4 2.1 2.1 4.9-4.9 1.4 1.4z",
};

const PAGES = [
  { id: "sites", title: "Sites", blurb: "Every site by jurisdiction: its health, what runs and serves there, what it holds." },
  { id: "datasets", title: "Datasets", blurb: "Data has a home and a jurisdiction: classification, versions and where each copy is." },
  { id: "runs", title: "Runs", blurb: "Training runs: where each step ran, the attempts lost and recovered, metrics and logs." },
  { id: "models", title: "Models", blurb: "The registry: versions with metrics, aliases and their gates, lineage, copies per site." },
  { id: "deployments", title: "Deployments", blurb: "What is served where: replicas per site, their traffic and the gateways' failovers." },
  { id: "drift", title: "Drift", blurb: "Drift checked where the data lives: per site and feature, score against threshold." },
  { id: "cost", title: "Cost", blurb: "The ledger: spend by site, provider and tag, over time, and budgets." },
  { id: "audit", title: "Audit", blurb: "Every decision and event, hash-chained: the chain's verification and the entries." },
];

const $ = (id) => document.getElementById(id);
let current = { stop() {} };

function icon(id) {
  return s("svg", { viewBox: "0 0 24 24", class: "icon", "aria-hidden": "true" }, s("path", { d: ICONS[id] }));
}

function buildNav() {
  const nav = clear($("nav"));
  for (const page of PAGES) {
    nav.appendChild(h("a", { href: `#/${page.id}`, class: "nav-link", dataset: { page: page.id }, testid: `nav-${page.id}` }, icon(page.id), page.title));
  }
}

// -- login -------------------------------------------------------------------------------------------------------
function showLogin(message, tone = "bad") {
  current.stop();
  $("shell").hidden = true;
  clear($("page"));
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  error.className = `login-error tone-${tone}`;
  const input = $("token-input");
  input.value = "";
  input.focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("token-input");
  const token = input.value.trim();
  const error = $("login-error");
  const show = (text) => {
    error.hidden = false;
    error.className = "login-error tone-bad";
    error.textContent = text;
  };
  if (!token) return show("Paste a token first.");
  const button = $("login-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const sites = await get("/api/v1/sites", {}, { token, quiet401: true });
    seedColors(sites.map((x) => x.name).sort());
    session.set(token);
    input.value = "";
    await enter();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      show(`This token was not accepted: ${err.message}`);
    } else if (err instanceof ApiError && err.status === 403) {
      show(`This token cannot read the control plane: ${err.message}`);
    } else {
      show(`Could not reach the server: ${err.message}`);
    }
    input.select();
  } finally {
    button.disabled = false;
  }
}

async function enter() {
  $("login").hidden = true;
  $("shell").hidden = false;
  try {
    const health = await fetch("/api/health", { cache: "no-store" }).then((r) => r.json());
    $("whoami").textContent = `archipel ${health.version}`;
  } catch {
    $("whoami").textContent = "";
  }
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    location.replace("#/sites"); // fires hashchange, which routes
  } else {
    await route();
  }
}

// -- routes ------------------------------------------------------------------------------------------------------
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const [id, ...args] = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { id, args, query: new URLSearchParams(query) };
}

function stamp() {
  const now = new Date();
  $("updated").textContent = `Updated ${now.toLocaleTimeString("en-GB", { hour12: false })}`;
}

function makeContext(el, args, query) {
  const timers = new Set();
  let alive = true;
  const ctx = {
    el,
    args,
    query,
    get alive() {
      return alive;
    },
    /** Call `fn` every `ms` (a number, or a function giving the next delay) after the previous call finished,
     * until the page is left or `fn` returns false. */
    every(ms, fn) {
      const delay = () => (typeof ms === "function" ? ms() : ms);
      const tick = async () => {
        if (!alive) return;
        let again = true;
        try {
          again = (await fn()) !== false;
          stamp();
        } catch (err) {
          if (err instanceof SessionEnded) return;
          console.warn("refresh failed", err);
        }
        if (alive && again) timers.add(setTimeout(tick, delay()));
        else live(false);
      };
      timers.add(setTimeout(tick, delay()));
    },
    live,
    stamp,
    stop() {
      alive = false;
      for (const t of timers) clearTimeout(t);
      live(false);
    },
  };
  return ctx;
}

/** The "Live" mark in the top bar: on while a page polls. */
function live(on, text) {
  const mark = $("live");
  mark.hidden = !on;
  mark.lastChild.textContent = text || "Live";
}

async function route() {
  if (!session.token) return showLogin();
  const { id, args, query } = parseHash();
  const page = PAGES.find((p) => p.id === id);
  if (!page) {
    location.replace("#/sites");
    return;
  }
  current.stop();
  for (const a of document.querySelectorAll("#nav .nav-link")) {
    a.classList.toggle("active", a.dataset.page === page.id);
    if (a.dataset.page === page.id) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  $("page-title").textContent = page.title;
  $("page-blurb").textContent = page.blurb;
  document.title = `${page.title} · archipel`;
  const el = clear($("page"));
  el.dataset.page = page.id;
  delete el.dataset.ready; // set again once this page has drawn (tests wait for it)
  el.appendChild(loading());
  const ctx = makeContext(el, args, query);
  current = ctx;
  try {
    const module = await import(`./pages/${page.id}.js`);
    await module.render(ctx);
    if (ctx.alive) {
      el.querySelector(":scope > .loading")?.remove();
      el.dataset.ready = "true";
      stamp();
    }
  } catch (err) {
    if (err instanceof SessionEnded || !ctx.alive) return;
    fill(el, errorBox(err instanceof ApiError ? `${err.message} (HTTP ${err.status})` : String(err.message || err)));
    el.dataset.ready = "true";
  }
}

whenUnauthorized((message) => {
  session.clear();
  showLogin(`Your session ended: the server no longer accepts this token (${message}). Sign in again.`);
});

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", async () => {
  buildNav();
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", () => {
    session.clear();
    showLogin("Signed out. The token was removed from this tab.", "info");
  });
  $("refresh").addEventListener("click", () => route());
  // sites keep their colours on every chart, in name order (fetched once; the pages fill in the rest)
  if (!session.token) return showLogin();
  try {
    const sites = await get("/api/v1/sites");
    seedColors(sites.map((x) => x.name).sort());
    await enter();
  } catch (err) {
    if (!(err instanceof SessionEnded)) showLogin(`Could not reach the server: ${err.message}`);
  }
});

export { PAGES };
