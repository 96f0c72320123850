// The live dashboard: one event stream (/v1/progress) feeds every number and chart; the task
// list is read from /v1/tasks (again every 2 s while the run moves, and when a filter changes).
import { api, el, fmtInt, fmtRate, fmtSeconds, fmtTime, fmtUsd, replaceRows, setText, subscribe } from "/static/common.js";

const STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "dead", "cancelled"];
const MAX_POINTS = 600;
const STALE_SECONDS = 10; // no new sample for this long: the badge says the data stands still
let receivedAt = Date.now();
let points = [];
const charts = {};

function chart(id, series) {
  const target = document.getElementById(id);
  const opts = {
    width: Math.max(target.clientWidth, 200),
    height: 150,
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: "#8795a5", grid: { stroke: "#2a3440" }, ticks: { stroke: "#2a3440" } },
      { stroke: "#8795a5", grid: { stroke: "#2a3440" }, ticks: { stroke: "#2a3440" }, size: 50 },
    ],
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: false }))],
  };
  const empty = [[], ...series.map(() => [])];
  const plot = new uPlot(opts, empty, target);
  new ResizeObserver(() => plot.setSize({ width: Math.max(target.clientWidth, 200), height: 150 }))
    .observe(target);
  return plot;
}

function redraw() {
  const xs = points.map((p) => p.at);
  const col = (name) => points.map((p) => p[name]);
  charts.throughput.setData([xs, col("throughput"), col("failures"), col("retries")]);
  charts.latency.setData([xs, col("p50"), col("p95"), col("p99")]);
  charts.load.setData([xs, col("in_flight"), col("queued")]);
}

function lastLatency(name) {
  for (let i = points.length - 1; i >= 0; i--) {
    if (points[i][name] !== null) return points[i][name];
  }
  return null;
}

function renderTiles(s) {
  const p = s.point;
  const t = s.totals;
  setText("throughput", p ? fmtRate(p.throughput) : "–");
  setText("p50", fmtSeconds(lastLatency("p50")));
  setText("p95", fmtSeconds(lastLatency("p95")));
  setText("in-flight", fmtInt(s.statuses.running ?? 0));
  setText("queued", fmtInt(s.statuses.queued ?? 0));
  setText("finished", fmtInt(t.finished));
  setText("failures", `${fmtInt(t.failed)} · ${fmtInt(t.dead)}`);
  setText("retries", fmtInt(t.retries));
  setText("tokens", fmtInt(t.input_tokens + t.output_tokens));
  setText("cost", fmtUsd(t.cost_usd));
  setText("rate-limited", fmtInt(s.routes.reduce((sum, r) => sum + r.rate_limited, 0)));
  setText("uptime", fmtSeconds(s.at - s.started_at));
  const h = s.health;
  const problems = [];
  if (!h.store_ok) problems.push("store unreachable");
  if (h.worker_error) problems.push(`worker stopped: ${h.worker_error}`);
  problems.push(`loop lag ${fmtSeconds(h.loop_lag)}`);
  setText("health", problems.join(" · "));
}

function renderStatuses(statuses) {
  const total = STATUSES.reduce((sum, name) => sum + (statuses[name] ?? 0), 0);
  const bar = document.getElementById("status-bar");
  bar.replaceChildren(...STATUSES.filter((name) => statuses[name]).map((name) => {
    const part = el("span", { class: `s-${name}`, title: `${name}: ${statuses[name]}` });
    part.style.width = `${(100 * statuses[name]) / total}%`;
    return part;
  }));
  const list = document.getElementById("statuses");
  list.replaceChildren(...STATUSES.map((name) => el("li", {},
    el("span", { class: `swatch s-${name}` }), `${name} `,
    el("strong", { id: `status-${name}` }, fmtInt(statuses[name] ?? 0)))));
}

function renderWorkers(workers) {
  const rows = workers.map((w) => el("tr", {},
    el("td", { title: w.id }, w.id.split(":").pop() + (w.local ? " (this server)" : "")),
    el("td", {}, `${w.host} · ${w.pid}`),
    el("td", {}, fmtInt(w.in_flight)),
    el("td", {}, fmtInt(w.succeeded)),
    el("td", {}, `${fmtSeconds(w.heartbeat_age)} ago`),
    el("td", {}, el("span", { class: `badge ${w.healthy ? "ok" : "bad"}` }, w.healthy ? "ok" : "stale"))));
  replaceRows(document.getElementById("workers"), rows, 6, "no worker registered");
}

function renderScaling(scaling) {
  // Desired vs running workers and why (the scaling policy), then each autoscaler's own.
  const lines = [];
  if (scaling) {
    lines.push(el("span", {}, `desired ${scaling.desired}, running ${scaling.running}: ${scaling.reason}`));
    for (const a of scaling.autoscalers) {
      lines.push(el("br"), el("span", {},
        `autoscaler ${a.host} · ${a.pid} (${a.minimum}:${a.maximum}): desired ${a.desired}, running ${a.running}: ${a.reason}`));
    }
  }
  document.getElementById("scaling").replaceChildren(...lines);
}

function meter(share) {
  const bar = el("span");
  bar.style.width = `${Math.min(100, Math.round(share * 100))}%`;
  if (share > 0.98) bar.className = "bad";
  else if (share > 0.85) bar.className = "warn";
  return el("span", { class: "meter" }, bar);
}

function renderRoutes(routes) {
  const rows = routes.map((r) => el("tr", {},
    el("td", {}, r.route, ...(r.breaker === "closed" ? [] : [" ",
      el("span", { class: "badge failed", title: "circuit breaker: calls wait for a probe" },
        `breaker ${r.breaker.replace("_", "-")}`)])),
    el("td", {}, `${r.provider} · ${r.model}`),
    el("td", {}, r.utilization === null ? "" : meter(r.utilization),
      `${fmtRate(r.rpm)} / ${r.rpm_limit === null ? "no limit" : fmtInt(r.rpm_limit)}`),
    el("td", {}, r.rpm_allowed === null ? "–" : fmtInt(r.rpm_allowed)),
    el("td", {}, `${fmtInt(r.in_flight)}${r.max_in_flight ? ` / ${fmtInt(r.max_in_flight)}` : ""}`),
    el("td", {}, fmtInt(r.waiting)),
    el("td", {}, fmtInt(r.rate_limited)),
    el("td", {}, `${fmtInt(r.input_tokens)} · ${fmtInt(r.output_tokens)}`),
    el("td", {}, fmtUsd(r.cost_usd))));
  // A tenant's key is not shown the routes: their calls, tokens and cost are every tenant's.
  const none = key.admin ? "no LLM route in this server or its workers" : "LLM routes are shown to an admin key";
  replaceRows(document.getElementById("routes"), rows, 9, none);
}

function renderFailures(failures, now) {
  const rows = failures.map((f) => el("tr", {},
    el("td", {}, el("a", { href: `/tasks/${f.id}` }, `#${f.id}`)),
    el("td", {}, f.agent),
    el("td", {}, el("span", { class: `badge ${f.status}` }, f.status)),
    el("td", {}, fmtInt(f.attempts)),
    el("td", { title: f.message }, `${f.type}: ${f.message}`),
    el("td", {}, `${fmtSeconds(Math.max(0, now - f.at))} ago`)));
  replaceRows(document.getElementById("failures-table"), rows, 6, "no failure");
}

// The task list: the newest tasks matching the filters, with retry and cancel buttons for
// an admin key (the API refuses them to other keys' tasks anyway).
let key = { admin: false, tenant: "" };
let listing = null;
let listedAt = 0;

const RETRYABLE = new Set(["dead", "failed", "cancelled"]);
const CANCELLABLE = new Set(["queued", "running", "waiting"]);

// A parent's children go with it: a cancelled workflow stops whole, and a retried one
// runs its failed or cancelled children again (alone, it would find them ended so and fail).
async function act(id, action) {
  const resp = await api(`/v1/tasks/${id}:${action}?children=true`, { method: "POST" });
  if (!resp.ok) console.warn(`${action} of task ${id}: ${resp.status}`);
  await loadTasks();
}

function actions(t) {
  if (!key.admin) return "";
  const buttons = [];
  if (RETRYABLE.has(t.status)) buttons.push(["retry", "retry"]);
  if (CANCELLABLE.has(t.status)) buttons.push(["cancel", "cancel"]);
  return el("span", {}, ...buttons.map(([action, label]) => {
    const button = el("button", { type: "button", class: "action", "data-action": action, "data-id": String(t.id) }, label);
    button.addEventListener("click", () => act(t.id, action));
    return button;
  }));
}

// A list of 25 rows, newest first: "older" pages on with the cursor the server gave (the
// page shown is read again every 2 s while the run moves), "newest" goes back.
class Pager {
  constructor(name, load) {
    this.name = name;
    this.cursors = [null];
    this.next = null;
    this.load = load;
    document.getElementById(`${name}-older`).addEventListener("click", () => this.turn("older"));
    document.getElementById(`${name}-newest`).addEventListener("click", () => this.turn("newest"));
  }

  get cursor() { return this.cursors[this.cursors.length - 1]; }

  turn(to) {
    if (to === "older" && this.next) this.cursors.push(this.next);
    if (to === "newest") this.cursors = [null];
    this.load();
  }

  shown(next) {
    this.next = next;
    document.getElementById(`${this.name}-older`).disabled = !next;
    document.getElementById(`${this.name}-newest`).disabled = this.cursors.length === 1;
    setText(`${this.name}-page`, this.cursors.length > 1 ? `page ${this.cursors.length}` : "");
  }
}

const pages = new Pager("tasks", () => loadTasks());
const waitingPages = new Pager("waiting", () => loadWaiting());

async function loadTasks() {
  const params = new URLSearchParams({ limit: "25" });
  const status = document.getElementById("filter-status").value;
  const agent = document.getElementById("filter-agent").value.trim();
  const tenant = key.admin ? document.getElementById("filter-tenant").value.trim() : "";
  if (status) params.set("status", status);
  if (agent) params.set("agent", agent);
  if (tenant) params.set("tenant", tenant);
  if (pages.cursor) params.set("cursor", pages.cursor);
  const query = params.toString();
  listing = query;
  listedAt = Date.now();
  const resp = await api(`/v1/tasks?${query}`);
  if (listing !== query) return;  // a newer filter won
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    setText("tasks-note", `the list could not be read (${resp.status}${detail ? `: ${detail}` : ""})`);
    return;
  }
  setText("tasks-note", "");
  const page = await resp.json();
  pages.shown(page.next);
  const rows = page.tasks.map((t) => el("tr", { "data-id": String(t.id) },
    el("td", {}, el("a", { href: `/tasks/${t.id}` }, `#${t.id}`)),
    el("td", {}, t.agent),
    el("td", {}, t.tenant),
    el("td", {}, el("span", { class: `badge ${t.status}` }, t.status)),
    el("td", {}, fmtInt(t.attempts)),
    el("td", {}, fmtTime(t.created_at)),
    el("td", {}, actions(t))));
  replaceRows(document.getElementById("tasks-table"), rows, 7, "no task");
  document.getElementById("tasks-table").dataset.query = query;
}

// Waiting tasks: what each waits for; an approval gets approve and reject buttons, which
// send it the "approval" signal.
// The answer names the wait it is for (`waiting`): a second click, or one on a row shown
// before the task moved on, is refused rather than kept for the task's next approval.
async function answer(w, approved, buttons) {
  for (const b of buttons) b.disabled = true;
  const id = w.id;
  const resp = await api(`/v1/tasks/${id}:signal`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ event: "approval", data: { approved }, waiting: w.count }),
  });
  if (!resp.ok) console.warn(`approval of task ${id}: ${resp.status}`);
  await loadWaiting();
}

function waitsFor(w) {
  if (w.prompt !== null) return `approval: ${w.prompt}`;
  if (w.event !== null && w.event.startsWith("legion.batch:")) return "an LLM batch job";
  if (w.event !== null) return `signal ${w.event}`;
  if (w.children !== null) return "child tasks";
  return "timer";
}

function approvalButtons(w) {
  if (w.prompt === null) return "";
  const buttons = [["approve", true], ["reject", false]].map(([label, approved]) => {
    const button = el("button", { type: "button", class: "action", "data-action": label, "data-id": String(w.id) }, label);
    button.addEventListener("click", () => answer(w, approved, buttons));
    return button;
  });
  return el("span", {}, ...buttons);
}

async function loadWaiting() {
  const params = new URLSearchParams({ limit: "25" });
  if (waitingPages.cursor) params.set("cursor", waitingPages.cursor);
  const resp = await api(`/v1/waiting?${params}`);
  if (!resp.ok) return;
  const page = await resp.json();
  waitingPages.shown(page.next);
  const rows = page.tasks.map((w) => el("tr", { "data-id": String(w.id) },
    el("td", {}, el("a", { href: `/tasks/${w.id}` }, `#${w.id}`)),
    el("td", {}, w.agent),
    el("td", { title: waitsFor(w) }, waitsFor(w)),
    el("td", {}, w.wake_at === null ? "–" : fmtTime(w.wake_at)),
    el("td", {}, approvalButtons(w))));
  replaceRows(document.getElementById("waiting-table"), rows, 5, "no waiting task");
}

async function startTasks() {
  const resp = await api("/v1/key");
  if (resp.ok) key = await resp.json();
  setText("key-scope", key.admin ? "admin key: every tenant" : `tenant ${key.tenant}`);
  // (an admin key lists every tenant's tasks: it may pick one; a tenant's key, its own)
  document.getElementById("filter-tenant-label").hidden = !key.admin;
  for (const id of ["filter-status", "filter-agent", "filter-tenant"]) {
    document.getElementById(id).addEventListener("change", () => pages.turn("newest"));
  }
  document.getElementById("task-filters").addEventListener("submit", (e) => { e.preventDefault(); pages.turn("newest"); });
  await loadTasks();
  await loadWaiting();
}

function render(s) {
  renderTiles(s);
  renderStatuses(s.statuses);
  renderWorkers(s.workers);
  renderScaling(s.scaling);
  renderRoutes(s.routes);
  renderFailures(s.failures, s.at);
}

// The stream can be open while the server's samples stand still (a store that is locked,
// or slow to answer): say so, rather than "live" over numbers that have stopped.
function fresh() {
  receivedAt = Date.now();
  const badge = document.getElementById("connection");
  if (badge.dataset.stale) {
    delete badge.dataset.stale;
    badge.textContent = "live";
    badge.className = "badge live";
  }
}

function watchStaleness() {
  const badge = document.getElementById("connection");
  const quiet = (Date.now() - receivedAt) / 1000;
  if (quiet > STALE_SECONDS && (badge.dataset.stale || badge.classList.contains("live"))) {
    badge.dataset.stale = "1";
    badge.textContent = `no new data for ${Math.round(quiet)} s`;
    badge.className = "badge down";
  }
}

function start() {
  setInterval(watchStaleness, 1000);
  charts.throughput = chart("chart-throughput", [["finished/s", "#3fb950"], ["failed/s", "#f85149"], ["retries/s", "#d29922"]]);
  charts.latency = chart("chart-latency", [["p50", "#58a6ff"], ["p95", "#d29922"], ["p99", "#f85149"]]);
  charts.load = chart("chart-load", [["in flight", "#58a6ff"], ["queued", "#8b949e"]]);
  document.getElementById("goto").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("goto-id").value;
    if (id) window.location.href = `/tasks/${encodeURIComponent(id)}`;
  });
  subscribe("/v1/progress", {
    history: (history) => { points = history.slice(-MAX_POINTS); redraw(); },
    progress: (snapshot) => {
      fresh();
      const p = snapshot.point;
      if (p && (points.length === 0 || p.at > points[points.length - 1].at)) {
        points.push(p);
        if (points.length > MAX_POINTS) points.shift();
        redraw();
      }
      render(snapshot);
      if (Date.now() - listedAt > 2000) { loadTasks(); loadWaiting(); }
      document.body.dataset.updated = String(snapshot.at);
    },
  });
}

start();
startTasks();
