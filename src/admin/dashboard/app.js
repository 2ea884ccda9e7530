// fulcrum's dashboard: polls /dashboard/data every second, keeps five minutes of
// samples in memory, and shows rates and latencies computed from the counters and
// histograms. Everything it shows is set as text (never parsed as HTML). The admin
// token, when one is needed, lives in a variable of this page only.
"use strict";

const WINDOW = 10;          // seconds over which rates and latencies are computed
const KEEP = 300;           // seconds of samples kept (sparklines)
const samples = [];         // { t: seconds, data }
let token = null;
let pending = null;         // a change waiting for the token

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function text(node, value) {
  const s = String(value);
  if (node.textContent !== s) node.textContent = s;
}

// ---- numbers -------------------------------------------------------------------

function series(data, family) {
  return (data.metrics && data.metrics[family]) || [];
}

function key(labels) {
  return Object.keys(labels).sort().map((k) => k + "=" + labels[k]).join(",");
}

// The sample about WINDOW seconds before the newest (or the oldest there is).
function baseline() {
  if (samples.length < 2) return null;
  const now = samples[samples.length - 1].t;
  let base = samples[0];
  for (const s of samples) {
    if (now - s.t >= WINDOW) base = s; else break;
  }
  return base === samples[samples.length - 1] ? null : base;
}

// Per-second increase of the sum of the counters that `match` picks, between two samples.
function rate(family, match, from, to) {
  if (!from || !to) return null;
  const before = new Map(series(from.data, family).map((s) => [key(s.labels), s.value]));
  let delta = 0;
  for (const s of series(to.data, family)) {
    if (!match(s.labels)) continue;
    const b = before.get(key(s.labels)) || 0;
    delta += s.value >= b ? s.value - b : s.value; // a counter that went back restarted
  }
  return delta / Math.max(to.t - from.t, 0.001);
}

function gauge(data, family, match) {
  return series(data, family).filter((s) => match(s.labels)).reduce((a, s) => a + s.value, 0);
}

// A quantile of the histogram observations that `match` picks, between two samples,
// interpolated within its bucket as Prometheus' histogram_quantile does.
function quantile(q, family, match, from, to) {
  if (!from || !to) return null;
  const before = new Map(series(from.data, family).map((s) => [key(s.labels), s]));
  const sums = new Map();
  for (const s of series(to.data, family)) {
    if (!match(s.labels)) continue;
    const b = before.get(key(s.labels));
    for (const [le, count] of s.buckets) {
      const old = b ? (b.buckets.find((x) => x[0] === le) || [le, 0])[1] : 0;
      sums.set(le, (sums.get(le) || 0) + (count >= old ? count - old : count));
    }
  }
  const buckets = [...sums.entries()].sort((a, b) => a[0] - b[0]);
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (total === 0) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (!isFinite(le)) return prevLe;
      return prevLe + (le - prevLe) * (count === prevCount ? 0 : (rank - prevCount) / (count - prevCount));
    }
    prevLe = le; prevCount = count;
  }
  return prevLe;
}

function fmtRate(r) {
  if (r === null || r === undefined) return "–";
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function fmtTime(s) {
  if (s === null || s === undefined || isNaN(s)) return "–";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

function fmtBytes(b) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b.toFixed(0)) + " " + units[i];
}

function fmtDuration(secs) {
  secs = Math.floor(secs);
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600), m = Math.floor(secs % 3600 / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${secs % 60}s` : `${secs}s`;
}

function classes(family, match, from, to) {
  const out = {};
  for (const c of ["2", "3", "4", "5"]) {
    out[c] = rate(family, (l) => match(l) && String(l.code || "").startsWith(c), from, to);
  }
  return out;
}

// ---- keyed rows and cards, updated in place --------------------------------------

function rows(tbody, items, idOf, make, update) {
  const seen = new Set();
  for (const item of items) {
    const id = idOf(item);
    seen.add(id);
    let row = [...tbody.children].find((r) => r.dataset.key === id);
    if (!row) {
      row = make(item);
      row.dataset.key = id;
      tbody.append(row);
    }
    update(row, item);
  }
  for (const row of [...tbody.children]) if (!seen.has(row.dataset.key)) row.remove();
}

function cells(n) {
  return Array.from({ length: n }, (_, i) => el("td", { class: i === 0 ? "name" : "n" }));
}

function sparkline(svg, points) {
  const w = 160, h = 32;
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.append(line);
  }
  if (points.length < 2) { line.setAttribute("points", ""); return; }
  const max = Math.max(...points.map((p) => p[1]), 1e-9);
  const t0 = points[points.length - 1][0] - KEEP;
  const xy = points.map(([t, v]) => `${(((t - t0) / KEEP) * w).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
  line.setAttribute("points", xy.join(" "));
}

// ---- rendering -------------------------------------------------------------------

function renderListeners(status, from, to) {
  const tbody = $("listeners").tBodies[0];
  rows(tbody, status.listeners || [], (l) => l.name, () => el("tr", {}, ...cells(10)), (row, l) => {
    const m = (x) => x.listener === l.name;
    const c = classes("fulcrum_http_requests_total", m, from, to);
    const td = row.children;
    text(td[0], l.name);
    td[1].className = "";
    text(td[1], l.protocol);
    text(td[2], fmtRate(rate("fulcrum_http_requests_total", m, from, to)));
    text(td[3], fmtRate(c["2"])); text(td[4], fmtRate(c["3"]));
    text(td[5], fmtRate(c["4"])); text(td[6], fmtRate(c["5"]));
    text(td[7], fmtTime(quantile(0.5, "fulcrum_http_request_duration_seconds", m, from, to)));
    text(td[8], fmtTime(quantile(0.99, "fulcrum_http_request_duration_seconds", m, from, to)));
    text(td[9], l.active_connections);
  });
}

function backendState(b) {
  if (b.draining) return "draining";
  if (!b.healthy) return "down";
  if (b.ejected) return "ejected";
  return "up";
}

function makeUpstream(u) {
  const card = el("article", { class: "card", "data-upstream": u.name });
  const head = el("div", { class: "card-head" },
    el("h3", {}),
    el("span", { class: "note strategy" }),
    el("span", { class: "stats" },
      el("span", {}, "req/s ", el("b", { class: "rate" })),
      el("span", {}, "2xx ", el("b", { class: "c2" })),
      el("span", {}, "3xx ", el("b", { class: "c3" })),
      el("span", {}, "4xx ", el("b", { class: "c4" })),
      el("span", {}, "5xx ", el("b", { class: "c5" })),
      el("span", {}, "p50 ", el("b", { class: "p50" })),
      el("span", {}, "p99 ", el("b", { class: "p99" }))));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 160 32");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "requests per second, last 5 minutes");
  head.append(svg);
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ...["backend", "address", "state", "in flight", "EWMA", "ok/s", "failed/s", ""].map((h, i) => el("th", { class: i >= 3 && i <= 6 ? "n" : "" }, h)))),
    el("tbody"));
  card.append(head, el("div", { class: "scroll" }, table));
  return card;
}

function renderUpstreams(status, from, to) {
  const box = $("upstreams");
  const ups = status.upstreams || [];
  rows(box, ups, (u) => u.name, makeUpstream, (card, u) => {
    const m = (x) => x.upstream === u.name;
    text(card.querySelector("h3"), u.name);
    text(card.querySelector(".strategy"), u.strategy);
    text(card.querySelector(".rate"), fmtRate(rate("fulcrum_http_requests_total", m, from, to)));
    const c = classes("fulcrum_http_requests_total", m, from, to);
    for (const k of ["2", "3", "4", "5"]) text(card.querySelector(".c" + k), fmtRate(c[k]));
    text(card.querySelector(".p50"), fmtTime(quantile(0.5, "fulcrum_http_request_duration_seconds", m, from, to)));
    text(card.querySelector(".p99"), fmtTime(quantile(0.99, "fulcrum_http_request_duration_seconds", m, from, to)));
    const points = [];
    for (let i = 1; i < samples.length; i++) {
      points.push([samples[i].t, rate("fulcrum_http_requests_total", m, samples[i - 1], samples[i])]);
    }
    sparkline(card.querySelector("svg"), points);
    const tbody = card.querySelector("tbody");
    rows(tbody, u.backends || [], (b) => b.name, (b) => {
      const tr = el("tr", {}, ...cells(7));
      const button = el("button", { type: "button" });
      button.dataset.upstream = u.name;
      button.dataset.backend = b.name;
      button.addEventListener("click", () => change(button.dataset.upstream, button.dataset.backend, button.dataset.action));
      tr.append(el("td", {}, button));
      return tr;
    }, (tr, b) => {
      const bm = (x) => x.upstream === u.name && x.backend === b.name;
      const td = tr.children;
      text(td[0], b.name);
      td[1].className = "name";
      text(td[1], b.address);
      const state = backendState(b);
      td[2].className = "state-" + state;
      text(td[2], state);
      text(td[3], b.active_connections);
      text(td[4], b.ewma_ms ? fmtTime(b.ewma_ms / 1000) : "–");
      text(td[5], fmtRate(rate("fulcrum_backend_requests_total", (x) => bm(x) && x.outcome === "success", from, to)));
      text(td[6], fmtRate(rate("fulcrum_backend_requests_total", (x) => bm(x) && x.outcome === "failure", from, to)));
      const button = td[7].firstChild;
      const action = b.draining ? "undrain" : "drain";
      button.dataset.action = action;
      button.setAttribute("aria-label", (b.draining ? "Undrain " : "Drain ") + b.name);
      text(button, b.draining ? "Undrain" : "Drain");
    });
  });
}

function pairs(dl, list) {
  dl.replaceChildren();
  for (const [k, v] of list) dl.append(el("dt", {}, k), el("dd", {}, v));
}

function renderCache(status, from, to) {
  const c = status.cache || {};
  $("cache-section").hidden = !c.enabled;
  if (!c.enabled) return;
  const hits = rate("fulcrum_cache_requests_total", (l) => l.result === "hit", from, to);
  const all = rate("fulcrum_cache_requests_total", () => true, from, to);
  pairs($("cache"), [
    ["hit ratio", all ? (100 * hits / all).toFixed(1) + " %" : "–"],
    ["lookups/s", fmtRate(all)],
    ["size", fmtBytes(c.size_bytes) + " of " + fmtBytes(c.max_size)],
    ["stored", String(c.keys)],
  ]);
}

function renderFailover(status) {
  const f = status.failover || {};
  $("failover-section").hidden = !f.enabled;
  if (!f.enabled) return;
  pairs($("failover"), [
    ["node", f.node],
    ["role", f.state],
    ["peer last heard", f.peer_last_seen_ms === null || f.peer_last_seen_ms === undefined ? "never" : fmtTime(f.peer_last_seen_ms / 1000) + " ago"],
  ]);
}

function renderBgp(status) {
  const b = status.bgp || {};
  $("bgp-section").hidden = !b.enabled;
  if (!b.enabled) return;
  pairs($("bgp"), [
    ["AS", String(b.local_as) + " (router id " + b.router_id + ")"],
    ["maintenance", b.maintenance ? "yes: routes withdrawn" : "no"],
    ["announced", (b.announce || []).filter((a) => a.announced).map((a) => a.prefix).join(", ") || "nothing"],
  ]);
  rows($("bgp-peers").tBodies[0], b.peers || [], (p) => p.peer, () => el("tr", {}, ...cells(6)), (tr, p) => {
    const td = tr.children;
    text(td[0], p.peer); text(td[1], p.remote_as);
    td[2].className = p.state === "established" ? "state-up" : "state-down";
    text(td[2], p.state); text(td[3], fmtDuration(p.since_seconds));
    text(td[4], (p.announced || []).join(", ") || "–");
    td[5].className = "name";
    text(td[5], p.last_error || "");
  });
}

function render() {
  const to = samples[samples.length - 1];
  if (!to) return;
  const from = baseline();
  const status = to.data.status || {};
  text($("meta"), `version ${status.version} · generation ${status.generation} · up ${fmtDuration(status.uptime_seconds || 0)}`);
  renderListeners(status, from, to);
  renderUpstreams(status, from, to);
  renderCache(status, from, to);
  renderFailover(status);
  renderBgp(status);
}

// ---- polling and changes ---------------------------------------------------------

function showError(message) {
  const e = $("error");
  e.hidden = !message;
  text(e, message || "");
}

async function poll() {
  try {
    const r = await fetch("/dashboard/data", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const data = await r.json();
    const t = performance.now() / 1000;
    samples.push({ t, data });
    while (samples.length && t - samples[0].t > KEEP + 1) samples.shift();
    render();
    $("live").className = "ok";
    text($("live"), "live");
    showError(null);
  } catch (e) {
    $("live").className = "stale";
    text($("live"), "not answering");
  }
}

async function change(upstream, backend, action) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const url = "/upstreams/" + encodeURIComponent(upstream) + "/backends/" + encodeURIComponent(backend) + "/" + action;
  let r;
  try {
    r = await fetch(url, { method: "POST", headers, cache: "no-store" });
  } catch (e) {
    showError("The admin API did not answer.");
    return;
  }
  if (r.status === 401) {
    pending = [upstream, backend, action];
    $("token-box").hidden = false;
    $("token").focus();
    showError(token ? "That token was refused." : "This needs the admin token.");
    return;
  }
  if (!r.ok) {
    let message = "HTTP " + r.status;
    try { message = (await r.json()).error || message; } catch (e) { /* not JSON */ }
    showError(message);
    return;
  }
  showError(null);
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-box").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value;
    $("token").value = "";
    $("token-box").hidden = true;
    if (pending) {
      const [u, b, a] = pending;
      pending = null;
      change(u, b, a);
    }
  });
  poll();
  setInterval(poll, 1000);
});
