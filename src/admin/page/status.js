// graceway's status page: redraws the view from /status every few seconds
// (same origin, no page reload). It builds the markup the server renders
// first (src/admin/page.rs), node by node: text goes in as text nodes (and
// the banner's textContent), never parsed as HTML, so nothing in /status
// can inject markup.
"use strict";

const EVERY_MS = 3000;
const TOKEN_COLUMNS = ["#", "fingerprint", "source", "state", "state from", "expires", "quota", "vendor notice"];

// h("p", {class: "x"}, "text", node, ...): an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

const countCopies = (n) => `${n} ${n === 1 ? "copy" : "copies"}`;
const dash = (v) => (v === null || v === undefined ? "-" : String(v));

function bytes(n) {
  n = Math.max(0, Number(n) || 0);
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function breaker(name, b) {
  let state = "closed";
  if (b.open) {
    state = `open (${dash(b.reason)}) since ${dash(b.since)}` + (b.next_trial ? `, next trial ${b.next_trial}` : "");
  }
  return h("div", { class: "breaker", "data-breaker": name, "data-open": b.open ? "true" : "false" },
    h("dt", {}, `${name} breaker`), h("dd", {}, state));
}

function origin(t) {
  const l = t.learned;
  if (l && l.from === "fleet") return `${l.finding} by replica ${l.replica} at ${dash(l.at)} (fleet ledger)`;
  if (l) return `${l.finding} here at ${dash(l.at)}`;
  return "this replica";
}

function token(t) {
  const state = t.state;
  const stateCell = [h("span", { class: `badge s-${state}` }, state)];
  for (const extra of [t.detail, t.error]) if (extra) stateCell.push(h("small", {}, extra));
  if (t.cool_until) stateCell.push(h("small", {}, `cool-down until ${t.cool_until}`));
  let quota = "-";
  if (t.quota) {
    const q = t.quota;
    quota = String(q.remaining) + (q.limit !== null && q.limit !== undefined ? ` / ${q.limit}` : "") +
      (q.reset_at ? `, resets ${q.reset_at}` : "");
  }
  let notice = "-";
  if (t.notice) {
    const n = t.notice, parts = [];
    if (n.deprecated) parts.push(`deprecated from ${dash(n.deprecation_at)}`);
    if (n.sunset_at) parts.push(`sunset at ${n.sunset_at}`);
    for (const l of n.links || []) parts.push(`${l.rel}: ${l.url}`);
    notice = parts.join("; ");
  }
  const cells = [String(t.index), [h("code", {}, t.fingerprint)], t.source, stateCell, origin(t),
    dash(t.expires_at), quota, notice];
  return h("tr", { class: "token", "data-index": t.index, "data-fingerprint": t.fingerprint, "data-state": state },
    ...cells.map((c, i) => h("td", { "data-label": TOKEN_COLUMNS[i] }, ...(Array.isArray(c) ? c : [c]))));
}

function upstream(u) {
  const state = u.state;
  let why = "";
  if (u.reason && u.degraded_since) why = `${u.reason} since ${u.degraded_since}`;
  else if (u.reason) why = u.reason;
  const route = `${u.url} · route ${u.route.host ? `host ${u.route.host} ` : ""}${u.route.path_prefix}`;
  const failure = u.last_failure ? `${dash(u.last_failure.at)} ${dash(u.last_failure.reason)}` : "-";
  const copies = `${countCopies(u.stored.entries)} (${bytes(u.stored.bytes)}) · last success ${dash(u.last_success)} · last failure ${failure}`;
  const c = u.calls;
  const calls = `calls spared: ${c.fresh_hits} fresh hits · ${c.stale_while_revalidate_hits} stale-while-revalidate · ${c.coalesced} coalesced, ${c.waiting} waiting · revalidated ${c.revalidated_304} × 304, ${c.revalidated_200} × 200, ${c.revalidations_failed} failed`;
  const table = h("div", { class: "scroll" }, h("table", { class: "tokens" },
    h("thead", {}, h("tr", {}, ...TOKEN_COLUMNS.map((c) => h("th", {}, c)))),
    h("tbody", {}, ...u.tokens.map(token))));
  return h("article", { class: `upstream s-${state}`, "data-upstream": u.name, "data-state": state },
    h("header", {}, h("h2", {}, u.name), h("span", { class: `badge s-${state}` }, state), h("span", { class: "why" }, why)),
    h("p", { class: "url" }, route),
    h("dl", { class: "breakers" }, breaker("health", u.breakers.health), breaker("auth", u.breakers.auth)),
    h("p", { class: "copies" }, copies),
    h("p", { class: "calls" }, calls),
    table,
    ...(u.pool ? [pool(u.pool)] : []),
    ...(u.client_cert ? [clientCert(u.client_cert)] : []));
}

function clientCert(c) {
  return h("p", { class: "client-cert", "data-state": c.state },
    `client certificate ${c.fingerprint} · ${c.subject} · ${c.state} · valid ${c.not_before} to ${c.not_after}`);
}

function pool(p) {
  const sticky = p.sticky_header ? ` · sticky header ${p.sticky_header}` : "";
  const queue = p.queue.max_wait_ms === 0 ? "no quota queue"
    : `quota queue ${p.queue.waiting} of ${p.queue.max_queued} waiting (max wait ${p.queue.max_wait_ms} ms)`;
  return h("p", { class: "pool" }, `tokens by ${p.select}${sticky} · ${queue}`);
}

function cache(c) {
  const tiers = [];
  tiers.push(h("div", { class: "tier", "data-tier": "memory" }, h("dt", {}, "memory"),
    h("dd", {}, h("meter", { min: 0, max: c.limit_bytes, value: Math.max(0, c.bytes) }),
      h("span", {}, `${countCopies(c.entries)}, ${bytes(c.bytes)} of ${bytes(c.limit_bytes)}`))));
  let persist = "off";
  if (c.persist) {
    const p = c.persist;
    persist = `${p.path} ${p.open ? "open" : "CLOSED"}` + (p.dropped_writes > 0 ? `, ${p.dropped_writes} writes dropped` : "");
  }
  tiers.push(h("div", { class: "tier", "data-tier": "persist" }, h("dt", {}, "persist file"), h("dd", {}, persist)));
  let fleet = ["off"], health = "off";
  if (c.fleet) {
    const f = c.fleet;
    health = f.up ? "up" : "down";
    fleet = [h("span", { class: `badge s-${health}` }, health),
      `${f.target} (${f.mode})${f.connected ? "" : " · not connected"}${f.breaker_open ? " · breaker open" : ""}` +
      ` · ${f.hits} hits, ${f.misses} misses, ${f.writes} writes, ${f.errors} errors, ${f.dropped} dropped` +
      (f.last_error ? ` · last error: ${f.last_error}` : "")];
  }
  tiers.push(h("div", { class: "tier", "data-tier": "fleet", "data-health": health }, h("dt", {}, "fleet (Redis)"),
    h("dd", {}, ...fleet)));
  return h("section", { class: "cache" }, h("h2", {}, "Last-good copies"), h("dl", {}, ...tiers));
}

function who(c) {
  if (c.upstream !== null && c.upstream !== undefined && c.token !== null && c.token !== undefined) {
    return `${c.upstream} token ${c.token} (${dash(c.fingerprint)})${c.kind === "notice" ? " notice" : ""}`;
  }
  if (c.upstream !== null && c.upstream !== undefined) return c.kind === "upstream" ? c.upstream : `${c.upstream} ${c.kind}`;
  return c.kind;
}

function timeline(changes) {
  const items = changes.slice().reverse().map((c) =>
    h("li", { class: "change", "data-kind": c.kind, "data-upstream": c.upstream || "",
      "data-token": c.token === null || c.token === undefined ? "" : c.token, "data-from": c.from, "data-to": c.to },
    h("time", { datetime: c.at }, c.at), h("span", { class: "who" }, who(c)),
    h("span", { class: "what" }, `${c.from} → ${c.to}`), h("span", { class: "why" }, dash(c.reason))));
  return h("section", { class: "changes" },
    h("h2", {}, "Recent changes ", h("small", {}, "newest first")),
    changes.length === 0 ? h("p", { class: "empty" }, "No state change since start.") : null,
    h("ol", { id: "timeline" }, ...items));
}

function view(st, auth, at) {
  const r = st.reload;
  const meta = `pid ${st.pid} · config generation ${st.config.generation} · last reload ${r.at} ${r.ok ? "ok" : "FAILED"} (${r.trigger})`;
  return [
    h("header", { class: "top" }, h("h1", {}, "graceway ", h("span", { class: "version" }, st.version)),
      h("p", { class: "meta" }, meta)),
    h("section", { class: "upstreams" }, ...st.upstreams.map(upstream)),
    cache(st.cache),
    timeline(st.timeline || []),
    h("footer", {},
      h("p", { id: "updated", "data-source": "live", "data-generation": st.config.generation },
        `Live: read from /status every ${EVERY_MS / 1000} s, last at ${at}.`),
      auth),
  ];
}

async function refresh() {
  const main = document.getElementById("view");
  const banner = document.getElementById("offline");
  try {
    const r = await fetch("/status", { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(`/status answered ${r.status}`);
    const st = await r.json();
    // The footer's note on the admin bearer comes from the server's render.
    const auth = main.querySelector("footer .auth");
    main.replaceChildren(...view(st, auth, new Date().toISOString().replace(/\.\d+Z$/, "Z")));
    banner.hidden = true;
  } catch (e) {
    banner.textContent = `Cannot read /status (${e.message}); showing the last state read, retrying every ${EVERY_MS / 1000} s.`;
    banner.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  setInterval(refresh, EVERY_MS);
});
