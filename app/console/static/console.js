// leasegate console: one EventSource for everything it shows, fetch for the actions.
// The internal secret stays in sessionStorage; the stream opens with a one-minute token
// (POST /internal/console/token), since an EventSource cannot send headers.
"use strict";

const SECRET = "leasegate.console.secret";
const TENANT = "leasegate.console.tenant";
const HISTORY_MS = 5 * 60 * 1000;

let source = null;
let reconnectTimer = null;
let history = [];
let detail = null; // {tenant, session_id, busy}
let lastSessions = new Map();

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function requestId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(method, path) {
  const id = requestId();
  const response = await fetch(path, {
    method,
    headers: { "X-Internal-Secret": sessionStorage.getItem(SECRET) || "", "X-Request-ID": id },
  });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { status: response.status, ok: response.ok, body, id };
}

// ---- sign in and the stream ----

async function signIn(secret) {
  sessionStorage.setItem(SECRET, secret);
  const answer = await api("GET", "/internal/workers");
  if (!answer.ok) {
    sessionStorage.removeItem(SECRET);
    const why = answer.status === 404 ? "internal endpoints are disabled (no LEASEGATE_INTERNAL_SECRET)"
      : answer.status === 403 ? "this secret is not valid" : `HTTP ${answer.status}`;
    $("login-error").textContent = `Not signed in: ${why}.`;
    return;
  }
  showConsole();
}

function showConsole() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("toolbar").hidden = false;
  $("tenant").value = sessionStorage.getItem(TENANT) || "";
  connect();
}

function signOut() {
  sessionStorage.removeItem(SECRET);
  if (source) source.close();
  source = null;
  location.reload();
}

function setConnection(state, text) {
  const node = $("connection");
  node.className = `dot ${state}`;
  node.textContent = text;
}

async function connect() {
  clearTimeout(reconnectTimer);
  if (source) source.close();
  source = null;
  const minted = await api("POST", "/internal/console/token").catch(() => null);
  if (!minted || !minted.ok) {
    if (minted && (minted.status === 401 || minted.status === 403)) return signOut();
    setConnection("down", "reconnecting");
    reconnectTimer = setTimeout(connect, 2000);
    return;
  }
  const params = new URLSearchParams({ token: minted.body.token });
  const tenant = $("tenant").value.trim();
  if (tenant) params.set("tenant", tenant);
  history = [];
  const stream = new EventSource(`/internal/console/stream?${params}`);
  source = stream;
  stream.addEventListener("snapshot", (e) => { setConnection("live", "live"); render(JSON.parse(e.data)); });
  stream.addEventListener("run_finished", (e) => runFinished(JSON.parse(e.data)));
  stream.addEventListener("unavailable", (e) => banner(`Redis unavailable: ${JSON.parse(e.data).detail}`));
  stream.onerror = () => {
    setConnection("down", "reconnecting");
    // A dropped stream is reopened by the browser with the same URL; once its token has
    // expired that fails and the source closes: open a new one with a new token.
    if (stream.readyState === EventSource.CLOSED && source === stream) {
      reconnectTimer = setTimeout(connect, 2000);
    }
  };
}

// ---- rendering ----

function banner(text) {
  const node = $("banner");
  node.hidden = !text;
  node.textContent = text || "";
}

function seconds(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

function shortId(id) {
  return id && id.length > 18 ? `…${id.slice(-12)}` : id || "–";
}

function render(snap) {
  banner("");
  const c = snap.counters;
  $("c-busy").textContent = c.busy_sessions;
  $("c-running").textContent = c.running;
  $("c-queue").textContent = c.queue_depth;
  $("c-rps").textContent = c.runs_per_second.toFixed(1);
  $("c-workers").textContent = c.workers;
  $("updated").textContent = `updated ${clock(snap.at)}`;
  record(Date.parse(snap.at), c.runs_per_second, c.queue_depth);
  renderSessions(snap.sessions);
  renderRuns(snap.recent_runs);
  renderWorkers(snap.workers);
  renderAgents(snap.agents, snap.agent_events);
}

function renderSessions(sessions) {
  const body = $("sessions").tBodies[0];
  const now = new Map();
  body.replaceChildren(...sessions.map((s) => {
    const name = `${s.tenant}/${s.session_id}`;
    now.set(name, s);
    const run = s.active_run;
    const holder = s.holder;
    const row = el("tr", { class: "clickable", "data-session": name },
      el("td", {}, s.tenant),
      el("td", { class: "mono" }, s.session_id),
      el("td", { class: "mono holder" }, holder ? holder.worker : "– (none)"),
      el("td", {}, holder ? holder.fence : "–"),
      el("td", {}, holder ? seconds(holder.lease_expires_in_ms) : "–"),
      el("td", { class: "mono", title: run ? run.run_id : "" }, run ? shortId(run.run_id) : "–",
        run ? " " : null, run ? el("span", { class: `badge ${run.status}` }, run.status) : null),
      el("td", {}, run ? seconds(run.age_ms) : "–"),
      el("td", { title: s.queued.join("\n") }, s.queued.length),
      el("td", { class: "actions" },
        el("button", { type: "button", class: "danger stop", onclick: (e) => { e.stopPropagation(); stop(s.tenant, s.session_id, s); } }, "Stop"),
        el("button", { type: "button", class: "danger reset", onclick: (e) => { e.stopPropagation(); reset(s.tenant, s.session_id); } }, "Reset"),
        run ? el("button", { type: "button", class: "danger cancel", onclick: (e) => { e.stopPropagation(); cancel(run.run_id); } }, "Cancel run") : null),
    );
    row.addEventListener("click", () => openDetail(s.tenant, s.session_id));
    return row;
  }));
  $("sessions-empty").hidden = sessions.length > 0;
  // The open session changed from busy to idle or back: read it again (no polling).
  if (detail) {
    const name = `${detail.tenant}/${detail.session_id}`;
    if (now.has(name) !== lastSessions.has(name)) openDetail(detail.tenant, detail.session_id);
  }
  lastSessions = now;
}

function renderRuns(runs) {
  const body = $("runs").tBodies[0];
  body.replaceChildren(...runs.map((r) => el("tr", { "data-run": r.run_id },
    el("td", {}, clock(r.finished_at)),
    el("td", { class: "mono" }, `${r.tenant}/${r.session_id}`),
    el("td", { class: "mono", title: r.run_id }, shortId(r.run_id)),
    el("td", { title: r.error || r.reason || "" }, el("span", { class: `badge ${r.status}` }, r.status)),
    el("td", {}, seconds(r.duration_ms)),
    el("td", { class: "mono" }, r.worker || "–"),
  )));
  $("runs-empty").hidden = runs.length > 0;
}

function renderWorkers(workers) {
  $("workers").tBodies[0].replaceChildren(...workers.map((w) => el("tr", { "data-worker": w.worker },
    el("td", { class: "mono" }, w.worker),
    el("td", {}, w.version),
    el("td", {}, clock(w.started_at)),
    el("td", {}, `${seconds(w.seen_ms_ago)} ago`),
    el("td", { title: w.runs.join("\n") }, `${w.runs.length} run(s)`),
    el("td", {}, w.runs_per_second.toFixed(1)),
  )));
}

function renderAgents(agents, events) {
  $("agents").replaceChildren(...agents.map((a) => el("div", { class: "agent", "data-agent": a.agent_id },
    el("h3", {}, a.agent_id, " ", a.subscription ? el("span", { class: "badge" }, `on ${a.subscription}`) : el("span", { class: "badge" }, "no subscriptions")),
    el("div", { class: "subs" }, ...a.subscriptions.map((s) => el("span", { class: `sub${s.assigned ? " assigned" : ""}` },
      `${s.id} `, el("span", { class: `badge ${s.state}` }, s.state),
      s.retry_in ? ` back in ${seconds(Math.round(s.retry_in * 1000))}` : null))),
    el("div", { class: "meta" }, `${a.switch_count} switch(es)`,
      a.last_switch ? `, last ${a.last_switch.from} → ${a.last_switch.to} at ${clock(a.last_switch.at)} (${a.last_switch.reason})` : ""),
  )));
  $("agent-events").replaceChildren(...events.map((e) => {
    const at = new Date(Number(e.id.split("-")[0])).toLocaleTimeString();
    const rest = Object.entries(e).filter(([k]) => !["id", "type", "agent_id"].includes(k)).map(([k, v]) => `${k}=${v}`).join(" ");
    return el("li", {}, el("time", {}, at), el("b", {}, e.type), ` ${e.agent_id || ""} ${rest}`);
  }));
  $("agent-events-empty").hidden = events.length > 0;
}

function runFinished(run) {
  if (detail && run.tenant === detail.tenant && run.session_id === detail.session_id) {
    openDetail(detail.tenant, detail.session_id);
  }
  requestAnimationFrame(() => {
    const row = document.querySelector(`#runs tr[data-run="${CSS.escape(run.run_id)}"]`);
    if (row) row.classList.add("flash");
  });
}

// ---- the chart: inline SVG, no library ----

function record(at, rps, depth) {
  history.push({ at, rps, depth });
  while (history.length && history[0].at < at - HISTORY_MS) history.shift();
  drawChart($("chart-rps"), "rps", (p) => p.rps, $("rps-max"));
  drawChart($("chart-queue"), "queue", (p) => p.depth, $("queue-max"));
}

function drawChart(svg, kind, value, label) {
  const W = 600, H = 120, pad = 6;
  const end = history.length ? history[history.length - 1].at : Date.now();
  const max = Math.max(1, ...history.map(value));
  const x = (p) => W - ((end - p.at) / HISTORY_MS) * W;
  const y = (p) => H - pad - (value(p) / max) * (H - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const nodes = [];
  for (let i = 1; i < 4; i++) {
    const line = document.createElementNS(ns, "line");
    line.setAttribute("class", "grid");
    for (const [k, v] of [["x1", 0], ["x2", W], ["y1", (H * i) / 4], ["y2", (H * i) / 4]]) line.setAttribute(k, v);
    nodes.push(line);
  }
  if (history.length > 1) {
    const points = history.map((p) => `${x(p).toFixed(1)},${y(p).toFixed(1)}`).join(" ");
    const area = document.createElementNS(ns, "polygon");
    area.setAttribute("class", `${kind}-area`);
    area.setAttribute("points", `${x(history[0]).toFixed(1)},${H} ${points} ${W},${H}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", kind);
    line.setAttribute("points", points);
    nodes.push(area, line);
  }
  svg.replaceChildren(...nodes);
  label.textContent = `(max ${Number.isInteger(max) ? max : max.toFixed(1)}, last 5 min)`;
}

// ---- actions: confirmed, through the API, with a request id ----

function logAction(text, ok) {
  const item = el("li", { class: ok ? "" : "error" }, el("time", {}, new Date().toLocaleTimeString()), text);
  $("log").prepend(item);
}

function describe(answer) {
  const b = answer.body || {};
  if (!answer.ok) return `HTTP ${answer.status}: ${b.detail || b.title || ""}`;
  if (b.generation !== undefined) return `generation ${b.generation} begins, ${b.cancelled.length} run(s) cancelled`;
  if (b.cancelled) return `${b.cancelled.length} run(s) cancelled${b.kept.length ? `, ${b.kept.length} kept` : ""}`;
  if (b.status) return `run ${b.status}${answer.status === 202 ? " (its holder is stopping it)" : ""}`;
  return JSON.stringify(b);
}

async function act(what, method, path) {
  const answer = await api(method, path).catch((e) => ({ ok: false, status: 0, body: { detail: String(e) }, id: "-" }));
  logAction(`${what}: ${describe(answer)} (request ${answer.id})`, answer.ok);
}

function sessionPath(tenant, sessionId) {
  return `/internal/sessions/${encodeURIComponent(tenant)}/${encodeURIComponent(sessionId)}`;
}

function stop(tenant, sessionId, view) {
  const queued = view && view.queued ? view.queued.length : 0;
  if (!confirm(`Stop session ${tenant}/${sessionId}?\nIts active run is stopped and ${queued} queued run(s) are cancelled.`)) return;
  act(`stop ${tenant}/${sessionId}`, "POST", `${sessionPath(tenant, sessionId)}/stop`);
}

function reset(tenant, sessionId) {
  if (!confirm(`Reset session ${tenant}/${sessionId}?\nIts runs are stopped and its conversation starts afresh.`)) return;
  act(`reset ${tenant}/${sessionId}`, "POST", `${sessionPath(tenant, sessionId)}/reset`);
}

function cancel(runId) {
  if (!confirm(`Cancel run ${runId}?`)) return;
  act(`cancel ${runId}`, "POST", `/internal/runs/${encodeURIComponent(runId)}/cancel`);
}

// ---- one session in detail, read when opened and when its runs end ----

async function openDetail(tenant, sessionId) {
  detail = { tenant, session_id: sessionId };
  const answer = await api("GET", sessionPath(tenant, sessionId));
  if (!detail || detail.tenant !== tenant || detail.session_id !== sessionId) return;
  $("detail").hidden = false;
  $("detail-name").textContent = `${tenant}/${sessionId}`;
  if (!answer.ok) {
    $("detail-state").textContent = `HTTP ${answer.status}`;
    $("detail-state").className = "badge failed";
    return;
  }
  const s = answer.body;
  $("detail-state").textContent = s.state;
  $("detail-state").className = `badge ${s.state}`;
  $("detail-holder").textContent = s.holder ? `held by ${s.holder.worker}, fence ${s.holder.fence}` : "no holder";
  $("detail-runs").tBodies[0].replaceChildren(...s.runs.map((r) => {
    const ms = r.started_at && r.finished_at ? Date.parse(r.finished_at) - Date.parse(r.started_at) : null;
    return el("tr", {},
      el("td", { class: "mono", title: r.run_id }, shortId(r.run_id)),
      el("td", {}, el("span", { class: `badge ${r.status}` }, r.status)),
      el("td", {}, clock(r.created_at)),
      el("td", {}, seconds(ms)),
      el("td", { class: "mono" }, r.worker || "–"),
      el("td", {}, r.reason || r.error || ""));
  }));
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("secret").value); });
  $("logout").addEventListener("click", signOut);
  $("tenant").addEventListener("change", () => {
    const tenant = $("tenant").value.trim();
    if (tenant && !/^[A-Za-z0-9._-]{1,64}$/.test(tenant)) {
      banner(`"${tenant}" is no tenant: 1-64 characters of A-Z a-z 0-9 . _ -`);
      return;
    }
    sessionStorage.setItem(TENANT, tenant);
    connect();
  });
  $("detail-close").addEventListener("click", () => { detail = null; $("detail").hidden = true; });
  $("detail-stop").addEventListener("click", () => detail && stop(detail.tenant, detail.session_id, lastSessions.get(`${detail.tenant}/${detail.session_id}`)));
  $("detail-reset").addEventListener("click", () => detail && reset(detail.tenant, detail.session_id));
  if (sessionStorage.getItem(SECRET)) showConsole();
});
