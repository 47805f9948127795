// The one way the page talks to the API: the token from sessionStorage in the Authorization header (never in a
// URL, never in localStorage), JSON or text back, a 401 anywhere ends the session.

const KEY = "archipel.token";

export const session = {
  get token() {
    return sessionStorage.getItem(KEY);
  },
  set(token) {
    sessionStorage.setItem(KEY, token);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, message, kind) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

/** Raised after a 401: the session is over and the login screen is showing. */
export class SessionEnded extends Error {}

let onUnauthorized = () => {};

/** What to do when the API refuses the token (app.js shows the login screen with `message`). */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

async function problem(response) {
  try {
    const body = await response.json();
    return [body.error || body.detail?.[0]?.msg || JSON.stringify(body.detail || body), body.kind];
  } catch {
    return [`${response.status} ${response.statusText}`, undefined];
  }
}

/** GET `path` (with `params` as the query) and return its JSON (or text for a text/plain answer). */
export async function get(path, params = {}, { token = session.token, quiet401 = false } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
  }
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${token || ""}`, Accept: "application/json, text/plain" },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  if (response.status === 401) {
    const [message] = await problem(response);
    if (!quiet401) {
      onUnauthorized(message);
      throw new SessionEnded(message);
    }
    throw new ApiError(401, message, "Unauthorized");
  }
  if (!response.ok) {
    const [message, kind] = await problem(response);
    throw new ApiError(response.status, message, kind);
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** Like get(), but null for a 404 (a route this server does not have, or a thing that is gone). */
export async function getOrNull(path, params = {}) {
  try {
    return await get(path, params);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
    throw err;
  }
}
