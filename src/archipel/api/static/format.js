// Numbers as people read them. tests/api/test_dashboard.py mirrors usd(), int(), bytes(), metric() and sig3() to
// compare the page with the CLI's --json, so a change here is a change there.

const DASH = "—";

function trimZeros(text, keep) {
  // "0.050000" -> "0.05" (keeping at least `keep` decimals)
  const [whole, frac = ""] = text.split(".");
  let f = frac.replace(/0+$/, "");
  while (f.length < keep) f += "0";
  return f ? `${whole}.${f}` : whole;
}

/** Dollars: cents from $1 up ("$1,234.50"); below $1 three significant digits, at most six decimals
 * ("$0.136", "$0.000574"); "<$0.000001" for a positive amount smaller than that. */
export function usd(x) {
  if (x === null || x === undefined || Number.isNaN(Number(x))) return DASH;
  const v = Number(x);
  const a = Math.abs(v);
  const sign = v < 0 ? "-" : "";
  if (a === 0) return "$0.00";
  if (a >= 1) {
    return `${sign}$${a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
  }
  const decimals = Math.min(6, Math.max(2, 2 - Math.floor(Math.log10(a))));
  const text = a.toFixed(decimals);
  if (Number(text) === 0) return `${sign}<$0.000001`;
  return `${sign}$${trimZeros(text, 2)}`;
}

/** A price per hour: "$0.0354/h". */
export function perHour(x) {
  return x === null || x === undefined ? DASH : `${usd(x)}/h`;
}

/** A whole number with thousands separators: "12,345". */
export function int(x) {
  if (x === null || x === undefined || Number.isNaN(Number(x))) return DASH;
  return Math.round(Number(x)).toLocaleString("en-US");
}

/** Bytes in binary units with three significant digits: "28.7 KiB", "1.20 GiB", "512 B". */
export function bytes(n) {
  if (n === null || n === undefined) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  if (i === 0) return `${int(v)} B`;
  const digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${units[i]}`;
}

/** A model metric: integers as they are, others with four decimals ("0.7215"). */
export function metric(x) {
  if (x === null || x === undefined || Number.isNaN(Number(x))) return DASH;
  const v = Number(x);
  if (Number.isInteger(v)) return int(v);
  if (Math.abs(v) >= 1000) return v.toLocaleString("en-US", { maximumFractionDigits: 1 });
  return v.toFixed(4);
}

/** Three significant digits without exponent or trailing zeros: "0.976", "0.0101", "0.1". */
export function sig3(x) {
  if (x === null || x === undefined || Number.isNaN(Number(x))) return DASH;
  const v = Number(x);
  if (v === 0) return "0";
  const text = v.toPrecision(3);
  if (/e/.test(text)) return String(Number(text));
  return text.includes(".") ? trimZeros(text, 0) : text;
}

/** A share as a percentage: "16.7 %" (one decimal below 10 %, none above 99.5 %). */
export function pct(share, digits = 1) {
  if (share === null || share === undefined) return DASH;
  return `${(Number(share) * 100).toFixed(digits)} %`;
}

/** Milliseconds: "0.5 ms", "12 ms", "1.2 s". */
export function ms(x) {
  if (x === null || x === undefined) return DASH;
  const v = Number(x);
  if (v >= 1000) return `${(v / 1000).toFixed(1)} s`;
  if (v >= 10) return `${Math.round(v)} ms`;
  return `${sig3(v)} ms`;
}

/** A duration in seconds: "850 ms", "42 s", "3 min 5 s", "2 h 10 min", "3 d 4 h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return DASH;
  const s = Math.max(0, Number(seconds));
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

export function parseTime(iso) {
  return iso ? new Date(iso) : null;
}

/** Seconds between two ISO times (the second one defaults to now). */
export function between(start, end) {
  if (!start) return null;
  const a = new Date(start).getTime();
  const b = end ? new Date(end).getTime() : Date.now();
  return (b - a) / 1000;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const pad = (n) => String(n).padStart(2, "0");

/** A moment in UTC: "Dec 5, 18:58:29 UTC" (the API's times are UTC, and sites span time zones). */
export function when(iso, { seconds = true, zone = true } = {}) {
  if (!iso) return DASH;
  const d = new Date(iso);
  const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}${seconds ? `:${pad(d.getUTCSeconds())}` : ""}`;
  return `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}, ${time}${zone ? " UTC" : ""}`;
}

/** How long ago: "just now", "5 s ago", "3 min ago", "2 h ago", "4 d ago". */
export function ago(iso) {
  if (!iso) return DASH;
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (s < 5) return "just now";
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400 * 2) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** The first 12 hex digits of a hash. */
export function short(hash, n = 12) {
  return hash ? String(hash).slice(0, n) : DASH;
}

export function plural(n, word, many) {
  return `${int(n)} ${n === 1 ? word : many || `${word}s`}`;
}

export { DASH };
